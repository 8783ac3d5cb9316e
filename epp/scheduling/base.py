"""The plugin interfaces and the per-request value the scheduler works on.

A Filter narrows the candidates, a Scorer gives each candidate a score in [0, 1], a Picker orders
the survivors, a PickObserver learns from the final pick (the prefix index). Plugins are built
once at start-up (`registry.py` or `config.py`) and shared by every request; the only state they
keep is what must outlive a request (an index, a round-robin cursor). Everything is synchronous.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from epp.types import EndpointState

Clock = Callable[[], float]  # time.monotonic, or a fake in tests


@dataclass(frozen=True, slots=True)
class SchedulingRequest:
    request_id: str
    target_model: str  # the model the server will be asked for (after rewrite)
    priority: int = 0
    prompt_tokens: int = 0  # estimate, for in-flight token accounting
    prompt: bytes = b""  # text the prefix index hashes
    lora_adapter: str | None = None
    ceilings: tuple[tuple[str, float], ...] = ()  # (metric name, percent ceiling)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    max_output_tokens: int | None = None  # the body's max_tokens: a cap, sometimes the length
    # the decoded body, for plugins that read more of it (the precise scorer's tokenizer)
    payload: Mapping[str, object] | None = field(default=None, repr=False, compare=False)
    # what to plan with (`epp.scheduling.output_length`): the answer's expected tokens, and a
    # typical answer's tokens for this model; None: the scorer's own configuration decides
    expected_output_tokens: int | None = None
    typical_output_tokens: int | None = None
    # endpoints offered only for the request's cached prefix (admission: a held request's prefix
    # holder whose batch is full): picked only where an affinity scorer keeps the hold
    warm_only: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What plugin factories may use: a seeded random source and a clock."""

    rng: random.Random
    clock: Clock


@runtime_checkable
class Filter(Protocol):
    name: str

    def filter(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState]
    ) -> Sequence[EndpointState]: ...


@runtime_checkable
class Scorer(Protocol):
    """Scores in [0, 1], one per candidate, higher is better. The profile clamps the scores
    unless the class sets `bounded = True`, a promise that they are already in range."""

    name: str

    def score(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState]
    ) -> list[float]: ...


@runtime_checkable
class Picker(Protocol):
    name: str

    def pick(
        self, candidates: Sequence[EndpointState], scores: Sequence[float], count: int
    ) -> list[EndpointState]: ...


@runtime_checkable
class PickObserver(Protocol):
    """A plugin that learns from the final pick (e.g. the prefix index)."""

    def picked(self, request: SchedulingRequest, endpoint: EndpointState) -> None: ...
