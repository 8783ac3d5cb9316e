"""Shared helpers of the load scorers: metric freshness and min-max normalisation.

A pod never scraped, or scraped longer ago than the staleness threshold, has no trustworthy
load figure. It must not look idle (that is how stale counters create hot spots), so the load
scorers give it 0, the score of the busiest pod. Neighbours: queue, running, kv_cache, in_flight,
prefix_cache; columns come from `epp.scheduling.snapshot`.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.scheduling.snapshot import Snapshot

DEFAULT_STALENESS = 0.5  # seconds; ten missed scrapes at the default 50 ms interval


def fresh_cutoff(now: float, staleness: float) -> float:
    """Metrics scraped at or before this instant are stale; 0 (never scraped) always is."""
    return max(now - staleness, 0.0)


def min_max(values: Sequence[float]) -> list[float]:
    """(max - v) / (max - min); all equal → 1."""
    low, high = min(values), max(values)
    if high == low:
        return [1.0] * len(values)
    inv = 1.0 / (high - low)
    return [(high - v) * inv for v in values]


def min_max_fresh(snap: Snapshot, values: Sequence[float], cutoff: float) -> list[float]:
    """min_max over the fresh endpoints' values; stale endpoints score 0."""
    if snap.all_fresh(cutoff):
        return min_max(values)
    flags = snap.fresh(cutoff)
    known = [v for v, ok in zip(values, flags, strict=True) if ok]
    if not known:
        return [0.0] * len(values)
    low, high = min(known), max(known)
    if high == low:
        return [1.0 if ok else 0.0 for ok in flags]
    inv = 1.0 / (high - low)
    return [(high - v) * inv if ok else 0.0 for v, ok in zip(values, flags, strict=True)]
