"""The inference-perf run's report: per router and stage, inference-perf's own metrics and ours
over the same requests, with the record at the top (markdown and JSON)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.perf.metrics import Ours
from loadtest.record import Record


@dataclass(frozen=True, slots=True)
class Stage:
    theirs: dict[str, float]  # metrics.their_stage
    ours: Ours


@dataclass(frozen=True, slots=True)
class RouterRun:
    router: str
    stages: tuple[Stage, ...] = ()
    error: str = ""  # why it did not run or finish
    raw: tuple[dict[str, Any], ...] = field(
        default=(), repr=False
    )  # inference-perf's stage reports


@dataclass(frozen=True, slots=True)
class Header:
    record: Record
    cluster: str
    shape: str
    guide: str
    rates: str
    inference_perf: str  # the pinned release and how it was set up


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1000:.0f}"


def _s(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _n(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.0f}"


def theirs_table(runs: Sequence[RouterRun]) -> list[str]:
    lines = [
        "| router | rate req/s (achieved) | ok | failed | TTFT p50 / p90 / p99 ms "
        "| TPOT p50 / p90 ms | NTPOT p90 ms | ITL p90 ms | e2e p50 / p90 / p99 s | req/s "
        "| out tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for st in run.stages:
            t = st.theirs
            lines.append(
                f"| {run.router} | {t['requested_rate']:g} ({t['achieved_rate']:.2f}) "
                f"| {_n(t['ok'])} | {_n(t['failed']) if not math.isnan(t['failed']) else 0} "
                f"| {_ms(t['time_to_first_token.median'])} / {_ms(t['time_to_first_token.p90'])}"
                f" / {_ms(t['time_to_first_token.p99'])} "
                f"| {_ms(t['time_per_output_token.median'])} / "
                f"{_ms(t['time_per_output_token.p90'])} "
                f"| {_ms(t['normalized_time_per_output_token.p90'])} "
                f"| {_ms(t['inter_token_latency.p90'])} "
                f"| {_s(t['request_latency.median'])} / {_s(t['request_latency.p90'])} / "
                f"{_s(t['request_latency.p99'])} "
                f"| {t['requests_per_sec']:.2f} | {t['output_tokens_per_sec']:.0f} |"
            )
    return lines


def ours_table(runs: Sequence[RouterRun]) -> list[str]:
    lines = [
        "| router | rate req/s | ok | TTFT p50 / p90 / p99 ms | ITL p50 / p90 ms "
        "| e2e p50 / p90 / p99 s | prefix hit |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for st in run.stages:
            o = st.ours
            hit = "-" if math.isnan(o.hit_rate) else f"{o.hit_rate:.0%}"
            lines.append(
                f"| {run.router} | {st.theirs['requested_rate']:g} | {o.ok} "
                f"| {' / '.join(_ms(v) for v in o.ttft)} | {' / '.join(_ms(v) for v in o.itl)} "
                f"| {' / '.join(_s(v) for v in o.e2e)} | {hit} |"
            )
    return lines


def render_markdown(h: Header, runs: Sequence[RouterRun]) -> str:
    lines = [
        f"# inference-perf: llm-d's guide workload shape, scaled to the simulator, {h.record.date}",
        "",
        *h.record.markdown(),
        f"- inference-perf: {h.inference_perf}",
        f"- cluster: {h.cluster}",
        f"- workload: inference-perf `shared_prefix`, {h.shape} (llm-d's guide: {h.guide}); "
        f"Poisson stages of {h.rates}; streaming completions, `ignore_eos`",
        "",
        "## inference-perf's metrics (its definitions)",
        "",
        "TTFT = first streamed token; TPOT = (e2e - TTFT) / (output tokens - 1) and NTPOT = e2e /"
        " output tokens, output tokens counted by re-tokenizing the answer on the client with the "
        "run's tokenizer; ITL = every gap between streamed tokens; req/s and out tok/s over the "
        "stage.",
        "",
        *theirs_table(runs),
        "",
        "## Ours, over the same requests (loadtest.bench's definitions)",
        "",
        "TTFT = first streamed chunk; ITL = (e2e - TTFT) / (completion tokens the server counted "
        "- 1); prefix hit = cached / prompt tokens from the server's `usage`; computed from "
        "inference-perf's per-request records (send time, chunk times, usage).",
        "",
        *ours_table(runs),
        "",
    ]
    failed = [r for r in runs if r.error]
    if failed:
        lines += ["Not run or not finished:", ""]
        lines += [f"- {r.router}: {r.error}" for r in failed]
        lines.append("")
    return "\n".join(lines) + "\n"


def write(folder: Path, stem: str, header: Header, runs: Sequence[RouterRun]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "record": header.record.to_json(),
        "header": {
            f.name: getattr(header, f.name)
            for f in dataclasses.fields(header)
            if f.name != "record"
        },
        "routers": [
            {
                "router": r.router,
                "error": r.error,
                "stages": [
                    {"inference_perf": s.theirs, "ours": dataclasses.asdict(s.ours)}
                    for s in r.stages
                ],
                "inference_perf_stage_reports": list(r.raw),
            }
            for r in runs
        ],
    }
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    path = folder / f"{stem}.md"
    path.write_text(render_markdown(header, runs))
    return path
