"""Shared helpers of the load scorers: metric freshness and min-max normalisation.

A pod never scraped, or scraped longer ago than the staleness threshold, has no trustworthy
load figure. It must not look idle (that is how stale counters create hot spots), so the load
scorers give it 0, the score of the busiest pod. Neighbours: queue, running, kv_cache, in_flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from operator import sub, truediv

DEFAULT_STALENESS = 0.5  # seconds; ten missed scrapes at the default 50 ms interval


def fresh_cutoff(now: float, staleness: float) -> float:
    """Metrics scraped at or before this instant are stale; 0 (never scraped) always is."""
    return max(now - staleness, 0.0)


def min_max(values: Sequence[float | None]) -> list[float]:
    """(max - v) / (max - min) over the known values; unknown → 0; all known equal → 1."""
    if None in values:
        known = [v for v in values if v is not None]
        if not known:
            return [0.0] * len(values)
        low, high = min(known), max(known)
        span = high - low
        if span == 0:
            return [0.0 if v is None else 1.0 for v in values]
        return [0.0 if v is None else (high - v) / span for v in values]
    full: Sequence[float] = values  # type: ignore[assignment]
    low, high = min(full), max(full)
    span = high - low
    if span == 0:
        return [1.0] * len(full)
    # map/operator keep the per-endpoint work in C (hot path)
    return list(map(truediv, map(sub, repeat(high), full), repeat(span)))
