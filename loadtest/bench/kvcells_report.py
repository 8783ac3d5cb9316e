"""The report of `loadtest.bench.kvcells`: one table per cell and issue 18's goals, checked.

Goals: in cells a-c the precise router's p90 TTFT is at most 0.6x the approximate router's and
its prefix-cache hit rate at least 15 points higher; in d its p90 TTFT is within 5 % of the
approximate router's (read as: at most 5 % slower). Writes `kv-cells.md` and `kv-cells.json`
into the run folder, each starting with `loadtest.record`'s record (commit, command, machine,
date, the scheduling each router ran with).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.bench.stats import RunStats
from loadtest.record import Record, epp_profile_text, router_profile_text
from loadtest.results.index import refresh_if_inside

APPROXIMATE = "prefix-cache-aware"  # the built-in profile both EPP routers run under

TITLES = {
    "a": "(a) evictions: shared prefixes, working set about twice the pods' KV memory",
    "b": "(b) the same, one pod's engine restarted halfway",
    "c": "(c) the same, two EPP replicas behind one Envoy",
    "d": "(d) the plain shared-prefix workload",
    "e": "(e) the plain workload, plus foreign clients that reach the pods directly",
}


@dataclass(frozen=True, slots=True)
class CellPoint:
    cell: str
    router: str
    rate: float
    stats: RunStats


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1000:.0f}"


def table(points: Sequence[CellPoint]) -> list[str]:
    lines = [
        "| router | req/s | ok / sent | errors | TTFT p50 / p90 / p99 ms | e2e p90 s "
        "| prefix hit | pods per group | per pod |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        s = p.stats
        pods = "-" if math.isnan(s.group_pods) else f"{s.group_pods:.1f}"
        lines.append(
            f"| {p.router} | {p.rate:.2f} | {s.ok} / {s.sent} | {s.errors_text()} "
            f"| {_ms(s.ttft.p50)} / {_ms(s.ttft.p90)} / {_ms(s.ttft.p99)} | {s.e2e.p90:.2f} "
            f"| {s.hit_rate:.0%} | {pods} | {s.pods_text()} |"
        )
    return lines


def goal(cell: str, points: Sequence[CellPoint]) -> str:
    by = {p.router: p.stats for p in points}
    approx, precise = by.get("approximate"), by.get("precise")
    if approx is None or precise is None:
        return "goal: not checked (both EPP routers are needed)"
    ratio = precise.ttft.p90 / approx.ttft.p90 if approx.ttft.p90 > 0 else math.nan
    points_up = (precise.hit_rate - approx.hit_rate) * 100
    if cell == "d":
        met = ratio <= 1.05  # within 5 %: no more than 5 % slower
        return (
            f"goal (p90 TTFT within 5 % of approximate, i.e. at most 1.05x): "
            f"precise/approximate {ratio:.2f}, "
            f"hit {points_up:+.0f} points: **{'met' if met else 'not met'}**"
        )
    if cell == "e":
        return f"precise/approximate p90 TTFT {ratio:.2f}, hit {points_up:+.0f} points (no goal)"
    met = ratio <= 0.6 and points_up >= 15
    line = (
        f"goal (p90 TTFT <= 0.6x approximate, hit >= +15 points): precise/approximate "
        f"{ratio:.2f}, hit {points_up:+.0f} points: **{'met' if met else 'not met'}**"
    )
    shared = by.get("approximate-peers")
    if shared is not None and shared.ttft.p90 > 0:
        line += (
            f"; against approximate-peers {precise.ttft.p90 / shared.ttft.p90:.2f}, hit "
            f"{(precise.hit_rate - shared.hit_rate) * 100:+.0f} points"
        )
    both = by.get("precise-peers")
    if both is not None and approx.ttft.p90 > 0:
        line += (
            f"; precise-peers/approximate {both.ttft.p90 / approx.ttft.p90:.2f}, hit "
            f"{(both.hit_rate - approx.hit_rate) * 100:+.0f} points"
        )
        if shared is not None and shared.ttft.p90 > 0:
            line += (
                f", against approximate-peers {both.ttft.p90 / shared.ttft.p90:.2f}, hit "
                f"{(both.hit_rate - shared.hit_rate) * 100:+.0f} points"
            )
    return line


def profiles(routers: Sequence[str], configs: dict[str, Path]) -> list[tuple[str, str]]:
    """(router, the scheduling it ran with), as `loadtest.record` words it."""
    out = []
    for router in routers:
        if router == "approximate":
            out.append((router, epp_profile_text(APPROXIMATE)))
        elif router == "gpu-aware":  # our default profile
            out.append((router, epp_profile_text(router)))
        elif router == "approximate-peers":  # cell c: the replicas share picks
            flags = ["--peers", "<the other replica>"]
            out.append((router, epp_profile_text(APPROXIMATE, flags)))
        elif router == "precise-peers" and "precise" in configs:
            flags = ["--scheduler-config", str(configs["precise"])]
            flags += ["--peers", "<the other replica>"]
            out.append((router, epp_profile_text(APPROXIMATE, flags)))
        elif router in configs:
            flags = ["--scheduler-config", str(configs[router])]
            out.append((router, epp_profile_text(APPROXIMATE, flags)))
        else:
            out.append((router, router_profile_text(router)))
    return out


def write(
    a: argparse.Namespace,
    record: Record,
    shapes: dict[str, Any],
    capacities: dict[str, float],
    points: Sequence[CellPoint],
    skipped: Sequence[str],
) -> Path:
    """`kv-cells.md` and `kv-cells.json` in the run folder `a.out`."""
    a.out.mkdir(parents=True, exist_ok=True)
    fleet = a.pods * a.num_gpu_blocks
    lines = [
        "# Precise vs approximate prefix routing (issue 18's cells)",
        "",
        *record.markdown(),
        f"- cluster: {a.pods} simulated H100 pods (`epp sim`, one process) at speed {a.speed}, "
        f"max_num_seqs 8, {a.num_gpu_blocks} KV blocks of 16 tokens each ({fleet:,} blocks in "
        f"all), vLLM KV events over ZMQ, prompts tokenized with epp/assets/tiny-tokenizer",
    ]
    for name, shape in shapes.items():
        blocks = shape.groups * round(shape.system_chars / 2.24 / 16)
        lines.append(
            f"- {name} shape: {shape.groups} system prompts of {shape.system_chars:,} characters "
            f"(~{shape.system_chars / 2.24:,.0f} tokens), ~{blocks:,} blocks in all "
            f"({blocks / fleet:.1f}x the pods' KV memory), then a new question of "
            f"{shape.question_chars} characters; capacity "
            f"{capacities.get(name, math.nan):.2f} req/s (closed loop through Envoy "
            f"least-request), rate {a.fraction}x capacity for {a.duration:.0f} s"
        )
    for cell in dict.fromkeys(p.cell for p in points):
        mine = [p for p in points if p.cell == cell]
        lines += ["", f"## {TITLES[cell]}", "", *table(mine), "", goal(cell, mine)]
    if skipped:
        lines += ["", "Not run: " + "; ".join(skipped)]
    path: Path = a.out / "kv-cells.md"
    path.write_text("\n".join(lines) + "\n")
    raw = [dict(cell=p.cell, router=p.router, rate=p.rate, stats=dataclasses.asdict(p.stats))
           for p in points]  # fmt: skip
    data = {"record": record.to_json(), "capacities": capacities, "points": raw}
    (a.out / "kv-cells.json").write_text(json.dumps(data, indent=1))
    refresh_if_inside(a.out)
    return path
