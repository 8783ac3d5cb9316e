"""Benchmarks of the signal path: parse cost per page, and scraping 100 endpoints at 50 ms.

Run: .venv/bin/python -m pytest -m bench -s tests/bench/test_bench_scrape.py
Prints numbers; the assertions check correctness only (the goals are in the issue: >= 10x
faster than prometheus_client's parser; age p99 <= 150 ms using <= 50% of one core).
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

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
body = open(sys.argv[2], "rb").read()
async def handle(request):
    return web.Response(body=body, content_type="text/plain")
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


async def measure(addresses: list[str], warmup: float, window: float) -> dict[str, float]:
    sink = AgeSink()
    endpoints = [Endpoint(address=a, pod=a, pool="bench/pool") for a in addresses]
    task = asyncio.create_task(Scraper(sink, lambda: endpoints, ScrapeSettings()).run())
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
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(n), str(PAGE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        addresses = json.loads(server.stdout.readline())
        assert len(addresses) == n
        import uvloop

        for loop_name, run in (("uvloop", uvloop.run), ("asyncio", asyncio.run)):
            result = run(measure(addresses, 1.5, 5.0))
            print(f"\nscrape {n} endpoints ({PAGE.stat().st_size} B pages, 50 ms, {loop_name}):")
            print("  " + ", ".join(f"{k}={v:.3g}" for k, v in result.items()))
            assert result["endpoints_seen"] == n
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        assert server.stdout is not None
        server.stdout.close()
