"""`python -m loadtest.matrix`: ours and the peers on a small matrix of clusters and workloads.

For each cell of `cells.CELLS` (or `--cells`): measure its capacity once (the benchmark's
closed loop through Envoy least-request, or `--capacity`), then for each seed of `--seeds` run
every router at the cell's load (0.9x capacity) with `loadtest.bench`'s `Bench`, a fresh
simulator and router per point, and write the cell's report (`<out>/<cell>-s<seed>.md|.json`).
After each cell the summary (`<out>/summary.md|.json`, summary.py) is rewritten, so an
interrupted run keeps what it measured. `<out>` is by default the run's own folder,
`loadtest/results/<YYYY-MM-DD>-<HHMM>-matrix[-<tag>]/` (loadtest.record), and the index of runs
there is regenerated after each write (loadtest.results). The whole run has a wall-clock
budget; cells or points past it are listed as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import signal
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from loadtest.bench import __main__ as bench
from loadtest.bench.routers import Children
from loadtest.matrix import summary
from loadtest.matrix.cells import CELLS, Cell, select
from loadtest.record import Record, command_text, router_profile_text, run_folder
from loadtest.results.index import refresh_if_inside

ROUTERS = (
    "epp:gpu-aware,envoy:LEAST_REQUEST,vllm-router:cache_aware,vllm-router:power_of_two,"
    "sglang-router:cache_aware"
)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.matrix", description=__doc__)
    p.add_argument("--cells", default="all", help="comma-separated cell names (--list)")
    p.add_argument(
        "--seeds",
        default="1",
        help="comma-separated; each seed is one repeat of every cell (a seed may repeat: "
        "1,1,1 measures pure run-to-run noise)",
    )
    p.add_argument("--routers", default=ROUTERS, help="comma-separated KIND:OPTION")
    p.add_argument(
        "--duration", type=float, help="seconds of arrivals per point (default: each cell's)"
    )
    p.add_argument("--drain", type=float, default=20.0, help="max wait for stragglers")
    p.add_argument(
        "--capacity",
        default="",
        help="req/s for every cell, or CELL=RATE,...: skip those capacity measurements",
    )
    p.add_argument("--capacity-seconds", type=float, default=20.0)
    p.add_argument("--budget-minutes", type=float, default=45.0, help="wall-clock bound")
    p.add_argument(
        "--tie",
        type=summary.parse_ties,
        default=summary.TIES,
        metavar="METRIC=BAND,...",
        help="noise bands of ours / best peer within which a mark is a tie; default "
        + ",".join(f"{m}={b:g}" for m, b in summary.TIES.items()),
    )
    p.add_argument("--epp-args", default="", help="extra `epp serve` flags")
    p.add_argument(
        "--samples",
        action="store_true",
        help="also write every request's sample beside each cell's report (JSON lines)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="the run's folder (default loadtest/results/<YYYY-MM-DD>-<HHMM>-matrix[-<tag>])",
    )
    p.add_argument("--tag", default="", help="suffix of the default run folder's name")
    p.add_argument("--list", action="store_true", help="print the cells and exit")
    p.add_argument(
        "--summarize", type=Path, metavar="JSON", help="render a summary JSON again and exit"
    )
    return p


def capacities(text: str, cells: list[Cell]) -> dict[str, float]:
    """`--capacity`: one rate for every cell, or CELL=RATE pairs."""
    if not text:
        return {}
    if "=" not in text:
        return {c.name: float(text) for c in cells}
    out = {}
    for item in text.split(","):
        name, _, rate = item.partition("=")
        if name.strip() not in {c.name for c in cells}:
            raise ValueError(f"--capacity names {name!r}, not a selected cell")
        out[name.strip()] = float(rate)
    return out


def bench_argv(cell: Cell, a: argparse.Namespace, seed: int) -> list[str]:
    """The `loadtest.bench` flags of one cell and seed under this run's settings."""
    duration = ["--duration", f"{a.duration:g}"] if a.duration else []  # else the cell's
    return [
        *cell.bench_flags(), *duration, "--routers", a.routers, "--drain", f"{a.drain:g}",
        "--capacity-seconds", f"{a.capacity_seconds:g}", "--capacity-ramp",
        "--seed", str(seed), "--out", str(a.out), "--epp-args", a.epp_args,
        *(["--samples"] if a.samples else []),
    ]  # fmt: skip


def cell_stem(cell: Cell, seed: int, repeat: int, seeds: list[int]) -> str:
    """What one cell and seed's files are named by: `<cell>-s<seed>`, and `-r<repeat>` where
    the seed repeats."""
    again = f"-r{repeat}" if seeds.count(seed) > 1 else ""
    return f"{cell.name}-s{seed}{again}"


class Matrix:
    def __init__(self, args: argparse.Namespace, children: Children) -> None:
        self.a = args
        self.children = children
        self.cells = select(args.cells)
        self.seeds = [int(s) for s in args.seeds.split(",")]
        self.given = capacities(args.capacity, self.cells)
        self.deadline = time.monotonic() + args.budget_minutes * 60
        self.started = datetime.now(UTC)
        if args.out is None:
            args.out = run_folder("matrix", args.tag, self.started)
        self.runs: list[summary.Run] = []
        self.measured: dict[str, float] = {}
        self.notes: list[str] = []  # what did not run, and why
        epp_args = shlex.split(args.epp_args)
        routers = args.routers.split(",")
        self.record = Record.now(
            "matrix",
            command_text(".venv/bin/python -m loadtest.matrix", sys.argv[1:]),
            [(r, router_profile_text(r, epp_args)) for r in routers],
            ", ".join(c.name for c in self.cells),
            self.started,
        )

    def _bench(self, cell: Cell, seed: int) -> bench.Bench:
        argv = bench_argv(cell, self.a, seed)
        b = bench.Bench(bench.make_parser().parse_args(argv), self.children)
        b.deadline = self.deadline
        b.tool = "matrix"
        b.started = self.started
        b.command = command_text(".venv/bin/python -m loadtest.bench", argv)
        return b

    async def run_cell(self, cell: Cell) -> None:
        first = self._bench(cell, self.seeds[0])
        load_before = bench.load_text()
        if cell.name in self.given:
            capacity, note = self.given[cell.name], "given with --capacity"
        else:
            print(f"[{cell.name}] measuring capacity …", flush=True)
            capacity, note = await first.capacity(cell.mix), first.capacity_note()
        self.measured[cell.name] = capacity
        print(f"[{cell.name}] capacity {capacity:.2f} req/s; {cell.describe()}", flush=True)
        for repeat, seed in enumerate(self.seeds):
            b = self._bench(cell, seed)
            label = f"{cell.name} s{seed}"
            stem = b.samples_stem = cell_stem(cell, seed, repeat, self.seeds)
            points, unavailable = await b.run_points(cell.mix, capacity, [cell.load], label)
            self.runs += [
                summary.Run.of(cell.name, p.router, repeat, seed, p.stats) for p in points
            ]
            self.notes += [f"{cell.name} (seed {seed}): {r}: {why}" for r, why in unavailable]
            text = f"Matrix cell **{cell.name}** ({cell.varies}): {cell.describe()}."
            path = b.write(cell.mix, capacity, note, load_before, points, unavailable, stem,
                           plot=False, remark=text)  # fmt: skip
            print(f"wrote {path}", flush=True)

    async def run(self) -> Path:
        path = self.write()
        for cell in self.cells:
            if time.monotonic() > self.deadline:
                self.notes.append(f"{cell.name}: skipped, time budget spent")
                continue
            try:
                await self.run_cell(cell)
            except (RuntimeError, TimeoutError, OSError) as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                self.notes.append(f"{cell.name}: failed: {first}")
                print(f"[{cell.name}] FAILED {first}", flush=True)
            finally:
                await self.children.stop_all()
            path = self.write()
        return path

    def header(self) -> list[str]:
        minutes = (datetime.now(UTC) - self.started).total_seconds() / 60
        caps = ", ".join(f"{n} {r:.2f}" for n, r in self.measured.items())
        again = "-r<repeat>" if len(set(self.seeds)) < len(self.seeds) else ""
        durations = (
            f"{self.a.duration:g}"
            if self.a.duration
            else "/".join(f"{d:g}" for d in sorted({c.duration for c in self.cells}))
        )
        return [
            f"# Benchmark matrix, {self.started:%Y-%m-%d %H:%M} UTC",
            "",
            *self.record.markdown(),
            f"- took {minutes:.0f} minutes",
            f"- seeds: {self.a.seeds}; {durations} s of Poisson arrivals per point at each "
            "cell's load (0.9x its capacity), then at most "
            f"{self.a.drain:g} s for stragglers; a fresh simulator and router per point",
            f"- capacity (req/s): {caps or '-'}",
            "- values are seconds (means over repeats); per-cell reports: "
            f"`<cell>-s<seed>{again}.md` beside this file",
            *(["", "Not run:", "", *(f"- {n}" for n in self.notes)] if self.notes else []),
        ]

    def write(self) -> Path:
        a = self.a
        a.out.mkdir(parents=True, exist_ok=True)
        routers = a.routers.split(",")
        cells = [(c.name, f"{c.varies}; {c.describe()}") for c in self.cells]
        data = {
            "record": self.record.to_json(), "header": self.header(), "cells": cells,
            "routers": routers, "ties": a.tie,
            "capacity": self.measured,
            "runs": [dataclasses.asdict(r) for r in self.runs],
        }  # fmt: skip
        out: Path = a.out
        (out / "summary.json").write_text(json.dumps(data, indent=1))
        text = summary.render(self.runs, cells, routers, a.tie, self.header())
        path = out / "summary.md"
        path.write_text(text)
        refresh_if_inside(out)
        return path


def rerender(path: Path, ties: Mapping[str, float]) -> str:
    """A written summary JSON as markdown again, with these tie bands."""
    data = json.loads(path.read_text())
    runs = [summary.Run(**r) for r in data["runs"]]
    cells = [(name, what) for name, what in data["cells"]]
    return summary.render(runs, cells, data["routers"], ties, data["header"])


async def amain(args: argparse.Namespace, children: Children) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    matrix = Matrix(args, children)
    try:
        path = await matrix.run()
    except asyncio.CancelledError:
        print("interrupted: stopping every child process", file=sys.stderr, flush=True)
        return 130
    finally:
        await children.stop_all()
        matrix.write()
    print(f"wrote {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.summarize:
        print(rerender(args.summarize, args.tie), end="")
        return 0
    if args.list:
        for c in CELLS:
            print(f"{c.name:24s} {c.describe()}\n{'':24s} {c.varies}")
        return 0
    if args.out is not None and args.tag:
        make_parser().error("--tag names the default run folder; with --out, name it yourself")
    select(args.cells)
    return bench.run_with_children("epp-matrix-", amain, args)


if __name__ == "__main__":
    sys.exit(main())
