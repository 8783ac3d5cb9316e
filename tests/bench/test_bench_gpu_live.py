"""The GPU layer on live processes: simulated pods and their DCGM exporter, a real Prometheus
scraping it every 0.5 s, Envoy + EPP (`epp serve --manifests`, GPU poller every 0.5 s), streaming
load at ~90 % of what the pool sustains (measured first, closed loop).

- throttling: at T one pod's GPU throttles to half speed (`/sim/config {"gpu": {"throttle":
  "thermal"}}`): its share of new requests before/after, when the EPP marked it degraded, when its
  measured pace first showed the slowdown, p90 e2e vs an all-healthy run, and the same run with
  the health signal off (`--no-gpu-health`);
- maintenance: a NoSchedule DeviceTaintRule on one pod's device written into the manifests
  folder, removed 10 s later: the last request that reached the pod after the write, its
  in-flight requests, failures, its share once the taint is gone;
- MIG: one whole A100 and three 1g.10gb slices of another (1/7 of its speed and KV cache each),
  DRA devices saying so: the split of the first requests and of the run against 7:1:1:1.
Run: flock /tmp/bench.lock .venv/bin/python -m pytest -m bench -s tests/bench/test_bench_gpu_live.py
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from epp.sim.cluster import SimCluster, SimPodSpec
from loadtest.bench.client import Sample, closed_loop, make_session
from loadtest.bench.stats import percentile
from loadtest.workloads import ShareGptShape, poisson_arrivals, sharegpt_like
from tests.bench.gpu_stack import MODEL, Gateway, GpuPod, load, write_manifests
from tests.ports import free_ports
from tests.prometheus import run_prometheus

pytestmark = pytest.mark.bench

SPEED = 0.5  # of an A100-80G: keeps the request rate within what two shared cores drive
MAX_SEQS = 8  # per pod: a batch limit makes "capacity" a clear number
SHAPE = ShareGptShape(prompt_median=150, prompt_sigma=0.8, prompt_max=1024,
                      output_median=40, output_sigma=0.6, output_max=200)  # fmt: skip
LOAD = 0.9
T = 12.0  # when the fault happens
SECONDS = 36.0
GPU_FLAGS = ("--gpu-interval", "0.5")
A100 = "NVIDIA A100-SXM4-80GB"


def four_gpus() -> list[GpuPod]:
    return [GpuPod(f"gpu-{i}", f"127.0.0.{i + 2}", f"gpu-{i}") for i in range(4)]


def specs(pods: Sequence[GpuPod], port: int, slices: bool = False) -> list[SimPodSpec]:
    out = []
    for i, p in enumerate(pods):
        part = 7 if slices and p.mig else 1
        out.append(
            SimPodSpec(p.host, port, p.name, profile="A100-80G", speed=SPEED / part,
                       num_gpu_blocks=7400 // part, max_num_seqs=MAX_SEQS, seed=i,
                       accept_any_model=True, flush_interval=0.05)
        )  # fmt: skip
    return out


def share(samples: Sequence[Sample], pod: str, start: float, end: float) -> float:
    window = [s for s in samples if start <= s.start < end]
    return sum(s.pod == pod for s in window) / len(window) if window else math.nan


def p90(samples: Sequence[Sample], start: float = 0.0) -> float:
    return percentile([s.e2e for s in samples if s.ok and s.start >= start], 90)


async def idle(cluster: SimCluster, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while any(p.engine.running or p.engine.waiting for p in cluster.pods):
        assert time.monotonic() < deadline, "the pods never drained"
        await asyncio.sleep(0.2)


async def post(session: aiohttp.ClientSession, address: str, body: object) -> None:
    async with session.post(f"http://{address}/sim/config", json=body) as r:
        assert r.status == 200, await r.text()


@dataclass
class Stack:
    cluster: SimCluster
    pods: list[GpuPod]
    port: int
    folder: Path
    prometheus: str
    run_dir: Path

    def gateway(self, name: str, *flags: str) -> Gateway:
        backends = [(p.host, self.port) for p in self.pods]
        return Gateway(self.run_dir / name, self.folder, backends, flags)


async def calibrate(stack: Stack, session: aiohttp.ClientSession) -> float:
    """Requests per second the pool completes when saturated (closed loop, 2x its batch slots)."""
    async with stack.gateway("calibrate") as gw:
        workers = 2 * MAX_SEQS * len(stack.pods)
        samples = await closed_loop(session, gw.url, sharegpt_like(1, SHAPE), MODEL, workers, 14.0)
    await idle(stack.cluster)
    done = [s for s in samples if s.ok and 4.0 <= s.end < 14.0]
    return len(done) / 10.0


@dataclass
class Throttled:
    name: str
    samples: list[Sample]
    degraded_after: float  # s from the fault to the EPP showing gpu_health degraded (inf: never)
    paced_after: float  # s from the fault to pod 0's measured pace first 1.5x what it was


async def throttle_run(
    stack: Stack, session: aiohttp.ClientSession, rate: float, name: str, fault: bool,
    signal: bool, seconds: float = SECONDS,
) -> Throttled:  # fmt: skip
    flags = ("--prometheus-url", stack.prometheus, *GPU_FLAGS)
    pod0 = stack.cluster.pod("gpu-0").address
    seen = {"degraded": math.inf, "paced": math.inf}
    async with stack.gateway(name, *flags, *(() if signal else ("--no-gpu-health",))) as gw:
        await asyncio.sleep(2.0)  # a first GPU poll and scrape

        async def watch() -> None:
            start = time.perf_counter()
            base = (await gw.endpoints(session))["gpu-0"]["pace_s_per_token"] or 0.0
            while time.perf_counter() - start < 15.0:
                row = (await gw.endpoints(session))["gpu-0"]
                now = time.perf_counter() - start
                if row["gpu_health"] == "degraded":
                    seen["degraded"] = min(seen["degraded"], now)
                if base and (row["pace_s_per_token"] or 0) >= 1.5 * base:
                    seen["paced"] = min(seen["paced"], now)
                await asyncio.sleep(0.1)

        async def throttle() -> None:
            await post(session, pod0, {"gpu": {"throttle": "thermal", "clock": 0.5}})
            await watch()

        events = [(T, throttle)] if fault else []
        arrivals = poisson_arrivals(2, rate, seconds)
        samples, _ = await load(session, gw.url, sharegpt_like(2, SHAPE), arrivals, events)
    await post(session, pod0, {"gpu": None})
    await idle(stack.cluster)
    return Throttled(name, samples, seen["degraded"], seen["paced"])


def print_throttling(runs: Sequence[Throttled], rate: float, seconds: float) -> None:
    healthy = runs[0]
    print(f"\nthrottling: gpu-0 at half speed from t={T:.0f}s of {seconds:.0f}s, {rate:.1f} req/s")
    print("  run              gpu-0 share: before  0-1 s  1-2 s  after   degraded  pace  "
          "e2e p90 all / after T  (x healthy)   failed")  # fmt: skip
    for r in runs:
        s = r.samples
        after = p90(s, T)
        print(
            f"  {r.name:16s} {share(s, 'gpu-0', 4, T):17.0%} {share(s, 'gpu-0', T, T + 1):6.0%}"
            f" {share(s, 'gpu-0', T + 1, T + 2):6.0%} {share(s, 'gpu-0', T + 2, seconds):6.0%}"
            f"   {r.degraded_after:6.2f}s {r.paced_after:5.2f}s   {p90(s):5.2f}s / {after:5.2f}s"
            f"  ({p90(s) / p90(healthy.samples):4.2f}x / {after / p90(healthy.samples, T):4.2f}x)"
            f"   {sum(not x.ok for x in s)}"
        )


async def taint_run(stack: Stack, session: aiohttp.ClientSession, rate: float) -> None:
    taint_at, untaint_at, seconds = 10.0, 20.0, 30.0
    flags = ("--prometheus-url", stack.prometheus, *GPU_FLAGS)

    async def taint() -> None:
        write_manifests(stack.folder, stack.pods, stack.port, taint="gpu-0")

    async def untaint() -> None:
        write_manifests(stack.folder, stack.pods, stack.port, taint=None)

    async with stack.gateway("taint", *flags) as gw:
        await asyncio.sleep(2.0)
        arrivals = poisson_arrivals(3, rate, seconds)
        events = [(taint_at, taint), (untaint_at, untaint)]
        samples, fired = await load(session, gw.url, sharegpt_like(3, SHAPE), arrivals, events)
    await idle(stack.cluster)
    tainted, untainted = fired[taint_at], fired[untaint_at]
    on0 = [s for s in samples if s.pod == "gpu-0"]
    in_flight = [s for s in on0 if s.start < tainted < s.end]
    reached = [s.start - tainted for s in on0 if tainted <= s.start < untainted]
    failed = [s for s in samples if not s.ok]
    back = [s.start - untainted for s in on0 if s.start >= untainted]
    print(
        f"\nmaintenance taint on gpu-0's device from t={tainted:.1f}s to t={untainted:.1f}s, "
        f"{rate:.1f} req/s: {len(in_flight)} requests in flight on it "
        f"({sum(s.ok for s in in_flight)} finished ok); new requests reaching it after the "
        f"write: {len(reached)}, the last {max(reached, default=0.0):.2f}s after it; "
        f"failed {len(failed)} of {len(samples)}; after the taint is removed: first request "
        f"on it {min(back, default=math.nan):.2f}s later, share "
        f"{share(samples, 'gpu-0', untainted + 2, seconds):.0%}"
    )
    assert in_flight and all(s.ok for s in in_flight)
    assert max(reached, default=0.0) <= 1.5  # the folder is polled twice (0.5 s) before a change
    assert not failed
    assert share(samples, "gpu-0", untainted + 2, seconds) > 0.1


async def mig_run(tmp_path: Path, session: aiohttp.ClientSession, whole_rate: float) -> None:
    pods = [GpuPod("gpu-whole", "127.0.0.2", "gpu-0", A100)]
    pods += [GpuPod(f"mig-{k}", f"127.0.0.{k + 3}", f"gpu-1-mig-{k}", A100, "1g.10gb")
             for k in range(3)]  # fmt: skip
    rate = LOAD * whole_rate * (1 + 3 / 7)
    (port,) = free_ports(1)
    print(f"\nwhole A100 + three 1g.10gb slices, capacity 7:1:1:1, {rate:.1f} req/s")
    print("  run          first 2 s                first 40 requests        whole run")
    async with SimCluster(specs(pods, port, slices=True)) as cluster:
        for name, priors in (("DRA priors", True), ("no priors", False)):
            folder = tmp_path / f"mig-{name.replace(' ', '-')}"
            shown = pods if priors else [GpuPod(p.name, p.host, p.device, A100) for p in pods]
            write_manifests(folder, shown, port, taint=None)
            backends = [(p.host, port) for p in pods]
            async with Gateway(tmp_path / f"run-{folder.name}", folder, backends) as gw:
                await asyncio.sleep(1.0)
                arrivals = poisson_arrivals(4, rate, 20.0)
                samples, _ = await load(session, gw.url, sharegpt_like(4, SHAPE), arrivals)
            await idle(cluster)
            first40 = sorted(samples, key=lambda s: s.start)[:40]
            names = [p.name for p in pods]
            cols = [
                [share(samples, n, 0, 2) for n in names],
                [share(first40, n, 0, math.inf) for n in names],
                [share(samples, n, 0, math.inf) for n in names],
            ]
            print(f"  {name:11s}" + "".join(
                " " + " ".join(f"{v:4.0%}" for v in col) + "    " for col in cols
            ))  # fmt: skip
            assert not [s for s in samples if not s.ok]
            if priors:
                assert cols[1] == pytest.approx([0.7, 0.1, 0.1, 0.1], abs=0.1)


async def test_bench_gpu_live(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    pods = four_gpus()
    async with (
        SimCluster(specs(pods, port), gpu_exporter=("127.0.0.1", 0)) as cluster,
        make_session(120.0) as session,
    ):
        assert cluster.gpu_exporter_address is not None
        with run_prometheus(tmp_path, cluster.gpu_exporter_address, "500ms") as (_, url):
            folder = tmp_path / "manifests"
            write_manifests(folder, pods, port, taint=None)
            stack = Stack(cluster, pods, port, folder, url, tmp_path)
            capacity = await calibrate(stack, session)
            rate = LOAD * capacity
            print(
                f"\n4 simulated A100s at speed {SPEED}, {MAX_SEQS} sequences each: the pool "
                f"completes {capacity:.1f} req/s saturated; load {LOAD:.0%} = {rate:.1f} req/s"
            )
            healthy = await throttle_run(stack, session, rate, "all healthy", False, True)
            await taint_run(stack, session, rate)
            signal = await throttle_run(stack, session, rate, "health signal", True, True)
            blind = await throttle_run(stack, session, rate, "no signal", True, False)
        print_throttling([healthy, signal, blind], rate, SECONDS)
        await mig_run(tmp_path, session, capacity / 4)
    for r in (healthy, signal, blind):
        assert not [s for s in r.samples if not s.ok]
    # the EPP knows within 2 s, from DCGM alone (before its measured pace shows the slowdown),
    # and the pod's share of new requests in those 2 s falls
    before = share(signal.samples, "gpu-0", 4, T)
    assert signal.degraded_after < 2.0
    assert signal.degraded_after < signal.paced_after
    assert share(signal.samples, "gpu-0", T, T + 2) < 0.85 * before
