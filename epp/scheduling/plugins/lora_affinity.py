"""`lora-affinity-scorer` and `lora-affinity-filter`: send an adapter where it is or can be loaded.

Scorer (upstream values): adapter active on the pod 1.0; a free adapter slot
(active + waiting < max_lora) 0.8; adapter waiting to load 0.6; otherwise 0. A request for the
base model scores 1.0 everywhere (neutral). The filter keeps the pods where the adapter is active
or waiting with probability `threshold` (upstream 0.999), else those with a free slot, else all:
the small escape keeps a hot adapter from pinning all its traffic to its first pods.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from epp.scheduling.base import BuildContext, SchedulingRequest
from epp.scheduling.params import Params
from epp.types import EndpointMetrics, EndpointState

ACTIVE, FREE_SLOT, WAITING, NONE = 1.0, 0.8, 0.6, 0.0


def lora_score(m: EndpointMetrics, adapter: str) -> float:
    if adapter in m.lora_active:
        return ACTIVE
    if len(m.lora_active) + len(m.lora_waiting) < m.max_lora:
        return FREE_SLOT
    if adapter in m.lora_waiting:
        return WAITING
    return NONE


class LoraAffinityScorer:
    type = "lora-affinity-scorer"
    name = type
    bounded = True  # scores already in [0, 1]: the profile skips its clamp

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> LoraAffinityScorer:
        return cls()

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        adapter = request.lora_adapter
        if adapter is None:
            return [1.0] * len(candidates)
        return [lora_score(c.metrics, adapter) for c in candidates]


class LoraAffinityFilter:
    type = "lora-affinity-filter"
    name = type

    def __init__(self, threshold: float = 0.999, rng: random.Random | None = None) -> None:
        self.threshold = threshold
        self._rng = rng or random.Random()

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> LoraAffinityFilter:
        return cls(params.number("threshold", 0.999, low=0.0, high=1.0), ctx.rng)

    def filter(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState]
    ) -> Sequence[EndpointState]:
        adapter = request.lora_adapter
        if adapter is None:
            return candidates
        affinity: list[EndpointState] = []
        available: list[EndpointState] = []
        for c in candidates:
            m = c.metrics
            if adapter in m.lora_active or adapter in m.lora_waiting:
                affinity.append(c)
            elif len(m.lora_active) + len(m.lora_waiting) < m.max_lora:
                available.append(c)
        if affinity and (not available or self._rng.random() < self.threshold):
            return affinity
        return available or candidates
