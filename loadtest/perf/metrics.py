"""inference-perf's reports read back, and our own definitions computed from its records.

inference-perf writes `stage_<i>_lifecycle_metrics.json` per stage (its definitions: TTFT =
first streamed token, TPOT = (e2e - TTFT) / (output tokens - 1) with output tokens counted by
re-tokenizing the answer on the client, NTPOT = e2e / output tokens, ITL = each gap between
tokens, throughput per second of the stage) and `per_request_lifecycle_metrics.json` (send and
end times, the time of each streamed chunk, the server's `usage`). `their_stage` picks its
numbers; `our_stage` computes ours over the same requests: TTFT to the first streamed chunk,
ITL = (e2e - TTFT) / (server-counted completion tokens - 1), e2e, and the prefix-cache hit rate
(cached / prompt tokens from `usage`), the definitions `loadtest.bench` reports.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.bench.stats import percentile

LATENCIES = (
    ("time_to_first_token", "TTFT"),
    ("time_per_output_token", "TPOT"),
    ("normalized_time_per_output_token", "NTPOT"),
    ("inter_token_latency", "ITL"),
    ("request_latency", "e2e"),
)


@dataclass(frozen=True, slots=True)
class Ours:
    ok: int
    ttft: tuple[float, float, float]  # p50, p90, p99 seconds
    itl: tuple[float, float]  # p50, p90
    e2e: tuple[float, float, float]
    hit_rate: float  # cached / prompt tokens


def _get(data: Mapping[str, Any], *path: str) -> Any:
    out: Any = data
    for key in path:
        if not isinstance(out, Mapping) or key not in out:
            return math.nan
        out = out[key]
    return out


def their_stage(data: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one stage report: counts, rates, and p50/p90/p99 of each latency."""
    out: dict[str, float] = {
        "requested_rate": _get(data, "load_summary", "requested_rate"),
        "achieved_rate": _get(data, "load_summary", "achieved_rate"),
        "ok": _get(data, "successes", "count"),
        "failed": _get(data, "failures", "count"),
        "requests_per_sec": _get(data, "successes", "throughput", "requests_per_sec"),
        "output_tokens_per_sec": _get(data, "successes", "throughput", "output_tokens_per_sec"),
    }
    for key, _ in LATENCIES:
        for p in ("median", "p90", "p99"):
            out[f"{key}.{p}"] = _get(data, "successes", "latency", key, p)
    return {k: float(v) if isinstance(v, int | float) else math.nan for k, v in out.items()}


def read_stages(folder: Path) -> list[dict[str, Any]]:
    """Every `stage_<i>_lifecycle_metrics.json` in `folder`, in stage order."""
    stages = sorted(
        folder.glob("stage_*_lifecycle_metrics.json"), key=lambda p: int(p.name.split("_")[1])
    )
    return [json.loads(p.read_text()) for p in stages]


def split_by_stage(
    records: Sequence[Mapping[str, Any]], counts: Sequence[int]
) -> list[list[Mapping[str, Any]]]:
    """Per-request records, ordered by send time, cut into stages of `counts` requests (the
    stages run one after another, so sending order is stage order)."""
    ordered = sorted(records, key=lambda r: float(r["start_time"]))
    out, at = [], 0
    for n in counts:
        out.append(ordered[at : at + n])
        at += n
    return out


def _ours_of(record: Mapping[str, Any]) -> tuple[float, float, float, int, int] | None:
    """(TTFT, ITL, e2e, prompt tokens, cached tokens) of one successful request."""
    if record.get("error"):
        return None
    metrics = _get(record, "info", "response_metrics")
    chunks = metrics.get("chunk_times") if isinstance(metrics, Mapping) else None
    if not chunks:
        return None
    start, end = float(record["start_time"]), float(record["end_time"])
    usage = metrics.get("server_usage") or {}
    tokens = int(usage.get("completion_tokens") or 0)
    ttft, e2e = float(chunks[0]) - start, end - start
    itl = (e2e - ttft) / (tokens - 1) if tokens > 1 else math.nan
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return ttft, itl, e2e, prompt, cached


def our_stage(records: Sequence[Mapping[str, Any]]) -> Ours:
    rows = [r for r in (_ours_of(x) for x in records) if r is not None]
    ttft = [r[0] for r in rows]
    itl = [r[1] for r in rows if not math.isnan(r[1])]
    e2e = [r[2] for r in rows]
    prompt = sum(r[3] for r in rows)

    p = percentile  # NaN for no values
    return Ours(
        len(rows),
        (p(ttft, 50), p(ttft, 90), p(ttft, 99)),
        (p(itl, 50), p(itl, 90)),
        (p(e2e, 50), p(e2e, 90), p(e2e, 99)),
        sum(r[4] for r in rows) / prompt if prompt else math.nan,
    )
