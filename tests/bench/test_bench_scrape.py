"""Benchmarks of the signal path: parse cost per page, one scrape end to end and by wakeups, 100
endpoints.

`test_bench_cost_of_a_fetch_by_wakeups`: CPU per fetch when 1, 2 or 4 pods share the loop's
wakeup (the loop sleeps between), and back to back. `test_bench_one_scrape_end_to_end`: CPU per
scrape (fetch + parse) of a 58 KB vLLM page, side by side: an aiohttp keep-alive session (the
client the scraper used), the kept-connection client of `epp.scrape.client`, and the same asking
only for the parsed families (`name[]`, which the server answers as prometheus_client does).
`test_bench_scrape_100_endpoints_at_50ms`: metrics age and CPU share of the real Scraper over 100
endpoints, every 50 ms and adaptive.
Run: flock /tmp/bench.lock .venv/bin/pytest -m bench -s tests/bench/test_bench_scrape.py
Prints numbers; the assertions check correctness only (goals: >= 10x faster than
prometheus_client's parser; age p99 <= 150 ms using <= 50% of one core).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from epp.scrape.client import KeepAliveFetch
from epp.scrape.parser import parse_metrics
from epp.scrape.scraper import Scraper, ScrapeSettings
from epp.types import ENGINE_VLLM, Endpoint, EndpointMetrics

pytestmark = pytest.mark.bench

PAGE = Path(__file__).parents[1] / "unit" / "payloads" / "vllm_v1_2engines.txt"

SERVER = r"""
import asyncio, json, sys
from aiohttp import web
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
from epp.sim.metrics import restrict
body = open(sys.argv[2], "rb").read()
async def handle(request):
    names = request.query.getall("name[]", [])
    return web.Response(body=restrict(body, names) if names else body, content_type="text/plain")
async def main():
    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    addrs = []
    for i in range(int(sys.argv[1])):
        site = web.TCPSite(runner, f"127.0.0.{2 + i}", 0)
        await site.start()
        addrs.append(f"127.0.0.{2 + i}:{site._server.sockets[0].getsockname()[1]}")
    print(json.dumps(addrs), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()
asyncio.run(main())
"""


def per_call(fn: object, budget: float = 1.0) -> float:
    assert callable(fn)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < budget:
        fn()
        n += 1
    return (time.perf_counter() - started) / n


def test_bench_parse_vs_prometheus_client() -> None:
    body = PAGE.read_bytes()
    ours = per_call(lambda: parse_metrics(body, ENGINE_VLLM, 0.0))
    theirs = per_call(lambda: list(text_string_to_metric_families(body.decode())))
    print(
        f"\nparse {len(body)} B vLLM page: targeted {ours * 1e6:.1f} us, "
        f"prometheus_client {theirs * 1e6:.1f} us, {theirs / ours:.0f}x faster"
    )
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    waiting = sum(s.value for s in families["vllm:num_requests_waiting"].samples)
    assert parse_metrics(body, ENGINE_VLLM, 0.0).waiting == waiting


def start_server(n: int) -> tuple[subprocess.Popen[str], list[str]]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(n), str(PAGE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    addresses = json.loads(server.stdout.readline())
    assert len(addresses) == n
    return server, addresses


def stop_server(server: subprocess.Popen[str]) -> None:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.close()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    server.stdout.close()


async def scrape_cost(fetch: Callable[[str], Awaitable[bytes]], urls: list[str]) -> float:
    """CPU seconds per scrape (fetch + parse), scraping `urls` in turn for a second."""
    for url in urls:  # connect first
        parse_metrics(await fetch(url), ENGINE_VLLM, 0.0)
    n, cpu0, wall0 = 0, time.process_time(), time.monotonic()
    while time.monotonic() - wall0 < 1.5:
        for url in urls:
            assert parse_metrics(await fetch(url), ENGINE_VLLM, 0.0).waiting >= 0
            n += 1
    return (time.process_time() - cpu0) / n


async def one_scrape_variants(addresses: list[str]) -> dict[str, float]:
    full = [f"http://{a}/metrics" for a in addresses]
    used = [ScrapeSettings().url_for(a, ENGINE_VLLM) for a in addresses]
    out: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:

        async def aiohttp_fetch(url: str) -> bytes:
            async with session.get(URL(url, encoded=True)) as r:
                return await r.read()

        out["aiohttp session, whole page"] = await scrape_cost(aiohttp_fetch, full)
    kept = KeepAliveFetch(timeout=1.0, max_body=8 << 20)
    out["kept connection, whole page"] = await scrape_cost(kept, full)
    out["kept connection, used families"] = await scrape_cost(kept, used)
    await kept.close()
    return out


def test_bench_one_scrape_end_to_end() -> None:
    server, addresses = start_server(10)
    try:
        import uvloop

        result = uvloop.run(one_scrape_variants(addresses))
        base = result["aiohttp session, whole page"]
        print(f"\none scrape (fetch + parse) of a {PAGE.stat().st_size} B vLLM page, uvloop, "
              "CPU per scrape:")  # fmt: skip
        for name, cost in result.items():
            print(f"  {name:32s} {cost * 1e6:7.1f} us  ({base / cost:.1f}x)")
    finally:
        stop_server(server)


async def cost_per_fetch(urls: list[str], per_wakeup: int, period: float, seconds: float) -> float:
    """CPU seconds per fetch + parse when `per_wakeup` pods are fetched together, once every
    `period` seconds (the loop sleeps between)."""
    kept = KeepAliveFetch(timeout=1.0, max_body=8 << 20)
    for url in urls:  # connect first
        await kept(url)
    n, turn = 0, itertools.cycle(urls)
    cpu0, wall0 = time.process_time(), time.monotonic()
    wake = wall0
    while time.monotonic() - wall0 < seconds:
        batch = [next(turn) for _ in range(per_wakeup)]
        for body in await asyncio.gather(*(kept(url) for url in batch)):
            assert parse_metrics(body, ENGINE_VLLM, 0.0).waiting >= 0
        n += per_wakeup
        wake += period
        await asyncio.sleep(max(0.0, wake - time.monotonic()))
    cpu = time.process_time() - cpu0
    await kept.close()
    return cpu / n


async def wakeup_patterns(addresses: list[str]) -> dict[str, float]:
    urls = [ScrapeSettings().url_for(a, ENGINE_VLLM) for a in addresses]
    out = {
        "1 pod per wakeup, every 50 ms": await cost_per_fetch(urls, 1, 0.05, 4.0),
        "1 pod per wakeup, every 12.5 ms": await cost_per_fetch(urls, 1, 0.0125, 4.0),
        "2 pods per wakeup, every 25 ms": await cost_per_fetch(urls, 2, 0.025, 4.0),
        "4 pods per wakeup, every 50 ms": await cost_per_fetch(urls, 4, 0.05, 4.0),
    }
    kept = KeepAliveFetch(timeout=1.0, max_body=8 << 20)
    out["back to back (never asleep)"] = await scrape_cost(kept, urls)
    await kept.close()
    return out


def test_bench_cost_of_a_fetch_by_wakeups() -> None:
    """What one fetch costs depends on how many share the loop's wakeup: the scraper wakes only
    when something is due, and fetches that fall due together share one wakeup."""
    server, addresses = start_server(4)
    try:
        import uvloop

        result = uvloop.run(wakeup_patterns(addresses))
        print("\nCPU per fetch + parse (used families), 4 endpoints, uvloop:")
        for name, cost in result.items():
            print(f"  {name:34s} {cost * 1e6:7.1f} us")
        assert all(cost > 0 for cost in result.values())
    finally:
        stop_server(server)


class AgeSink:
    def __init__(self) -> None:
        self.metrics: dict[str, EndpointMetrics] = {}
        self.scrapes = 0
        self.unhealthy: set[str] = set()

    def set_metrics(self, address: str, metrics: EndpointMetrics) -> None:
        self.metrics[address] = metrics
        self.scrapes += 1

    def set_health(self, address: str, healthy: bool) -> None:
        (self.unhealthy.discard if healthy else self.unhealthy.add)(address)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def measure(
    addresses: list[str], warmup: float, window: float, settings: ScrapeSettings
) -> dict[str, float]:
    sink = AgeSink()
    endpoints = [Endpoint(address=a, pod=a, pool="bench/pool") for a in addresses]
    task = asyncio.create_task(Scraper(sink, lambda: endpoints, settings).run())
    await asyncio.sleep(warmup)
    ages: list[float] = []
    scrapes0, cpu0, wall0 = sink.scrapes, time.process_time(), time.monotonic()
    while time.monotonic() - wall0 < window:
        await asyncio.sleep(0.005)
        now = time.monotonic()
        ages.extend(now - m.scraped_at for m in sink.metrics.values())
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    scrapes = sink.scrapes - scrapes0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return {
        "endpoints_seen": len(sink.metrics),
        "unhealthy": len(sink.unhealthy),
        "scrapes_per_s": scrapes / wall,
        "cpu_share": cpu / wall,
        "age_p50_ms": percentile(ages, 0.5) * 1e3,
        "age_p99_ms": percentile(ages, 0.99) * 1e3,
        "age_max_ms": max(ages) * 1e3,
    }


def test_bench_scrape_100_endpoints_at_50ms() -> None:
    n = 100
    server, addresses = start_server(n)
    try:
        import uvloop

        fixed = ScrapeSettings(steady_interval=0.05)  # every 50 ms, whatever the pages say
        variants = (("uvloop, every 50 ms", uvloop.run, fixed),
                    ("asyncio, every 50 ms", asyncio.run, fixed),
                    ("uvloop, adaptive (steady pages)", uvloop.run, ScrapeSettings()))  # fmt: skip
        for name, run, settings in variants:
            result = run(measure(addresses, 1.5, 5.0, settings))
            print(f"\nscrape {n} endpoints ({PAGE.stat().st_size} B pages, {name}):")
            print("  " + ", ".join(f"{k}={v:.3g}" for k, v in result.items()))
            assert result["endpoints_seen"] == n
    finally:
        stop_server(server)
