"""Shedding: a sheddable request is refused (429) rather than queued when the pool is full.

A sheddable request never waits. It is admitted only while some endpoint keeps a share of its
batch free (`sheddable_reserve`, so critical and standard requests still find room) and the
pool is not saturated (`epp.scheduling.saturation.SaturationDetector`, aggregated as configured).
Neighbours: `epp.admission.controller` calls `admit`.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.admission.rooms import keeps_reserve
from epp.errors import Shed
from epp.scheduling.saturation import SaturationDetector
from epp.settings import SaturationSettings
from epp.types import EndpointState


class Shedder:
    def __init__(self, settings: SaturationSettings) -> None:
        s = settings
        self.reserve = s.sheddable_reserve
        self.detector = SaturationDetector(
            s.queue_depth, s.kv_cache_util, s.staleness_seconds, s.max_in_flight, s.aggregate
        )

    def admit(self, candidates: Sequence[EndpointState], now: float) -> list[EndpointState]:
        """The endpoints that keep their reserve free; `Shed` when none does or the pool is
        saturated."""
        with_room = [c for c in candidates if keeps_reserve(c, self.reserve)]
        if not with_room or self.detector.saturated(candidates, now):
            raise Shed("system saturated, sheddable request dropped")
        return with_room
