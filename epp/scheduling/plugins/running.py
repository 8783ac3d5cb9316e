"""`running-requests-size-scorer`: fewer running requests (`vllm:num_requests_running`) wins.

Upstream's min-max normalisation over the candidates ((max - r) / (max - min), all equal → 1);
a pod whose metrics are stale or missing scores 0 (see `signals.py`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from epp.scheduling.base import BuildContext, Clock, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.plugins.signals import DEFAULT_STALENESS, fresh_cutoff, min_max_fresh
from epp.scheduling.snapshot import snapshot_of
from epp.types import EndpointState


class RunningRequestsScorer:
    type = "running-requests-size-scorer"
    name = type
    bounded = True  # scores already in [0, 1]: the profile skips its clamp

    def __init__(self, staleness: float = DEFAULT_STALENESS, clock: Clock = time.monotonic) -> None:
        self.staleness = staleness
        self._clock = clock

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> RunningRequestsScorer:
        staleness = params.duration("metricsStalenessThreshold", DEFAULT_STALENESS)
        return cls(staleness, ctx.clock)

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        cutoff = fresh_cutoff(self._clock(), self.staleness)
        snap = snapshot_of(candidates)
        return min_max_fresh(snap, snap.running, cutoff)
