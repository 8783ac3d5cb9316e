"""Per-version signals read back from the EPPs' own /metrics: counts, failures, TTFT and TPOT.

`parse_exposition` turns one Prometheus text page into `Counts` per (model, version);
`MetricsSource` scrapes every EPP replica's page and adds them up (each replica saw only its own
requests). Counts are cumulative, as the counters are; `Counts.since` subtracts an earlier
sample (a replica restart makes a counter smaller: then the later value is the increase, as
PromQL's `increase` treats a reset). `quantile` reads a histogram's buckets the way PromQL's
`histogram_quantile` does. The analysis (`analysis.py`) judges what these return.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from epp.observability import (
    VERSION_COMPLETED,
    VERSION_ERRORS,
    VERSION_OUTPUT_TOKENS,
    VERSION_TPOT,
    VERSION_TTFT,
)

Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), sorted, +Inf last


@dataclass(frozen=True, slots=True)
class Counts:
    """What one version of one model did, cumulatively (or over a window, after `since`)."""

    completed: float = 0.0
    errors: float = 0.0
    output_tokens: float = 0.0
    ttft: Buckets = ()
    tpot: Buckets = ()

    @property
    def error_rate(self) -> float:
        return self.errors / self.completed if self.completed > 0 else 0.0

    def since(self, earlier: Counts) -> Counts:
        return Counts(
            _increase(self.completed, earlier.completed),
            _increase(self.errors, earlier.errors),
            _increase(self.output_tokens, earlier.output_tokens),
            _bucket_increase(self.ttft, earlier.ttft),
            _bucket_increase(self.tpot, earlier.tpot),
        )

    def plus(self, other: Counts) -> Counts:
        return Counts(
            self.completed + other.completed,
            self.errors + other.errors,
            self.output_tokens + other.output_tokens,
            _bucket_sum(self.ttft, other.ttft),
            _bucket_sum(self.tpot, other.tpot),
        )


Sample = dict[tuple[str, str], Counts]  # (model name, version) → counts


def _increase(later: float, earlier: float) -> float:
    return later - earlier if later >= earlier else later


def _bucket_increase(later: Buckets, earlier: Buckets) -> Buckets:
    if not earlier or len(later) != len(earlier) or later[-1][1] < earlier[-1][1]:
        return later
    return tuple((le, max(0.0, n - m)) for (le, n), (_, m) in zip(later, earlier, strict=True))


def _bucket_sum(a: Buckets, b: Buckets) -> Buckets:
    if not a or not b or len(a) != len(b):
        return a or b
    return tuple((le, n + m) for (le, n), (_, m) in zip(a, b, strict=True))


def quantile(buckets: Buckets, q: float) -> float | None:
    """The q-quantile (0..1) of a histogram, interpolated inside its bucket; None when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_bound  # beyond the last finite bound: the bound is what is known
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 1.0
            return lower_bound + (le - lower_bound) * share
        lower_bound, lower_count = le, count
    return lower_bound


@dataclass(slots=True)
class _Building:
    completed: float = 0.0
    errors: float = 0.0
    output_tokens: float = 0.0
    ttft: dict[float, float] = field(default_factory=dict)
    tpot: dict[float, float] = field(default_factory=dict)

    def freeze(self) -> Counts:
        return Counts(
            self.completed,
            self.errors,
            self.output_tokens,
            tuple(sorted(self.ttft.items())),
            tuple(sorted(self.tpot.items())),
        )


def parse_exposition(text: str, models: Iterable[str] | None = None) -> Sample:
    """The per-version counts on one /metrics page, for `models` (None: every model)."""
    wanted = set(models) if models is not None else None
    out: dict[tuple[str, str], _Building] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            model, version = s.labels.get("model_name"), s.labels.get("version")
            if model is None or version is None or (wanted is not None and model not in wanted):
                continue
            slot = out.setdefault((model, version), _Building())
            if s.name == VERSION_COMPLETED:
                slot.completed += s.value
            elif s.name == VERSION_ERRORS:
                slot.errors += s.value
            elif s.name == VERSION_OUTPUT_TOKENS:
                slot.output_tokens += s.value
            elif s.name in (VERSION_TTFT + "_bucket", VERSION_TPOT + "_bucket"):
                target = slot.ttft if s.name.startswith(VERSION_TTFT) else slot.tpot
                le = float(s.labels["le"])
                target[le] = target.get(le, 0.0) + s.value
    return {key: slot.freeze() for key, slot in out.items()}


def add_samples(samples: Iterable[Sample]) -> Sample:
    total: Sample = {}
    for sample in samples:
        for key, counts in sample.items():
            total[key] = total[key].plus(counts) if key in total else counts
    return total


class MetricsSource:
    """Scrapes the EPP replicas' /metrics pages; a page that cannot be read fails the sample
    (a partial sum would look like a drop in traffic)."""

    def __init__(self, urls: Sequence[str], timeout: float = 5.0) -> None:
        if not urls:
            raise ValueError("the rollout controller needs at least one EPP /metrics URL")
        self.urls = tuple(urls)
        self._client = httpx.AsyncClient(timeout=timeout)

    async def sample(self, models: Iterable[str]) -> Sample:
        wanted = tuple(models)
        pages = await asyncio.gather(*(self._page(url) for url in self.urls))
        return add_samples(parse_exposition(page, wanted) for page in pages)

    async def _page(self, url: str) -> str:
        response = await self._client.get(url)
        response.raise_for_status()
        return response.text

    async def aclose(self) -> None:
        await self._client.aclose()
