"""`kv-cache-utilization-scorer`: 1 - KV-cache usage (`vllm:kv_cache_usage_perc`, a 0..1 fraction).

A pod whose metrics are stale or missing scores 0, as if its cache were full.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from epp.scheduling.base import BuildContext, Clock, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.plugins.signals import DEFAULT_STALENESS, fresh_cutoff
from epp.scheduling.snapshot import snapshot_of
from epp.types import EndpointState


class KvCacheScorer:
    type = "kv-cache-utilization-scorer"
    name = type
    bounded = True  # scores already in [0, 1]: the profile skips its clamp

    def __init__(self, staleness: float = DEFAULT_STALENESS, clock: Clock = time.monotonic) -> None:
        self.staleness = staleness
        self._clock = clock

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> KvCacheScorer:
        staleness = params.duration("metricsStalenessThreshold", DEFAULT_STALENESS)
        return cls(staleness, ctx.clock)

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        cutoff = fresh_cutoff(self._clock(), self.staleness)
        snap = snapshot_of(candidates)
        # out-of-range usage is clamped by the profile
        if snap.all_fresh(cutoff):
            return [1.0 - u for u in snap.kv_usage]
        return [
            1.0 - u if ok else 0.0 for u, ok in zip(snap.kv_usage, snap.fresh(cutoff), strict=True)
        ]
