"""`python -m loadtest.perf` (`make inference-perf`): inference-perf against ours and the peers.

Makes (once) inference-perf's own Python >= 3.12 environment with the pinned release and a
locally built tokenizer (environment.py), then for each router of `--routers`: a fresh
simulated cluster and the router in front of it (loadtest.bench's stacks; `epp:PROFILE` is
Envoy + EPP as `epp up` runs them), inference-perf's run of llm-d's guide workload shape scaled
to the simulator (guide.py: shared-prefix groups, a Poisson ladder of `--rates`), and its
reports read back (metrics.py). Writes `<out>/shared-prefix.md|.json` with inference-perf's
own metrics and ours over the same requests; `<out>` is by default the run's folder
`loadtest/results/<YYYY-MM-DD>-<HHMM>-inference-perf[-<tag>]/`, and the index of runs is
regenerated. Every child process is stopped on the way out; inference-perf has a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import signal
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import yaml

from loadtest.bench import __main__ as bench
from loadtest.bench.routers import Children, RouterSpec
from loadtest.perf import environment, guide, metrics, report
from loadtest.record import Record, command_text, router_profile_text, run_folder
from loadtest.results.index import refresh_if_inside

ROUTERS = "epp:gpu-aware,sglang-router:cache_aware"
MODEL = "bench"  # the InferenceModel of the bench's manifests; the peers take any name
STEM = "shared-prefix"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.perf", description=__doc__)
    p.add_argument("--routers", default=ROUTERS, help="comma-separated KIND:OPTION (bench's)")
    p.add_argument(
        "--rates",
        default=",".join(f"{r:g}" for r in guide.SCALED_RATES),
        help="the Poisson ladder, requests/s per stage",
    )
    p.add_argument("--stage-seconds", type=int, default=20, help="seconds of each stage")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between stages")
    s = guide.SCALED
    p.add_argument("--groups", type=int, default=s.groups, help="shared prefixes")
    p.add_argument("--prompts-per-group", type=int, default=s.prompts_per_group)
    p.add_argument("--system-tokens", type=int, default=s.system_tokens)
    p.add_argument("--question-tokens", type=int, default=s.question_tokens)
    p.add_argument("--output-tokens", type=int, default=s.output_tokens)
    p.add_argument("--pods", type=int, default=4, help="simulated pods (bench's cluster)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epp-args", default="", help="extra `epp serve` flags")
    p.add_argument("--venv", type=Path, default=environment.VENV, help="inference-perf's venv")
    p.add_argument("--python", help="a Python >= 3.12 for the venv (default: found)")
    p.add_argument(
        "--setup-only", action="store_true", help="make the venv and the tokenizer, then exit"
    )
    p.add_argument("--budget-minutes", type=float, default=20.0, help="wall-clock bound")
    p.add_argument(
        "--out",
        type=Path,
        help="the run's folder (default loadtest/results/<YYYY-MM-DD>-<HHMM>-inference-perf"
        "[-<tag>])",
    )
    p.add_argument("--tag", default="", help="suffix of the default run folder's name")
    return p


def shape_of(a: argparse.Namespace) -> guide.Shape:
    return guide.Shape(
        a.groups, a.prompts_per_group, a.system_tokens, a.question_tokens, a.output_tokens
    )


def rates_of(a: argparse.Namespace) -> list[float]:
    rates = [float(x) for x in a.rates.split(",") if x.strip()]
    if not rates or min(rates) <= 0:
        raise ValueError(f"--rates {a.rates!r}: want positive requests/s, comma-separated")
    return rates


class PerfRun:
    def __init__(self, args: argparse.Namespace, children: Children, exe: Path, tok: Path):
        self.a = args
        self.children = children
        self.exe = exe
        self.tokenizer = tok
        self.started = datetime.now(UTC)
        if args.out is None:
            args.out = run_folder("inference-perf", args.tag, self.started)
        argv = ["--workloads", "shared-prefix", "--routers", args.routers, "--pods",
                str(args.pods), "--seed", str(args.seed), "--out", str(args.out),
                "--epp-args", args.epp_args]  # fmt: skip
        self.bench = bench.Bench(bench.make_parser().parse_args(argv), children)
        self.command = command_text(".venv/bin/python -m loadtest.perf", sys.argv[1:])
        self.rates = rates_of(args)
        self.deadline_s = args.budget_minutes * 60

    def stage_budget(self) -> float:
        """Seconds inference-perf may take: its stages and pauses, plus start-up and drain."""
        a = self.a
        stages: float = len(self.rates) * (a.stage_seconds + a.interval)
        return stages + 180.0

    async def one(self, spec: RouterSpec) -> report.RouterRun:
        why = spec.unavailable()
        if why:
            return report.RouterRun(spec.name, error=why)
        out = self.children.run_dir / f"inference-perf-{spec.name.replace(':', '-')}"
        out.mkdir(parents=True, exist_ok=True)
        try:
            base = await self.bench.start_stack(spec)
            cfg = guide.config(base, MODEL, self.tokenizer, out, shape_of(self.a), self.rates,
                               self.a.stage_seconds, self.a.interval, self.a.seed)  # fmt: skip
            path = out / "config.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            argv = [str(self.exe), "--config_file", str(path)]
            child = await self.children.start("inference-perf", argv, environment.OFFLINE)
            assert child.proc is not None
            try:
                code = await asyncio.wait_for(child.proc.wait(), self.stage_budget())
            except TimeoutError:
                return report.RouterRun(spec.name, error="inference-perf passed its deadline")
            if code != 0:
                tail = child.log_tail(8).strip().replace("\n", " / ")
                return report.RouterRun(spec.name, error=f"inference-perf exit {code}: {tail}")
        except (RuntimeError, OSError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            return report.RouterRun(spec.name, error=f"failed to start or run: {first}")
        finally:
            await self.children.stop_all()
        return read_run(spec.name, out)

    def header(self) -> report.Header:
        a = self.a
        profiles = [
            (r, router_profile_text(r, shlex.split(a.epp_args))) for r in a.routers.split(",")
        ]
        record = Record.now("inference-perf", self.command, profiles, STEM, self.started)
        installed = environment.installed_version(a.venv) or "?"
        return report.Header(
            record,
            bench.cluster_text(self.bench.a),
            shape_of(a).text(),
            f"{guide.GUIDE.text()}, Poisson {'/'.join(f'{r:g}' for r in guide.GUIDE_RATES)} "
            "requests/s",
            f"{'/'.join(f'{r:g}' for r in self.rates)} requests/s, {a.stage_seconds} s each, "
            f"{a.interval:g} s apart",
            f"{installed} (pinned {environment.PINNED}) in its own Python >= 3.12 virtual "
            "environment, tokenizer: byte-level BPE of 8,000 tokens trained locally on the "
            "text its wheel ships (nothing from a model hub)",
        )

    async def run(self) -> Path:
        runs: list[report.RouterRun] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        for name in self.a.routers.split(","):
            spec = RouterSpec.parse(name)
            if loop.time() + self.stage_budget() > deadline:
                runs.append(report.RouterRun(spec.name, error="skipped: time budget spent"))
                continue
            run = await self.one(spec)
            print(f"[inference-perf] {spec.name}: {run.error or summary_line(run)}", flush=True)
            runs.append(run)
        path = report.write(self.a.out, STEM, self.header(), runs)
        refresh_if_inside(self.a.out)
        return path


def summary_line(run: report.RouterRun) -> str:
    return "; ".join(
        f"{s.theirs['requested_rate']:g} req/s: ok {s.theirs['ok']:.0f}, TTFT p90 "
        f"{s.theirs['time_to_first_token.p90'] * 1000:.0f} ms, e2e p90 "
        f"{s.theirs['request_latency.p90']:.2f} s"
        for s in run.stages
    )


def read_run(router: str, folder: Path) -> report.RouterRun:
    """A router's inference-perf reports in `folder`, with ours computed from its records."""
    raw = metrics.read_stages(folder)
    if not raw:
        return report.RouterRun(
            router, error=f"inference-perf wrote no stage report in {folder.name}"
        )
    theirs = [metrics.their_stage(s) for s in raw]
    counts = [int(t["ok"]) + (0 if math.isnan(t["failed"]) else int(t["failed"])) for t in theirs]
    records_path = folder / "per_request_lifecycle_metrics.json"
    records = json.loads(records_path.read_text()) if records_path.exists() else []
    by_stage = metrics.split_by_stage(records, counts)
    stages = tuple(
        report.Stage(t, metrics.our_stage(rs)) for t, rs in zip(theirs, by_stage, strict=True)
    )
    return replace(report.RouterRun(router, stages), raw=tuple(raw))


async def amain(args: argparse.Namespace, children: Children) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        exe = environment.ensure_venv(args.venv, args.python)
        tok = environment.ensure_tokenizer(args.venv)
    except environment.Unavailable as e:
        print(f"inference-perf cannot run here: {e}", file=sys.stderr, flush=True)
        return 2
    if args.setup_only:
        print(f"inference-perf: {exe}\ntokenizer: {tok}", flush=True)
        return 0
    try:
        path = await PerfRun(args, children, exe, tok).run()
    except asyncio.CancelledError:
        print("interrupted: stopping every child process", file=sys.stderr, flush=True)
        return 130
    finally:
        await children.stop_all()
    print(f"wrote {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.out is not None and args.tag:
        parser.error("--tag names the default run folder; with --out, name the folder itself")
    try:
        rates_of(args)
    except ValueError as e:
        parser.error(str(e))
    return bench.run_with_children("epp-perf-", amain, args)


if __name__ == "__main__":
    sys.exit(main())
