"""The saturation detector: how full a pool is, for admission (shedding) and the saturation filter.

Per endpoint: max(queue / queueDepth, kv / kvCacheUtil, in_flight / maxInFlight), where the queue
is the scraped waiting count or, when the EPP knows of more, its in-flight requests beyond the
scraped running ones (scrapes lag behind bursts). Stale or missing metrics count 1.0 (fail
closed). Pool saturation is the mean over the candidates (upstream's utilization-detector), or
with aggregate="min" the least saturated one (upstream v1.0: saturated iff no pod has room);
no candidates is 1.0. The director sheds sheddable requests at >= 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp.settings import SaturationSettings, field_default
from epp.types import EndpointState

AGGREGATES = ("mean", "min")
# one default each for `epp serve`, the detector and the saturation-filter plugin
QUEUE_DEPTH: float = float(field_default(SaturationSettings, "queue_depth"))  # waiting requests
KV_CACHE_UTIL: float = field_default(SaturationSettings, "kv_cache_util")  # share of the KV cache
STALENESS: float = field_default(SaturationSettings, "staleness_seconds")  # seconds


@dataclass(frozen=True, slots=True)
class SaturationDetector:
    queue_depth: float = QUEUE_DEPTH
    kv_cache_util: float = KV_CACHE_UTIL
    staleness: float = STALENESS  # busy pods are fetched at least every 150 ms
    max_in_flight: int = 0  # EPP-side requests per endpoint counted as full; 0 = not used
    aggregate: str = "mean"  # or "min"

    def __post_init__(self) -> None:
        if self.queue_depth <= 0 or not 0.0 < self.kv_cache_util <= 1.0 or self.staleness <= 0:
            raise ValueError("queue_depth > 0, 0 < kv_cache_util <= 1 and staleness > 0 required")
        if self.max_in_flight < 0:
            raise ValueError("max_in_flight must be >= 0")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}")

    def endpoint(self, state: EndpointState, now: float) -> float:
        m = state.metrics
        if m.scraped_at <= max(now - self.staleness, 0.0):
            return 1.0
        queue = max(m.waiting, state.in_flight - m.running)
        level = max(queue / self.queue_depth, m.kv_usage / self.kv_cache_util)
        if self.max_in_flight:
            level = max(level, state.in_flight / self.max_in_flight)
        return level

    def saturation(self, candidates: Sequence[EndpointState], now: float) -> float:
        if not candidates:
            return 1.0
        if self.max_in_flight:
            levels = [self.endpoint(c, now) for c in candidates]
        else:  # the common case, inlined: this runs per sheddable request over the whole pool
            cutoff = max(now - self.staleness, 0.0)
            iq, ik = 1.0 / self.queue_depth, 1.0 / self.kv_cache_util
            levels = [
                1.0
                if (m := c.metrics).scraped_at <= cutoff
                else max(
                    (m.waiting if m.waiting > c.in_flight - m.running else c.in_flight - m.running)
                    * iq,
                    m.kv_usage * ik,
                )
                for c in candidates
            ]
        return min(levels) if self.aggregate == "min" else sum(levels) / len(levels)

    def saturated(self, candidates: Sequence[EndpointState], now: float) -> bool:
        return self.saturation(candidates, now) >= 1.0
