"""Counters and histograms an engine accumulates, in the shape vLLM exports them.

`epp.sim.engine` updates an `EngineStats` as steps complete; `epp.sim.metrics` renders it as
Prometheus text. Bucket bounds are vLLM's (v1 `loggers.py`) so dashboards built for vLLM work.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
# vLLM's 1-2-5 series for per-request token counts
TOKEN_BUCKETS = tuple(m * 10**e for e in range(6) for m in (1, 2, 5))
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0,
)  # fmt: skip


class Histogram:
    """Fixed-bucket histogram; `counts[i]` holds observations <= bounds[i] (not cumulative)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.count += n
        self.sum += value * n

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, cumulative count) pairs, ending with +Inf."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += c
            out.append((bound, total))
        return out


@dataclass(slots=True)
class EngineStats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    preemptions: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    lora_loads: int = 0
    steps: int = 0
    last_step_at: float | None = None  # the clock when the last step ended
    busy_s: float = 0.0
    finished: Counter[str] = field(default_factory=Counter)  # by finish reason
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    queue: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    prefill: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    # prompt tokens each finished request computed (not found cached), observed with `prefill`
    prefill_computed: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
    itl: Histogram = field(default_factory=lambda: Histogram(ITL_BUCKETS))
    generation: Histogram = field(default_factory=lambda: Histogram(TOKEN_BUCKETS))
