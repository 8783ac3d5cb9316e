"""One analysis: the canary against stable over a window, judged by the policy's thresholds.

A window is what both versions did over the last few intervals of the current step
(`signals.Counts.since`). The verdict is Pass, Fail (with the reason a person reads in the
status) or Inconclusive (fewer finished requests of either version than `minSamples`; the step
waits). Failures are
the canary's own: an error rate over the ceiling that stable does not share, or a p-th TTFT / TPOT
more than the allowed ratio of stable's. Extra PromQL checks come in as already evaluated values
(`controller.py` asks Prometheus). Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from epp.api.rollout import Thresholds
from epp.rollout.signals import Counts, quantile

Verdict = Literal["Pass", "Fail", "Inconclusive"]


@dataclass(frozen=True, slots=True)
class Figures:
    """What one version showed over the window (seconds; None = no sample)."""

    requests: int
    error_rate: float
    ttft: float | None
    tpot: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "errorRate": round(self.error_rate, 4),
            "ttftSeconds": _round(self.ttft),
            "tpotSeconds": _round(self.tpot),
        }


@dataclass(frozen=True, slots=True)
class Analysis:
    verdict: Verdict
    reason: str
    canary: Figures
    stable: Figures
    queries: tuple[tuple[str, float | None], ...] = ()

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "verdict": self.verdict,
            "reason": self.reason,
            "canary": self.canary.as_dict(),
            "stable": self.stable.as_dict(),
        }
        if self.queries:
            out["queries"] = {name: _round(value) for name, value in self.queries}
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def figures(counts: Counts, percentile: float) -> Figures:
    q = percentile / 100
    return Figures(
        int(counts.completed), counts.error_rate, quantile(counts.ttft, q), quantile(counts.tpot, q)
    )


def analyze(
    thresholds: Thresholds,
    canary: Counts,
    stable: Counts,
    queries: Mapping[str, float | None] | None = None,
) -> Analysis:
    """Judge one window. `queries`: the value of each of the policy's PromQL checks."""
    c, s = figures(canary, thresholds.percentile), figures(stable, thresholds.percentile)
    found = tuple((q.name, (queries or {}).get(q.name)) for q in thresholds.queries)
    need = thresholds.min_samples
    if c.requests < need or s.requests < need:
        why = f"too few finished requests to judge (canary {c.requests}, stable {s.requests}"
        return Analysis("Inconclusive", f"{why}, need {need} each)", c, s, found)
    failures: list[str] = []
    limit = thresholds.max_error_rate
    if limit is not None and c.error_rate > max(limit, s.error_rate):
        failures.append(
            f"error rate {c.error_rate:.1%} over {limit:.1%} "
            f"({int(canary.errors)} of {c.requests}; stable {s.error_rate:.1%})"
        )
    p = f"p{thresholds.percentile:g}"
    for name, limit_ratio, mine, theirs, margin in (
        ("TTFT", thresholds.max_ttft_ratio, c.ttft, s.ttft, thresholds.min_ttft_increase),
        ("TPOT", thresholds.max_tpot_ratio, c.tpot, s.tpot, 0.0),
    ):
        if limit_ratio is None or mine is None or not theirs:
            continue
        ratio = mine / theirs
        if ratio > limit_ratio and mine - theirs > margin:
            more = f", and more than {margin * 1000:g} ms slower" if margin else ""
            failures.append(
                f"{p} {name} {mine * 1000:.1f} ms is {ratio:.2f}x stable's "
                f"{theirs * 1000:.1f} ms (limit {limit_ratio:g}x{more})"
            )
    for query in thresholds.queries:
        value = (queries or {}).get(query.name)
        if value is None:
            continue
        if query.max is not None and value > query.max:
            failures.append(f"query {query.name} = {value:g} over {query.max:g}")
        if query.min is not None and value < query.min:
            failures.append(f"query {query.name} = {value:g} under {query.min:g}")
    if failures:
        return Analysis("Fail", "; ".join(failures), c, s, found)
    unknown = [name for name, value in found if value is None]
    if unknown:
        why = f"no value for query {', '.join(unknown)} (is Prometheus reachable?)"
        return Analysis("Inconclusive", why, c, s, found)
    return Analysis("Pass", "canary within every threshold", c, s, found)
