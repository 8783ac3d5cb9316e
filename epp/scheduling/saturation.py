"""The saturation detector: how full a pool is, for admission (shedding) and the saturation filter.

Per endpoint: max(queue / queueDepth, kv / kvCacheUtil, in_flight / maxInFlight), where the queue
is the scraped waiting count or, when the EPP knows of more, its in-flight requests beyond the
scraped running ones (scrapes lag behind bursts). Stale or missing metrics count 1.0 (fail
closed). Pool saturation is the mean over the candidates; no candidates is 1.0. The director
sheds sheddable requests at >= 1.0 (upstream's utilization-detector, pre-cleanup default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.settings import SaturationSettings
from epp.types import EndpointState


@dataclass(frozen=True, slots=True)
class SaturationDetector:
    queue_depth: float = 5.0
    kv_cache_util: float = 0.8
    staleness: float = 0.2  # seconds
    max_in_flight: int = 0  # EPP-side requests per endpoint counted as full; 0 = not used

    def __post_init__(self) -> None:
        if self.queue_depth <= 0 or not 0.0 < self.kv_cache_util <= 1.0 or self.staleness <= 0:
            raise ValueError("queue_depth > 0, 0 < kv_cache_util <= 1 and staleness > 0 required")
        if self.max_in_flight < 0:
            raise ValueError("max_in_flight must be >= 0")

    @classmethod
    def from_settings(
        cls, settings: SaturationSettings, max_in_flight: int = 0
    ) -> SaturationDetector:
        return cls(
            settings.queue_depth, settings.kv_cache_util, settings.staleness_seconds, max_in_flight
        )

    def endpoint(self, state: EndpointState, now: float) -> float:
        m = state.metrics
        if m.scraped_at <= 0.0 or now - m.scraped_at > self.staleness:
            return 1.0
        queue = max(m.waiting, state.in_flight - m.running)
        level = max(queue / self.queue_depth, m.kv_usage / self.kv_cache_util)
        if self.max_in_flight:
            level = max(level, state.in_flight / self.max_in_flight)
        return level

    def saturation(self, candidates: Sequence[EndpointState], now: float) -> float:
        if not candidates:
            return 1.0
        return sum(self.endpoint(c, now) for c in candidates) / len(candidates)

    def saturated(self, candidates: Sequence[EndpointState], now: float) -> bool:
        return self.saturation(candidates, now) >= 1.0
