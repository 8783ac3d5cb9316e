"""The rollout controller: every model with a policy, moved one step at a time.

Each pass reads the models that carry a rollout from a `RolloutStore` (the manifests `epp up`
serves, or the API server), scrapes the EPPs' per-version counts once (`signals`), and for each
model whose analysis interval has come judges the last few intervals of the current step
(`analysis`), moves the state machine (`machine.step`) and writes the weights + status back
through the store; a write that lost a race (someone else, e.g. `epp rollout abort`, wrote first)
is dropped and the next pass starts from what is there. `say` prints every step. What a pass
remembers (recent samples, the sample at the step's start) is only memory: lose it, and a window
starts afresh from the next sample.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from epp.api.model import ModelRoute
from epp.api.rollout import MetricQuery, RolloutPolicy, version_of
from epp.rollout.analysis import analyze
from epp.rollout.machine import RolloutStatus, step
from epp.rollout.signals import Counts, Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tracked:
    """A model that carries a rollout policy, and the status its store holds now."""

    model: ModelRoute
    policy: RolloutPolicy
    status: Mapping[str, Any] | None  # status.rollout as stored (None: none yet)

    @property
    def versions(self) -> list[tuple[str, int]]:
        return [(version_of(s), s.weight) for s in self.model.splits]


class RolloutStore(Protocol):
    async def rollouts(self) -> list[Tracked]: ...

    async def write(
        self, tracked: Tracked, status: Mapping[str, Any]
    ) -> bool:  # False: the stored status changed since `tracked` was read
        ...


class SignalSource(Protocol):
    async def sample(self, models: Iterable[str]) -> Sample: ...


class QuerySource(Protocol):
    async def evaluate(
        self, queries: Sequence[MetricQuery], model: str, version: str
    ) -> dict[str, float | None]: ...


@dataclass(slots=True)
class _Memory:
    revision: str = ""
    step: int = -1
    phase: str = ""
    last_analysis: float = 0.0
    step_base: dict[str, Counts] | None = None  # counts when the step began (or first seen)
    recent: deque[dict[str, Counts]] = field(default_factory=deque)


def _split(counts: Mapping[str, Counts], canary: str) -> tuple[Counts, Counts]:
    stable = Counts()
    for version, c in counts.items():
        if version != canary:
            stable = stable.plus(c)
    return counts.get(canary, Counts()), stable


def _since(now: Mapping[str, Counts], then: Mapping[str, Counts]) -> dict[str, Counts]:
    return {v: c.since(then.get(v, Counts())) for v, c in now.items()}


class RolloutController:
    def __init__(
        self,
        store: RolloutStore,
        signals: SignalSource,
        say: Callable[[str], None] = lambda line: None,
        writer: str = "",
        queries: QuerySource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._signals = signals
        self._clock = clock
        self._say = say
        self._queries = queries  # a policy's PromQL checks (None: none can be evaluated)
        self._writer = writer  # who writes (the Lease holder's identity), shown in the status
        self._memory: dict[str, _Memory] = {}
        self.passes = 0

    async def run(self, max_sleep: float = 1.0, enabled: Callable[[], bool] = lambda: True) -> None:
        """Pass after pass until cancelled; `enabled` false (not the leader) skips a pass."""
        while True:
            wait = max_sleep
            if enabled():
                try:
                    wait = min(max_sleep, await self.once())
                except Exception as exc:  # a failed scrape or write: retry on the next pass
                    log.warning("rollout pass failed: %s", exc)
            await asyncio.sleep(max(0.05, wait))

    async def once(self) -> float:
        """One pass over every rollout; returns the seconds until the next analysis is due."""
        tracked = await self._store.rollouts()
        now = self._clock()
        live = {t.model.key for t in tracked}
        for key in set(self._memory) - live:
            del self._memory[key]
        if not tracked:
            return 1.0
        sample = await self._signals.sample({t.model.model_name for t in tracked})
        next_due = float("inf")
        for t in tracked:
            due_in = await self._move(t, sample, now)
            next_due = min(next_due, due_in)
        self.passes += 1
        return next_due

    async def _move(self, t: Tracked, sample: Sample, now: float) -> float:
        policy, key = t.policy, t.model.key
        counts = {v: c for (m, v), c in sample.items() if m == t.model.model_name}
        mem = self._memory.setdefault(key, _Memory())
        current = RolloutStatus.from_dict(t.status)
        if current is not None and current.revision == policy.revision:
            self._rebase(mem, current, counts, now)  # a status first seen, or changed meanwhile
        mem.recent.append(counts)
        while len(mem.recent) > policy.window_intervals + 1:
            mem.recent.popleft()
        analysis = None
        due = now - mem.last_analysis >= policy.interval_seconds
        running = current is not None and not current.finished
        if running and due and mem.step_base is not None and len(mem.recent) > 1:
            base = mem.recent[0] if len(mem.recent) > policy.window_intervals else mem.step_base
            canary, stable = _split(_since(counts, base), policy.canary)
            checks = policy.thresholds.queries
            values: dict[str, float | None] = {}
            if checks and self._queries is not None:
                values = await self._queries.evaluate(checks, t.model.model_name, policy.canary)
            analysis = analyze(policy.thresholds, canary, stable, values)
            mem.last_analysis = now
        step_requests = int(_split(_since(counts, mem.step_base or {}), policy.canary)[0].completed)
        outcome = step(policy, t.versions, current, now, analysis, step_requests)
        if outcome.status is not None:
            written = outcome.status.as_dict()
            if self._writer:
                written["writer"] = self._writer
            if await self._store.write(t, written):
                for event in outcome.events:
                    self._say(f"rollout {key}: {event}")
                self._rebase(mem, outcome.status, counts, now)
            else:
                self._say(f"rollout {key}: status changed meanwhile; starting from it again")
        return max(0.0, mem.last_analysis + policy.interval_seconds - now)

    def _rebase(
        self, mem: _Memory, status: RolloutStatus, counts: Mapping[str, Counts], now: float
    ) -> None:
        """A new step (or a status first seen): windows start from here."""
        if (mem.revision, mem.step, mem.phase) == (status.revision, status.step, status.phase):
            return
        mem.revision, mem.step, mem.phase = status.revision, status.step, status.phase
        mem.step_base = dict(counts)
        mem.recent.clear()
        mem.last_analysis = now
