"""`python -m loadtest.bench.roomorder`: the waiting room's order, replayed on a cell's draws.

On the ShareGPT-like cell with answer lengths announced, seed 4, our p90 TTFT read ~1.5x
vllm-router `cache_aware`'s while p90 e2e was ahead: in one burst of arrivals every batch was
full, our waiting room served the burst first come, first served, and about as many requests
as make up the top tenth waited there alike. This tool asks which order of the room would have
served the same requests better, with nothing else changed.

It replays a matrix cell's exact requests (its recorded command, seed and rate, as
`loadtest.bench.lengthbound` does) through the simulator's own engines on a virtual clock,
under three dispatch policies:

- `least-request`: each arrival to the pod with the fewest in flight, queued inside that pod
  behind a full batch (the peers' way; it reads within a few ms of vllm-router's measured
  first tokens on that cell);
- `room-arrival`: one waiting room, first come, first served; a free batch slot on a fastest
  pod goes to the first waiter, one on a slower pod to the first waiter whose answer is at most
  `--slow-max` tokens (a longer one holds out for a fast pod, as our size-aware room does);
- `room-due`: the same, but the room is ordered by arrival plus `--shorter-first` times the
  answer's time at the fastest pace (`epp.admission.controller.SHORTER_FIRST`): a shorter
  answer overtakes a longer one that came a little earlier.

Per draw (the cell's own seed, then `--draws` more) it prints each policy's p90 and p99 TTFT and
p90 e2e, and over all draws the median and worst ratio of each to least-request's. Times are
the engines' own (no network, no event loop); the ratios are the point.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from epp.admission.controller import SHORTER_FIRST
from epp.sim.spec import SimPodSpec
from loadtest.bench.coldfloor import cell_args
from loadtest.bench.lengthbound import (
    Pod,
    Policy,
    Request,
    Result,
    cell_runs,
    least_request,
    pods_of,
    publish,
    result,
    simulate,
    trace,
)
from loadtest.record import describe_commit

SLOW_MAX = 250  # answer tokens up to which a waiter takes a slow pod's free slot
Key = Callable[[Request], float]


def room(key: Key, slow_max: int) -> Policy:
    """One waiting room ordered by `key`: a fastest pod's free slot to the first waiter, a
    slower pod's to the first whose answer is at most `slow_max` tokens."""

    def policy(now: float, queue: deque[Request], pods: list[Pod]) -> Iterator[tuple[Request, Pod]]:
        fastest = max(p.spec.speed for p in pods)
        while queue:
            free = [p for p in pods if p.free]
            if not free:
                return
            order = sorted(queue, key=key)
            fast = [p for p in free if p.spec.speed >= fastest]
            if fast:
                r, pod = order[0], min(fast, key=lambda p: (p.in_flight, p.index))
            else:
                takers = [r for r in order if r.output_tokens <= slow_max]
                if not takers:
                    return
                r, pod = takers[0], max(free, key=lambda p: (p.spec.speed, -p.in_flight))
            queue.remove(r)
            yield r, pod

    return policy


def alone_pace(spec: SimPodSpec, tokens: int = 200) -> float:
    """Seconds per output token of one answer alone on a pod of `spec` (its engine's steps)."""
    (done,) = simulate([spec], [Request(0.0, 100, tokens)], least_request)
    return (done.end - done.first) / (tokens - 1)


def policies(specs: Sequence[SimPodSpec], shorter_first: float, slow_max: int) -> dict[str, Policy]:
    pace = min(alone_pace(s) for s in specs)

    def due(r: Request) -> float:
        return r.at + shorter_first * r.output_tokens * pace

    return {
        "least-request": least_request,
        "room-arrival": room(lambda r: r.at, slow_max),
        "room-due": room(due, slow_max),
    }


@dataclass(frozen=True, slots=True)
class DrawResults:
    seed: int
    results: list[Result]


Cell = tuple[str, str, list[DrawResults]]  # (cell, the commit of its run, its draws)


def replay_draws(path: Path, draws: int, shorter_first: float, slow_max: int) -> Cell:
    data = json.loads(path.read_text())
    a = cell_args(data["record"]["command"])
    rate = data["points"][0]["rate"]
    specs = pods_of(a)
    out = []
    for seed in [a.seed, *(1000 + 7 * n + a.seed for n in range(draws))]:
        requests = trace(a, seed, rate, a.duration)
        results = [
            result(name, simulate(specs, requests, policy), specs)
            for name, policy in policies(specs, shorter_first, slow_max).items()
        ]
        out.append(DrawResults(seed, results))
    return path.stem.rsplit("-s", 1)[0], data["record"]["commit"], out


def render(cells: Sequence[Cell], shorter_first: float, slow_max: int, tool: str) -> str:
    lines = [
        "# The waiting room's order, replayed (`loadtest.bench.roomorder`)",
        "",
        f"- tool commit: `{tool}`; shorter-first {shorter_first:g}, slow-max {slow_max} tokens",
        "",
    ]
    for cell, commit, draws in cells:
        lines += [
            f"## {cell}",
            "",
            f"- commit: `{commit}` (the cell's run; its requests and rate)",
            "",
            "| draw seed | policy | p90 TTFT s | p99 TTFT s | p90 e2e s |",
            "|---|---|---|---|---|",
        ]
        for d in draws:
            for r in d.results:
                lines.append(
                    f"| {d.seed} | {r.policy} | {r.ttft_p90:.3f} | {r.ttft_p99:.3f} | "
                    f"{r.e2e_p90:.2f} |"
                )
        lines += [
            "",
            f"Over {len(draws)} draws, / least-request's (median, worst):",
            "",
            "| policy | p90 TTFT | p99 TTFT | p90 e2e |",
            "|---|---|---|---|",
        ]
        names = [r.policy for r in draws[0].results]
        for i, name in enumerate(names[1:], 1):
            cols = []
            for field in ("ttft_p90", "ttft_p99", "e2e_p90"):
                ratios = [
                    getattr(d.results[i], field) / getattr(d.results[0], field) for d in draws
                ]
                cols.append(f"{statistics.median(ratios):.2f}x, {max(ratios):.2f}x")
            lines.append(f"| {name} | " + " | ".join(cols) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.roomorder", description=__doc__)
    p.add_argument("--matrix", type=Path, required=True, help="a matrix run folder")
    p.add_argument("--cells", default="sharegpt", help="comma-separated cell names")
    p.add_argument("--draws", type=int, default=11, help="draws beyond the cell's own seed")
    p.add_argument("--shorter-first", type=float, default=SHORTER_FIRST)
    p.add_argument("--slow-max", type=int, default=SLOW_MAX)
    p.add_argument(
        "--out", type=Path, help="also write roomorder.md into this folder (the matrix run's)"
    )
    a = p.parse_args(argv)
    paths = cell_runs(a.matrix, a.cells)
    if not paths:
        return 2
    cells = [replay_draws(path, a.draws, a.shorter_first, a.slow_max) for path in paths]
    text = render(cells, a.shorter_first, a.slow_max, describe_commit())
    publish(text, a.out, "roomorder.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
