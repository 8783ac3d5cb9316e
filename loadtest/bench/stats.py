"""Numbers from samples: latency percentiles, throughput, errors by status, cache hits, pods.

Inter-token latency is per request, (e2e - TTFT) / (completion tokens - 1), so it does not
depend on how a router or the server coalesces stream chunks. Throughput counts successful
requests over the span from the first arrival to the last completion. Pure functions; the
runner (`__main__.py`) feeds them `client.Sample`s and `report.py` prints them.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loadtest.bench.client import Sample


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Dist:
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Dist:
        return cls(percentile(values, 50), percentile(values, 90), percentile(values, 99))


@dataclass(frozen=True, slots=True)
class RunStats:
    sent: int
    ok: int
    errors: tuple[tuple[str, int], ...]  # ("429", 12), ("ClientConnectorError", 1), ...
    ttft: Dist
    itl: Dist
    e2e: Dist
    throughput: float  # successful requests per second
    output_tps: float  # generated tokens per second
    hit_rate: float  # cached prompt tokens / prompt tokens
    pods: tuple[tuple[str, int], ...]  # requests served per pod, by pod name
    group_pods: float = math.nan  # mean distinct pods per prefix group (groups of 2+ requests)
    # p90 e2e had every request run alone on an idle full-speed pod (the GPU profile's cost
    # model): a floor no router can beat, for reading the e2e ratios
    e2e_floor: float = math.nan
    # the same with the pace measured on the full-speed pods in this run (their batches): what
    # no waiting and no slow GPU would give at this load
    e2e_batched_floor: float = math.nan
    # p90 e2e of an ideal first-come-first-served dispatcher replaying the run at its measured
    # paces (each request on the slot where it finishes first): the wait that full throughput
    # in arrival order leaves; not a floor (serving out of order can beat it)
    e2e_in_order: float = math.nan
    # p90 TTFT of the warm requests only (half their prompt or more cached), and how many were
    # cold: on shared prefixes p90 TTFT sits on the edge between the two, so a few cold
    # requests more or fewer move it; this one does not (an extra statistic, not the p90 TTFT)
    ttft_warm_p90: float = math.nan
    cold: int = 0

    @property
    def error_count(self) -> int:
        return sum(n for _, n in self.errors)

    def errors_text(self) -> str:
        return ", ".join(f"{k}x{n}" for k, n in self.errors) or "0"

    def pods_text(self) -> str:
        return " / ".join(str(n) for _, n in self.pods)


def error_key(s: Sample) -> str:
    if s.status and s.status != 200:
        return str(s.status)
    return s.error or "?"


def pods_per_group(samples: Sequence[Sample]) -> float:
    """How far a router spreads each prefix group: 1.0 = perfect affinity."""
    by_group: dict[str, set[str]] = {}
    counts: Counter[str] = Counter()
    for s in samples:
        if s.group and s.pod:
            by_group.setdefault(s.group, set()).add(s.pod)
            counts[s.group] += 1
    spreads = [len(pods) for g, pods in by_group.items() if counts[g] > 1]
    return sum(spreads) / len(spreads) if spreads else math.nan


def is_warm(s: Sample) -> bool:
    """Half its prompt or more came from the prefix cache."""
    return s.prompt_tokens > 0 and 2 * s.cached_tokens >= s.prompt_tokens


def summarize(samples: Sequence[Sample]) -> RunStats:
    ok = [s for s in samples if s.ok]
    errors = Counter(error_key(s) for s in samples if not s.ok)
    itl = [(s.e2e - s.ttft) / (s.completion_tokens - 1) for s in ok if s.completion_tokens > 1]
    span = (max(s.end for s in ok) - min(s.start for s in samples)) if ok else 0.0
    prompt = sum(s.prompt_tokens for s in ok)
    pods = Counter(s.pod or "?" for s in samples if s.status == 200)
    return RunStats(
        sent=len(samples),
        ok=len(ok),
        errors=tuple(sorted(errors.items())),
        ttft=Dist.of([s.ttft for s in ok]),
        itl=Dist.of(itl),
        e2e=Dist.of([s.e2e for s in ok]),
        throughput=len(ok) / span if span > 0 else 0.0,
        output_tps=sum(s.completion_tokens for s in ok) / span if span > 0 else 0.0,
        hit_rate=sum(s.cached_tokens for s in ok) / prompt if prompt else 0.0,
        pods=tuple(sorted(pods.items())),
        group_pods=pods_per_group(ok),
        ttft_warm_p90=percentile([s.ttft for s in ok if is_warm(s)], 90),
        cold=sum(1 for s in ok if not is_warm(s)),
    )


def median_pace(samples: Sequence[Sample], on: Callable[[str], bool]) -> float:
    """Median seconds per output token after the first, over successful requests of 50+ tokens
    served by the pods `on` accepts; NaN when there are none."""
    return percentile(
        [
            (s.e2e - s.ttft) / (s.completion_tokens - 1)
            for s in samples
            if s.ok and on(s.pod) and s.completion_tokens >= 50
        ],
        50,
    )


def completion_rate(samples: Sequence[Sample], warmup: float, until: float) -> float:
    """Successful completions per second between `warmup` and `until` (a closed loop's pace)."""
    done = [s for s in samples if s.ok and warmup <= s.end <= until]
    return len(done) / (until - warmup) if until > warmup else 0.0
