"""`python -m loadtest.bench`: ours and the peers, side by side, on one simulated cluster.

For each workload: measure the cluster's capacity (a saturating closed loop through Envoy's
least-request balancer), then for every router and every rate (fractions of that capacity)
start a fresh simulator process (`epp sim`, so caches start cold and equal) and the router,
send open-loop Poisson arrivals of streaming requests for a fixed time, and stop both.
Writes `<out>/<workload>.md|.json|.png` (report.py), `<out>` by default the run's own folder
`loadtest/results/<YYYY-MM-DD>-<HHMM>-bench[-<tag>]/` (loadtest.record), and then regenerates
the index of runs there (loadtest.results). Every child process is stopped on
the way out, also on Ctrl-C, SIGTERM or failure; the whole run has a wall-clock budget.
`loadtest.matrix` drives `Bench` cell by cell (`capacity`, `run_points`, `write`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import resource
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from epp.sim.profiles import get_profile
from loadtest.bench import client, report, stats
from loadtest.bench.routers import (
    Children,
    RouterSpec,
    run_labels,
    settle,
    sim_pods,
    start_router,
    start_sim,
)
from loadtest.record import (
    Record,
    command_text,
    describe_commit,
    router_profile_text,
    run_folder,
)
from loadtest.results.index import refresh_if_inside
from loadtest.workloads import (
    ANNOUNCED,
    LENGTHS,
    WORKLOADS,
    ChatRequest,
    MultiTurnShape,
    SharedPrefixShape,
    poisson_arrivals,
    workload,
)

DEFAULT_ROUTERS = (
    "epp:gpu-aware,epp:prefix-cache-aware,envoy:ROUND_ROBIN,envoy:LEAST_REQUEST,"
    "vllm-router:round_robin,vllm-router:power_of_two,vllm-router:cache_aware,"
    "sglang-router:cache_aware,sglang-router:power_of_two"
)
CAPACITY_ROUTER = "envoy:LEAST_REQUEST"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    p.add_argument(
        "--workloads",
        default="sharegpt,shared-prefix",
        help=f"comma-separated, of {', '.join(WORKLOADS)}",
    )
    p.add_argument("--routers", default=DEFAULT_ROUTERS, help="comma-separated KIND:OPTION")
    p.add_argument("--fractions", default="0.9,1.2", help="rates as fractions of capacity")
    p.add_argument("--capacity", type=float, help="req/s; skip the capacity measurement")
    p.add_argument("--capacity-seconds", type=float, default=24.0)
    p.add_argument(
        "--capacity-ramp",
        action="store_true",
        help="start the capacity loop's streams one by one over its first third (the warm-up "
        "it does not count), not all at once",
    )
    p.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per point")
    p.add_argument("--drain", type=float, default=20.0, help="max wait for stragglers")
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--budget-minutes", type=float, default=45.0, help="wall-clock bound")
    p.add_argument("--pods", type=int, default=4)
    p.add_argument("--first-ip", default="127.0.77.2", help="pods on consecutive loopback IPs")
    p.add_argument("--profile", default="H100")
    p.add_argument("--speed", type=float, default=0.25, help="speed of every pod but the last")
    p.add_argument("--slow-speed", type=float, default=0.125, help="speed of the last pod")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--num-gpu-blocks", type=int, default=600)
    p.add_argument(
        "--pod-option",
        action="append",
        default=[],
        metavar="INDEX:KEY=VALUE",
        help="per-pod simulator override (epp sim --pod-option), e.g. 3:profile=L4; repeatable",
    )
    p.add_argument(
        "--flush-interval",
        type=float,
        default=0.0,
        help="simulator: coalesce a stream's tokens into writes at most this often (seconds; "
        "first and last tokens are sent at once), to spare the CPU on large clusters",
    )
    p.add_argument("--prefix-groups", type=int, default=8, help="shared-prefix: system prompts")
    p.add_argument("--prefix-tokens", type=int, default=2000, help="shared-prefix: their length")
    p.add_argument(
        "--conversations", type=int, default=32, help="multi-turn: conversations in progress"
    )
    p.add_argument(
        "--sheddable-share",
        type=float,
        default=0.0,
        help="share of requests sent as a sheddable model (the rest critical); 0 = one model",
    )
    p.add_argument(
        "--declare-max-num-seqs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write --max-num-seqs into the pods' container args, as a deployment that sets it "
        "does (the EPP reads it as each server's batch size until it learns one)",
    )
    p.add_argument(
        "--send-only",
        choices=("critical", "sheddable"),
        help="with --sheddable-share: send only this class, at the same arrival times "
        "(what the other class costs it)",
    )
    p.add_argument(
        "--epp-args", default="", help='extra `epp serve` flags, e.g. "--sd-queue-depth 1"'
    )
    p.add_argument(
        "--lengths",
        choices=LENGTHS,
        default=ANNOUNCED,
        help="how answer lengths reach the server: announced in max_tokens, or as production "
        "clients send them, a fixed --length-cap or no max_tokens (the simulator ends each "
        "answer at a length told in a prompt marker no router reads)",
    )
    p.add_argument("--length-cap", type=int, default=1024, help="max_tokens with --lengths cap")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--out",
        type=Path,
        help="the run's folder (default loadtest/results/<YYYY-MM-DD>-<HHMM>-bench[-<tag>])",
    )
    p.add_argument("--tag", default="", help="suffix of the default run folder's name")
    p.add_argument(
        "--samples", action="store_true", help="also write every request's sample (JSON lines)"
    )
    return p


def sim_args(a: argparse.Namespace) -> list[str]:
    last = f"{a.pods - 1}:speed={a.slow_speed}"
    told = ["--answer-from-prompt"] if a.lengths != ANNOUNCED else []
    options = [x for option in a.pod_option for x in ("--pod-option", option)]
    flush = ["--flush-interval", str(a.flush_interval)] if a.flush_interval else []
    return [
        "--profile", a.profile, "--speed", str(a.speed), "--max-num-seqs", str(a.max_num_seqs),
        "--num-gpu-blocks", str(a.num_gpu_blocks), "--seed", str(a.seed),
        "--name-prefix", "pod", "--pod-option", last, *options, *flush, *told,
    ]  # fmt: skip


def hardware_varies(a: argparse.Namespace) -> bool:
    """Whether --pod-option changes a pod's speed or GPU beyond the slow last pod."""
    return any(o.rpartition(":")[2].split("=")[0] in ("speed", "profile") for o in a.pod_option)


def cluster_text(a: argparse.Namespace) -> str:
    options = f", per pod {' '.join(a.pod_option)}" if a.pod_option else ""
    flush = f", streams flushed every {a.flush_interval:g} s" if a.flush_interval else ""
    return (
        f"{a.pods} simulated {a.profile} pods (`epp sim`, one process), speed {a.speed} "
        f"(the last at {a.slow_speed}){options}, max_num_seqs {a.max_num_seqs} "
        f"({'declared' if a.declare_max_num_seqs else 'not declared'} in the pod specs), "
        f"{a.num_gpu_blocks} KV blocks of 16 tokens each{flush}; answer lengths {lengths_text(a)}"
    )


def requests_of(
    a: argparse.Namespace, name: str, seed: int, arrivals: list[float] | None = None
) -> Iterator[ChatRequest]:
    """Workload `name` shaped by the flags (prefix groups, conversations)."""
    prefix = SharedPrefixShape(groups=a.prefix_groups, system_tokens=a.prefix_tokens)
    turns = MultiTurnShape(live=a.conversations)
    return workload(name, seed, prefix, turns, arrivals)


def lengths_text(a: argparse.Namespace) -> str:
    if a.lengths == ANNOUNCED:
        return "announced in max_tokens"
    cap = f"max_tokens {a.length_cap}" if a.lengths == "cap" else "no max_tokens"
    return f"hidden from the routers ({cap})"


def load_text() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Bench:
    def __init__(self, args: argparse.Namespace, children: Children) -> None:
        self.a = args
        self.children = children
        self.pods = sim_pods(args.first_ip, args.pods)
        self.deadline = time.monotonic() + args.budget_minutes * 60
        self.started = datetime.now(UTC)
        describe_commit()  # taken (and kept) now: the commit the run starts from
        if args.out is None:
            args.out = run_folder("bench", args.tag, self.started)
        self.tool = "bench"  # the matrix drives a Bench per cell and says "matrix"
        # what `--samples` files are named by (default the workload's name; the matrix, whose
        # cells share a workload and a folder, names them by cell and seed)
        self.samples_stem = ""
        self.command = command_text(".venv/bin/python -m loadtest.bench", sys.argv[1:])

    def record(self, subject: str) -> Record:
        """The record of this run for its reports' headers."""
        a = self.a
        epp_args = shlex.split(a.epp_args)
        priorities = a.sheddable_share > 0
        routers = dict.fromkeys(a.routers.split(","))  # a router listed twice: one profile
        profiles = [(r, router_profile_text(r, epp_args, priorities)) for r in routers]
        return Record.now(self.tool, self.command, profiles, subject, self.started)

    async def _with_router(self, spec: RouterSpec) -> str:
        return await self.start_stack(spec) + "/v1/chat/completions"

    async def start_stack(self, spec: RouterSpec) -> str:
        """A fresh simulated cluster with `spec` in front of it; the base URL clients use
        (`loadtest.perf` points inference-perf at it)."""
        await start_sim(self.children, self.pods, sim_args(self.a))
        url = await start_router(
            self.children,
            spec,
            self.pods,
            self.a.sheddable_share > 0,
            shlex.split(self.a.epp_args),
            self.a.max_num_seqs if self.a.declare_max_num_seqs else 0,
        )
        await settle(1.0)
        return url

    async def capacity(self, name: str) -> float:
        a = self.a
        spec = RouterSpec.parse(CAPACITY_ROUTER)
        try:
            url = await self._with_router(spec)
            async with client.make_session(a.request_timeout) as session:
                workers = a.pods * a.max_num_seqs * 2
                requests = requests_of(a, name, a.seed + 1000)
                samples = await client.closed_loop(
                    session,
                    url,
                    requests,
                    "bench",
                    workers,
                    a.capacity_seconds,
                    a.lengths,
                    a.length_cap,
                    a.capacity_seconds / 3 if a.capacity_ramp else 0.0,
                )
        finally:
            await self.children.stop_all()
        return stats.completion_rate(samples, a.capacity_seconds / 3, a.capacity_seconds)

    async def point(
        self, spec: RouterSpec, name: str, rate: float, fraction: float, label: str = ""
    ) -> report.Point:
        """`spec` at `rate`; `label` (default its name) names the point, `NAME#2` a repeat."""
        a = self.a
        label = label or spec.name
        try:
            url = await self._with_router(spec)
            arrivals = poisson_arrivals(a.seed, rate, a.duration)
            labels = client.priorities(len(arrivals), a.sheddable_share, a.seed)
            requests = requests_of(a, name, a.seed, arrivals)
            if a.send_only:
                arrivals, labels, requests = client.only(a.send_only, arrivals, labels, requests)
            own = resource.getrusage(resource.RUSAGE_SELF)
            began = time.monotonic()
            async with client.make_session(a.request_timeout) as session:
                samples = await client.open_loop(
                    session,
                    url,
                    requests,
                    arrivals,
                    "bench",
                    a.drain,
                    labels,
                    a.lengths,
                    a.length_cap,
                )
            cpu = (*self.children.cpu_shares(), ("client", _cpu_share(own, began)))
            streams = await self.children.epp_requests()
            delays = await self.children.epp_pick_delays()
        finally:
            await self.children.stop_all()
        if a.samples:
            self.write_samples(self.samples_name(name, label, fraction), samples)
        by_priority = tuple(
            (p, stats.summarize([x for x in samples if x.priority == p]))
            for p in sorted({x.priority for x in samples} - {""})
        )
        summary = dataclasses.replace(
            stats.summarize(samples),
            e2e_floor=self.floor(samples),
            e2e_batched_floor=self.batched_floor(samples),
            e2e_in_order=self.in_order_reference(samples),
        )
        return report.Point(label, rate, fraction, summary, by_priority, cpu, streams, delays)

    def _references_hold(self) -> bool:
        """The floors and the in-order reference model the pods as `--profile` at `--speed`
        with the last at `--slow-speed`; per-pod GPUs or speeds break that."""
        return not hardware_varies(self.a)

    def _slow_pods(self) -> set[str]:
        return {f"pod-{self.a.pods - 1}"} if self.a.slow_speed != self.a.speed else set()

    def batched_floor(self, samples: list[client.Sample]) -> float:
        """p90 of each successful request's time on a full-speed pod at the pace measured there
        in this run (batched, so slower than alone), with no wait and its prefill alone."""
        slow = self._slow_pods()
        pace = stats.median_pace(samples, lambda pod: pod not in slow)
        if math.isnan(pace) or not self._references_hold():
            return math.nan
        gpu = get_profile(self.a.profile)
        times = [
            gpu.step_time(s.prompt_tokens, 0, 0) / self.a.speed + (s.completion_tokens - 1) * pace
            for s in samples
            if s.ok
        ]
        return stats.percentile(times, 90) if times else math.nan

    def in_order_reference(self, samples: list[client.Sample]) -> float:
        """p90 e2e of an ideal first-come-first-served dispatcher replaying this run: the
        successful requests in arrival order, each on the batch slot (pods x max_num_seqs)
        where it would finish first, with its prefill alone and its tokens at the pace measured
        in this run on that class of pod (full speed or slow). It knows every output length and
        loses no time between requests. Not a floor: a router that lets a short request take a
        slow slot before a long one can beat it. Under overload p90 e2e is mostly waiting for a
        slot, and this is what serving everyone in order at full throughput gives."""
        a, slow = self.a, self._slow_pods()
        fast_pace = stats.median_pace(samples, lambda pod: pod not in slow)
        slow_pace = stats.median_pace(samples, lambda pod: pod in slow) if slow else fast_pace
        if math.isnan(slow_pace):  # nothing measured there: the speed ratio
            slow_pace = fast_pace * a.speed / a.slow_speed
        if math.isnan(fast_pace) or not self._references_hold():
            return math.nan
        speeds = [a.speed] * (a.pods - 1) + [a.slow_speed]
        paces = [fast_pace] * (a.pods - 1) + [slow_pace]
        slots = [(pod, 0.0) for pod in range(a.pods) for _ in range(a.max_num_seqs)]
        gpu = get_profile(a.profile)
        e2e: list[float] = []
        for s in sorted((s for s in samples if s.ok), key=lambda s: s.start):
            prefill = gpu.step_time(s.prompt_tokens, 0, 0)
            ends = [
                max(s.start, free) + prefill / speeds[pod] + (s.completion_tokens - 1) * paces[pod]
                for pod, free in slots
            ]
            best = min(range(len(ends)), key=ends.__getitem__)
            slots[best] = (slots[best][0], ends[best])
            e2e.append(ends[best] - s.start)
        return stats.percentile(e2e, 90) if e2e else math.nan

    def floor(self, samples: list[client.Sample]) -> float:
        """p90 of each successful request's time alone on an idle full-speed pod."""
        if not self._references_hold():
            return math.nan
        gpu, speed = get_profile(self.a.profile), self.a.speed
        alone = [
            (gpu.step_time(s.prompt_tokens, 0, 0)
             + sum(gpu.step_time(0, 1, s.prompt_tokens + i) for i in range(1, s.completion_tokens)))
            / speed
            for s in samples
            if s.ok
        ]  # fmt: skip
        return stats.percentile(alone, 90) if alone else math.nan

    async def run_workload(self, name: str) -> Path:
        a = self.a
        load_before = load_text()
        if a.capacity:
            capacity, note = a.capacity, "given with --capacity"
        else:
            print(f"[{name}] measuring capacity through {CAPACITY_ROUTER} …", flush=True)
            capacity = await self.capacity(name)
            note = self.capacity_note()
        print(f"[{name}] capacity {capacity:.2f} req/s", flush=True)
        fractions = [float(f) for f in a.fractions.split(",")]
        points, unavailable = await self.run_points(name, capacity, fractions, name)
        return self.write(name, capacity, note, load_before, points, unavailable)

    def capacity_note(self) -> str:
        a = self.a
        ramp = ", started over the first third" if a.capacity_ramp else ""
        return (
            f"completions/s of a closed loop of {a.pods * a.max_num_seqs * 2} streams{ramp} "
            f"through {CAPACITY_ROUTER}, last {a.capacity_seconds * 2 / 3:.0f} of "
            f"{a.capacity_seconds:.0f} s"
        )

    async def run_points(
        self, name: str, capacity: float, fractions: list[float], label: str
    ) -> tuple[list[report.Point], list[tuple[str, str]]]:
        """Every router of --routers at every fraction of `capacity`: the points measured, and
        the routers (or points) that did not run, with why. `label` prefixes progress lines.
        A router listed twice runs twice, the second time as `NAME#2` (a control)."""
        points: list[report.Point] = []
        unavailable: list[tuple[str, str]] = []
        names = self.a.routers.split(",")
        for spec, run_label in zip(map(RouterSpec.parse, names), run_labels(names), strict=True):
            why = spec.unavailable()
            if why:
                unavailable.append((run_label, why))
                continue
            for fraction in fractions:
                if time.monotonic() > self.deadline:
                    unavailable.append((run_label, f"{fraction}x skipped: time budget spent"))
                    continue
                rate = capacity * fraction
                try:
                    point = await self.point(spec, name, rate, fraction, run_label)
                except (RuntimeError, TimeoutError, OSError) as e:
                    first = str(e).splitlines()[0] if str(e) else type(e).__name__
                    unavailable.append((run_label, f"failed to start or run: {first}"))
                    print(f"[{label}] {run_label}: FAILED {first}", flush=True)
                    break
                s = point.stats
                print(
                    f"[{label}] {run_label:28s} {rate:5.2f} req/s ok {s.ok}/{s.sent} "
                    f"ttft p90 {s.ttft.p90:.3f}s (warm {s.ttft_warm_p90:.3f}s, cold {s.cold}) "
                    f"e2e p90 {s.e2e.p90:.2f}s "
                    f"hit {s.hit_rate:.0%} pods {s.pods_text()} errors {s.errors_text()} "
                    f"cpu {point.cpu_text()}{point.streams_text(' streams per EPP ')}",
                    flush=True,
                )
                points.append(point)
        return points, unavailable

    def samples_name(self, workload: str, label: str, fraction: float) -> str:
        """The stem of one point's samples file: `samples_stem` (else the workload), the
        router's label and the load."""
        router = label.replace(":", "-").replace("#", "-run")
        return f"{self.samples_stem or workload}-{router}-{fraction:g}"

    def write_samples(self, stem: str, samples: list[client.Sample]) -> None:
        self.a.out.mkdir(parents=True, exist_ok=True)
        path = self.a.out / f"{stem}.samples.jsonl"
        first = json.dumps({"record": self.record(stem).to_json()}) + "\n"
        path.write_text(first + "".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in samples))

    def write(
        self,
        name: str,
        capacity: float,
        note: str,
        load_before: str,
        points: list[report.Point],
        unavailable: list[tuple[str, str]],
        stem: str = "",
        plot: bool = True,
        remark: str = "",
    ) -> Path:
        """The markdown report (and its JSON, and a PNG with `plot`) as `<out>/<stem>.*`;
        the stem defaults to the workload's name. The index of runs is regenerated when `<out>`
        is a run folder of loadtest/results."""
        a = self.a
        stem = stem or name
        a.out.mkdir(parents=True, exist_ok=True)
        record = self.record(name)
        header = report.Header(
            name, record, cluster_text(a), capacity, note, a.duration, load_before
        )
        plots: list[str] = []
        if points and plot:
            title = f"{name}: p90 latency vs rate"
            plots.append(str(report.plot(points, a.out / f"{stem}.png", title, record)))
        report.write_json(a.out / f"{stem}.json", header, points)
        path: Path = a.out / f"{stem}.md"
        path.write_text(report.render_markdown(header, points, unavailable, plots, remark))
        refresh_if_inside(a.out)
        return path


def _cpu_share(before: resource.struct_rusage, since: float) -> float:
    """This process's CPU seconds since `before`, per wall second since `since`."""
    now = resource.getrusage(resource.RUSAGE_SELF)
    used = now.ru_utime + now.ru_stime - before.ru_utime - before.ru_stime
    return used / max(time.monotonic() - since, 1e-9)


async def amain(args: argparse.Namespace, children: Children) -> int:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    bench = Bench(args, children)
    try:
        for name in args.workloads.split(","):
            if name not in WORKLOADS:
                raise SystemExit(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
            path = await bench.run_workload(name)
            print(f"wrote {path}", flush=True)
    except asyncio.CancelledError:
        print("interrupted: stopping every child process", file=sys.stderr, flush=True)
        return 130
    finally:
        await children.stop_all()
    return 0


def run_with_children(
    prefix: str,
    amain: Callable[[argparse.Namespace, Children], Coroutine[Any, Any, int]],
    args: argparse.Namespace,
) -> int:
    """Check the routers named, then run `amain` with an owner of every child process, whose
    logs go to a fresh run folder; every child is stopped on the way out, whatever happens."""
    for r in args.routers.split(","):
        RouterSpec.parse(r)
    run_dir = Path(tempfile.mkdtemp(prefix=prefix))
    children = Children(run_dir)
    print(f"logs in {run_dir}", flush=True)
    try:
        return asyncio.run(amain(args, children))
    finally:
        children.kill_now()


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.out is not None and args.tag:
        parser.error("--tag names the default run folder; with --out, name the folder itself")
    return run_with_children("epp-bench-", amain, args)


if __name__ == "__main__":
    sys.exit(main())
