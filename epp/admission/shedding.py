"""Shedding: a sheddable request is refused (429) rather than queued when the pool is full.

A sheddable request is admitted only while some endpoint keeps a share of its batch free
(`sheddable_reserve`, so critical and standard requests still find room) and the pool is not
saturated (`epp.scheduling.saturation.SaturationDetector`, aggregated as configured). It never
waits, unless its ticket names a TTL (a header or its model's default): then it waits in the
lowest band for that room (`SheddableRoom`), and may be evicted by better arrivals.
Neighbours: `epp.admission.controller` calls `admit` and builds the room test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from epp.admission.rooms import keeps_reserve
from epp.errors import NoEndpoints, Shed
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


class SheddableRoom:
    """The room test of one waiting sheddable request: the shedder would admit it now."""

    __slots__ = ("_candidates", "_clock", "_shedder")

    def __init__(
        self,
        shedder: Shedder,
        candidates: Callable[[], Sequence[EndpointState]],
        clock: Callable[[], float],
    ) -> None:
        self._shedder = shedder
        self._candidates = candidates
        self._clock = clock

    def __call__(self, first: bool, held: bool) -> bool:
        try:
            self._shedder.admit(self._candidates(), self._clock())
        except Shed:
            return False
        except NoEndpoints:
            return True  # let the request through to get its 503 now
        return True
