"""What one scrape of a busy simulated pod costs the EPP, end to end and split by phase.

One `epp sim` with 4 H100 pods at full speed, loaded directly (not through the EPP) by a child
process with streamed chats (~250-token prompts, 128 output tokens) at 10 requests/s in all, the
load of `test_bench_extproc.py`'s streamed rows.
`test_scrape_cost_busy_pods`:
- an idle `epp serve --grpc-server lean` over those pods (no request through it): its CPU share
  while the pods are busy and while they are idle, and the share as ms of CPU per request at
  10 requests/s (the scraping part of that bench's "EPP CPU per streamed request");
- the same work in process, phase by phase: the kept-connection fetch of a pod's page, the parse,
  and the datastore update (`set_metrics` with the batch-limit learner), each CPU per call,
  and the real `Scraper` into a real `Datastore` over the 4 pods: CPU per scrape, scrapes per
  second and pod, and how many pages came back byte-identical.
Run: flock /tmp/bench.lock .venv/bin/pytest -m bench -s tests/bench/test_bench_scrape_busy.py
Prints numbers; the assertions check that the pods were busy and every phase ran.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import uvloop

from epp.admission.limits import BatchLimitLearner
from epp.api.model import Pool
from epp.datastore import Datastore
from epp.local.processes import ChildProcess, wait_until
from epp.scrape.client import KeepAliveFetch
from epp.scrape.parser import parse_metrics
from epp.scrape.scraper import Scraper, ScrapeSettings
from epp.types import ENGINE_VLLM, EndpointMetrics
from tests.bench.gateways import cpu_seconds, pid_of
from tests.ports import free_ports

pytestmark = pytest.mark.bench

PODS = [f"127.0.94.{i}:8000" for i in range(2, 6)]
RATE = 10.0  # requests/s over the 4 pods
WINDOW = 8.0  # seconds per measurement

LOAD = r"""
import asyncio, itertools, sys, time
import aiohttp
pods, rate, seconds = sys.argv[1].split(","), float(sys.argv[2]), float(sys.argv[3])
FILLER = "the quick brown fox jumps over the lazy dog and keeps running through the field "
async def one(session, url, i):
    body = {"model": "m", "max_tokens": 128, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": (f"request {i}: " + FILLER * 13)[:1000]}]}
    async with session.post(url, json=body) as r:
        await r.read()
async def main():
    async with aiohttp.ClientSession() as session:
        tasks, start = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            url = f"http://{pods[i % len(pods)]}/v1/chat/completions"
            tasks.append(asyncio.create_task(one(session, url, i)))
        await asyncio.gather(*tasks, return_exceptions=True)
asyncio.run(main())
"""


async def start_sim(run_dir: Path) -> ChildProcess:
    argv = [sys.executable, "-m", "epp", "--log-level", "WARNING", "sim", "--accept-any-model",
            "--pods", ",".join(PODS)]  # fmt: skip
    sim = ChildProcess("sim", argv, run_dir / "sim.log")
    await sim.start()
    async with aiohttp.ClientSession() as session:

        async def ok(url: str) -> bool:
            async with session.get(url) as r:
                return r.status == 200

        for pod in PODS:
            await wait_until(lambda u=f"http://{pod}/health": ok(u), "sim", 30, sim)
    return sim


async def start_epp(run_dir: Path) -> ChildProcess:
    grpc, health, metrics = free_ports(3)
    argv = [sys.executable, "-m", "epp", "--log-level", "WARNING", "serve", "--grpc-server",
            "lean", "--endpoints", ",".join(PODS), "--grpc-port", str(grpc), "--health-port",
            str(health), "--metrics-port", str(metrics)]  # fmt: skip
    epp = ChildProcess("epp", argv, run_dir / "epp.log")
    await epp.start()
    async with aiohttp.ClientSession() as session:

        async def ok() -> bool:
            async with session.get(f"http://127.0.0.1:{metrics}/healthz") as r:
                return r.status == 200

        await wait_until(ok, "epp", 30, epp)
    return epp


async def cpu_share(child: ChildProcess, seconds: float) -> float:
    cpu0, t0 = cpu_seconds(pid_of(child)), time.monotonic()
    await asyncio.sleep(seconds)
    return (cpu_seconds(pid_of(child)) - cpu0) / (time.monotonic() - t0)


async def running(session: aiohttp.ClientSession) -> int:
    """Requests running on the pods now, from their pages."""
    total = 0
    for pod in PODS:
        async with session.get(f"http://{pod}/metrics") as r:
            page = await r.read()
        total += parse_metrics(page, ENGINE_VLLM, 0.0).running
    return total


class CountingSink:
    """The real datastore, counting the scrapes it takes."""

    def __init__(self, store: Datastore) -> None:
        self.store = store
        self.scrapes = 0

    def set_metrics(self, address: str, metrics: EndpointMetrics) -> None:
        self.scrapes += 1
        self.store.set_metrics(address, metrics)

    def set_health(self, address: str, healthy: bool) -> None:
        self.store.set_health(address, healthy)


def new_store() -> Datastore:
    store = Datastore(BatchLimitLearner())
    store.set_static_pool(Pool("bench", "pool", (), (8000,)), PODS)
    return store


async def phases() -> dict[str, float]:
    """CPU per call of each phase of a scrape, and of the real scraper over the busy pods."""
    settings = ScrapeSettings()
    urls = [settings.url_for(pod, ENGINE_VLLM) for pod in PODS]
    fetch = KeepAliveFetch(settings.timeout, settings.max_body)
    pages: list[bytes] = []
    fetch_cpu = 0.0
    for url in urls:  # connect first
        await fetch(url)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # each pod's page every interval, as the scraper would
        for url in urls:
            cpu0 = time.process_time()
            pages.append(await fetch(url))
            fetch_cpu += time.process_time() - cpu0
        await asyncio.sleep(settings.interval)
    await fetch.close()
    same = sum(a == b for a, b in zip(pages, pages[len(PODS) :], strict=False))
    cpu0 = time.process_time()
    parsed = [parse_metrics(page, ENGINE_VLLM, float(i)) for i, page in enumerate(pages)]
    parse_cpu = time.process_time() - cpu0
    store = new_store()
    cpu0 = time.process_time()
    for i, metrics in enumerate(parsed):
        store.set_metrics(PODS[i % len(PODS)], metrics)
    update_cpu = time.process_time() - cpu0
    n = len(pages)
    out = {
        "pages": n,
        "page bytes": sum(map(len, pages)) / n,
        "same as the pod's last": same / max(1, n - len(PODS)),
        "fetch us": fetch_cpu / n * 1e6,
        "parse us": parse_cpu / n * 1e6,
        "update us": update_cpu / n * 1e6,
    }
    sink = CountingSink(new_store())
    task = asyncio.create_task(Scraper(sink, sink.store.endpoints, settings).run())
    await asyncio.sleep(1.0)
    scrapes0, cpu0, t0 = sink.scrapes, time.process_time(), time.monotonic()
    await asyncio.sleep(WINDOW)
    cpu, wall, scrapes = time.process_time() - cpu0, time.monotonic() - t0, sink.scrapes - scrapes0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    out["scraper us per scrape"] = cpu / scrapes * 1e6
    out["scrapes per s and pod"] = scrapes / wall / len(PODS)
    out["scraper share"] = cpu / wall
    return out


@pytest.mark.timeout(300)
async def test_scrape_cost_busy_pods(tmp_path: Path) -> None:
    sim = await start_sim(tmp_path)
    epp: ChildProcess | None = None
    load: ChildProcess | None = None
    try:
        epp = await start_epp(tmp_path)
        await asyncio.sleep(1.0)
        idle_share = await cpu_share(epp, WINDOW)
        seconds = 2 * WINDOW + 10.0
        load = ChildProcess("load", [sys.executable, "-c", LOAD, ",".join(PODS), str(RATE),
                                     str(seconds)], tmp_path / "load.log")  # fmt: skip
        await load.start()
        await asyncio.sleep(3.0)  # the pods fill up
        async with aiohttp.ClientSession() as session:
            busy_before = await running(session)
            busy_share = await cpu_share(epp, WINDOW)
            await epp.stop()
            epp = None
            split = await asyncio.get_running_loop().run_in_executor(
                None, lambda: uvloop.run(phases())
            )
            busy_after = await running(session)
        print(
            f"\n4 sim pods, {RATE:.0f} streamed requests/s straight to them (running "
            f"{busy_before} then {busy_after}); idle `epp serve --grpc-server lean`:"
        )
        for name, share in (("pods idle", idle_share), ("pods busy", busy_share)):
            print(f"  {name}: EPP {share:.2%} of a core = {share / RATE * 1e3:.2f} ms of CPU "
                  f"per request at {RATE:.0f} req/s")  # fmt: skip
        print("one scrape of a busy pod, in process (uvloop), CPU per call:")
        print("  " + ", ".join(f"{k} {v:.3g}" for k, v in split.items()))
        assert busy_before > 0 and busy_after > 0
        assert split["pages"] > 0 and split["scraper us per scrape"] > 0
    finally:
        for child in (load, epp, sim):
            if child is not None:
                await child.stop()
