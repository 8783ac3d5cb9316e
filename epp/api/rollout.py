"""A model's rollout policy and its current weights: the canary entry's `rollout` block.

Users write the policy where they already write the split: on the canary's entry of the seed
shape's `spec.routing.trafficSplit[i].rollout`, or of the upstream shape's
`spec.targetModels[i].rollout`. The other entries are the stable versions. The controller
(`epp.rollout`) keeps the weights it decided in `status.rollout.weights` (version → weight);
while a policy is present, the parsers route by those rather than by the spec's weights, so the
user's spec stays theirs (GitOps tools do not fight the controller). Called by `seed` and
`upstream`; reads through `fields.Obj`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from epp.api.fields import Obj
from epp.api.model import SplitTarget

MAX_STEPS = 20
MAX_QUERIES = 8
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
PHASES = ("Progressing", "Paused", "Promoted", "RolledBack", "Aborted")


@dataclass(frozen=True, slots=True)
class MetricQuery:
    """A PromQL check of the canary: `$version` in the query is replaced by its version."""

    name: str
    query: str
    max: float | None = None
    min: float | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Canary against stable over one analysis window; None = not checked."""

    max_error_rate: float | None = 0.05  # share of the canary's finished requests that failed
    max_ttft_ratio: float | None = 1.5  # canary p-th TTFT / stable p-th TTFT
    max_tpot_ratio: float | None = 1.5  # canary p-th time per output token / stable's
    # a TTFT ratio over its limit fails only when the canary's TTFT is also more than this many
    # seconds above stable's: a 15 ms p90 doubling to 30 ms is queueing noise, not a regression
    min_ttft_increase: float = 0.0
    percentile: float = 90.0
    min_samples: int = 10  # finished canary (and stable) requests a window needs to judge
    queries: tuple[MetricQuery, ...] = ()


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """Steps of canary weight (percent of the model's traffic), held at least `step_seconds`
    and `min_requests` canary requests each, judged every `interval_seconds`."""

    canary: str  # the canary's version label (seed) or target model name (upstream)
    steps: tuple[int, ...] = (10, 25, 50, 100)
    interval_seconds: float = 30.0
    step_seconds: float = 60.0
    min_requests: int = 50
    window_intervals: int = 3  # an analysis looks back this many intervals (within the step)
    failure_limit: int = 1  # failed analyses in a step before the rollback
    thresholds: Thresholds = Thresholds()

    @property
    def revision(self) -> str:
        """A short hash: a changed policy (or canary) starts a new rollout."""
        text = json.dumps(_plain(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain(value: object) -> object:
    if isinstance(value, RolloutPolicy | Thresholds | MetricQuery):
        return {k: _plain(getattr(value, k)) for k in value.__slots__}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def read_duration(parent: Obj, key: str, *, lo: float, hi: float) -> float | None:
    """A duration: seconds as a number, or a string like "500ms", "30s", "2m", "1h"."""
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        parent.error(key, f'must be a duration like "30s", "2m" or seconds, got {value!r}')
        return None
    if not lo <= seconds <= hi:
        parent.error(key, f"must be between {lo:g}s and {hi:g}s, got {seconds:g}s")
        return None
    return seconds


def read_rollout(block: Obj, canary: str | None) -> RolloutPolicy | None:
    """The `rollout` block of one split entry; `canary` is the entry's version (None: missing)."""
    block.only(
        "steps", "interval", "stepDuration", "minRequests", "windowIntervals", "failureLimit",
        "analysis",
    )  # fmt: skip
    steps = _read_steps(block)
    interval = read_duration(block, "interval", lo=0.1, hi=3600)
    step = read_duration(block, "stepDuration", lo=0, hi=86400)
    min_requests = block.integer("minRequests", lo=0, hi=10_000_000)
    window = block.integer("windowIntervals", lo=1, hi=100)
    failure_limit = block.integer("failureLimit", lo=1, hi=100)
    analysis = block.obj("analysis")
    thresholds = _read_thresholds(analysis) if analysis is not None else Thresholds()
    if canary is None or steps is None:
        return None
    base = RolloutPolicy(canary)
    return RolloutPolicy(
        canary=canary,
        steps=steps,
        interval_seconds=interval if interval is not None else base.interval_seconds,
        step_seconds=step if step is not None else base.step_seconds,
        min_requests=min_requests if min_requests is not None else base.min_requests,
        window_intervals=window or base.window_intervals,
        failure_limit=failure_limit or base.failure_limit,
        thresholds=thresholds,
    )


def _read_steps(block: Obj) -> tuple[int, ...] | None:
    items = block.items("steps", min_items=1, max_items=MAX_STEPS)
    if items is None:
        return RolloutPolicy("").steps if not block.has("steps") else None
    steps: list[int] = []
    for path, value in items:
        if isinstance(value, bool) or not isinstance(value, int):
            block.findings.add(path, f"must be an integer percent, got {value!r}")
            return None
        if not 1 <= value <= 100:
            block.findings.add(path, f"must be 1..100, got {value}")
            return None
        if steps and value <= steps[-1]:
            block.findings.add(path, f"steps must increase, got {value} after {steps[-1]}")
            return None
        steps.append(value)
    if steps[-1] != 100:
        block.findings.add(items[-1][0], f"the last step must be 100 (promotion), got {steps[-1]}")
        return None
    return tuple(steps)


def _read_thresholds(analysis: Obj) -> Thresholds:
    analysis.only(
        "maxErrorRate",
        "maxTTFTRatio",
        "maxTPOTRatio",
        "minTTFTIncrease",
        "percentile",
        "minSamples",
        "queries",
    )
    base = Thresholds()
    error_rate = analysis.number("maxErrorRate", lo=0, hi=1)
    ttft = analysis.number("maxTTFTRatio", lo=1, hi=1000)
    tpot = analysis.number("maxTPOTRatio", lo=1, hi=1000)
    increase = read_duration(analysis, "minTTFTIncrease", lo=0, hi=3600)
    percentile = analysis.number("percentile", lo=1, hi=99.9)
    samples = analysis.integer("minSamples", lo=1, hi=1_000_000)
    queries: list[MetricQuery] = []
    names: set[str] = set()
    for entry in analysis.objs("queries", max_items=MAX_QUERIES):
        entry.only("name", "query", "max", "min")
        name = entry.string("name", required=True, max_len=63)
        query = entry.string("query", required=True, max_len=4096)
        hi = entry.number("max", lo=-1e18, hi=1e18)
        lo = entry.number("min", lo=-1e18, hi=1e18)
        if hi is None and lo is None and not (entry.has("max") or entry.has("min")):
            entry.error(None, "needs max or min")
        if name is not None and name in names:
            entry.error("name", f"duplicate query {name!r}")
        if name is not None and query is not None and (hi is not None or lo is not None):
            names.add(name)
            queries.append(MetricQuery(name, query, hi, lo))
    return Thresholds(
        max_error_rate=error_rate if analysis.has("maxErrorRate") else base.max_error_rate,
        max_ttft_ratio=ttft if analysis.has("maxTTFTRatio") else base.max_ttft_ratio,
        max_tpot_ratio=tpot if analysis.has("maxTPOTRatio") else base.max_tpot_ratio,
        min_ttft_increase=increase if increase is not None else base.min_ttft_increase,
        percentile=percentile or base.percentile,
        min_samples=samples or base.min_samples,
        queries=tuple(queries),
    )


def status_weights(doc: Mapping[str, object]) -> dict[str, int]:
    """`status.rollout.weights` of a raw document (version → weight); {} when absent or odd.
    Only the controller writes it, so anything malformed is ignored rather than reported."""
    status = doc.get("status")
    rollout = status.get("rollout") if isinstance(status, dict) else None
    weights = rollout.get("weights") if isinstance(rollout, dict) else None
    if not isinstance(weights, dict):
        return {}
    out = {
        str(k): v
        for k, v in weights.items()
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 100
    }
    return out if len(out) == len(weights) and sum(out.values()) > 0 else {}


def version_of(split: SplitTarget) -> str:
    """The name a rollout gives a split entry: its version label, else its target model."""
    return split.version or split.model or ""


def effective_splits(
    splits: tuple[SplitTarget, ...], policy: RolloutPolicy | None, doc: Mapping[str, object]
) -> tuple[SplitTarget, ...]:
    """The splits to route by: the spec's, or the controller's weights while a policy is set."""
    weights = status_weights(doc) if policy is not None else {}
    if not weights or {version_of(s) for s in splits} != set(weights):
        return splits
    return tuple(replace(s, weight=weights[version_of(s)]) for s in splits)


def check_entries(parent: Obj, key: str, versions: list[str | None], canary_at: list[int]) -> None:
    """Cross-entry rules of a split that carries a rollout (paths name the entries)."""
    if len(canary_at) > 1:
        for i in canary_at[1:]:
            parent.findings.add(
                f"{parent.at(key)}[{i}].rollout",
                f"only one entry may carry a rollout (entry {canary_at[0]} has one)",
            )
    if not canary_at:
        return
    if len(versions) < 2:
        parent.error(key, "a rollout needs a stable entry beside the canary")
    seen: dict[str, int] = {}
    for i, version in enumerate(versions):
        if version is None:
            continue
        if version in seen:
            parent.findings.add(
                f"{parent.at(key)}[{i}]",
                f"version {version!r} repeats entry {seen[version]}: a rollout tells them apart",
            )
        seen.setdefault(version, i)
