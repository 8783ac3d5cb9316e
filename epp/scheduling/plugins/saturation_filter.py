"""`saturation-filter`: drop endpoints that are saturated or whose metrics are stale.

Uses the per-endpoint level of `epp.scheduling.saturation.SaturationDetector`; an endpoint is
kept below 1 + headroom. When every endpoint would be dropped it keeps them all: under overload
the request still goes somewhere (shedding is admission's job, not the filter's).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from epp.scheduling.base import BuildContext, Clock, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.saturation import (
    KV_CACHE_UTIL,
    QUEUE_DEPTH,
    STALENESS,
    SaturationDetector,
)
from epp.types import EndpointState


class SaturationFilter:
    type = "saturation-filter"
    name = type

    def __init__(
        self,
        detector: SaturationDetector | None = None,
        headroom: float = 0.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.detector = detector or SaturationDetector()
        self.limit = 1.0 + headroom
        self._clock = clock

    @classmethod
    def from_parameters(cls, params: Params, ctx: BuildContext) -> SaturationFilter:
        detector = SaturationDetector(
            params.number("queueDepthThreshold", QUEUE_DEPTH, low=0.001),
            params.number("kvCacheUtilThreshold", KV_CACHE_UTIL, low=0.001, high=1.0),
            params.duration("metricsStalenessThreshold", STALENESS, low=0.001),
            params.integer("maxInFlight", 0, low=0),
        )
        return cls(detector, params.number("headroom", 0.0, low=0.0), ctx.clock)

    def filter(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState]
    ) -> Sequence[EndpointState]:
        now, level, limit = self._clock(), self.detector.endpoint, self.limit
        kept = [c for c in candidates if level(c, now) < limit]
        return kept or candidates
