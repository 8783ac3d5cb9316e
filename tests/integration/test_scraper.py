"""Scraper against real aiohttp servers on loopback: fresh values, dead pods, garbage pages."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from epp.scrape.scraper import Scraper, ScrapeSettings
from epp.types import ENGINE_TRTLLM, Endpoint, EndpointMetrics

pytestmark = pytest.mark.integration

SETTINGS = ScrapeSettings(interval=0.02, timeout=0.3, unhealthy_after=3, backoff_max=0.1)


def vllm_page(waiting: int) -> str:
    return (
        f'vllm:num_requests_waiting{{engine="0"}} {waiting}\n'
        'vllm:num_requests_running{engine="0"} 1\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.25\n'
    )


@dataclass
class Pod:
    """One fake model server; `body`/`ctype`/`status` say what /metrics answers."""

    body: str = field(default_factory=lambda: vllm_page(1))
    ctype: str = "text/plain"
    status: int = 200
    hits: int = 0
    paths: set[str] = field(default_factory=set)

    chunked: bool = False  # stream the body without a Content-Length
    gzip_seen: bool = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.paths.add(request.path)
        if self.chunked:
            stream = web.StreamResponse(headers={"Content-Type": self.ctype})
            stream.enable_chunked_encoding()
            await stream.prepare(request)
            for start in range(0, len(self.body), 8192):
                await stream.write(self.body[start : start + 8192].encode())
            await stream.write_eof()
            return stream
        resp = web.Response(text=self.body, content_type=self.ctype, status=self.status)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            self.gzip_seen = True
            resp.enable_compression()
        return resp


@dataclass
class Sink:
    metrics: dict[str, EndpointMetrics] = field(default_factory=dict)
    health: list[tuple[str, bool]] = field(default_factory=list)

    def set_metrics(self, address: str, metrics: EndpointMetrics) -> None:
        self.metrics[address] = metrics

    def set_health(self, address: str, healthy: bool) -> None:
        self.health.append((address, healthy))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def serve(pod: Pod, port: int = 0) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", pod.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def runners() -> AsyncIterator[list[web.AppRunner]]:
    started: list[web.AppRunner] = []
    yield started
    for r in started:
        await r.cleanup()


def ep(address: str, engine: str = "vllm") -> Endpoint:
    return Endpoint(address=address, pod=address, pool="default/pool", engine=engine)


async def test_fresh_metrics_dead_pod_and_garbage(runners: list[web.AppRunner]) -> None:
    live, garbage = Pod(), Pod(body="<html>oops</html>", ctype="text/html")
    for pod in (live, garbage):
        runner, _ = await serve(pod)
        runners.append(runner)
    live_addr = f"127.0.0.1:{runners[0].addresses[0][1]}"
    garbage_addr = f"127.0.0.1:{runners[1].addresses[0][1]}"
    dead_port = free_port()
    dead_addr = f"127.0.0.1:{dead_port}"
    targets = [ep(live_addr), ep(garbage_addr), ep(dead_addr)]
    sink = Sink()
    scraper = Scraper(sink, lambda: targets, SETTINGS)
    task = asyncio.create_task(scraper.run())
    try:
        await wait_for(lambda: live_addr in sink.metrics)
        assert sink.metrics[live_addr].waiting == 1
        first = sink.metrics[live_addr].scraped_at
        live.body = vllm_page(7)
        await wait_for(lambda: sink.metrics[live_addr].waiting == 7, timeout=1.0)
        assert sink.metrics[live_addr].scraped_at > first
        assert time.monotonic() - sink.metrics[live_addr].scraped_at < 0.5

        await wait_for(lambda: (dead_addr, False) in sink.health)
        await wait_for(lambda: (garbage_addr, False) in sink.health)
        assert garbage_addr not in sink.metrics and dead_addr not in sink.metrics
        assert (live_addr, False) not in sink.health
        assert not task.done()

        revived, _ = await serve(Pod(body=vllm_page(3)), dead_port)
        runners.append(revived)
        await wait_for(lambda: (dead_addr, True) in sink.health)
        await wait_for(lambda: dead_addr in sink.metrics)
        assert sink.metrics[dead_addr].waiting == 3
        assert sink.health.count((dead_addr, False)) == 1  # one transition, not one per failure

        garbage.body, garbage.ctype = vllm_page(2), "text/plain"
        await wait_for(lambda: (garbage_addr, True) in sink.health)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_follows_target_changes_and_engine_paths(runners: list[web.AppRunner]) -> None:
    a, b = Pod(), Pod(body="trtllm_num_requests_waiting 4\ntrtllm_num_requests_running 2\n"
                     "trtllm_kv_cache_utilization 0.5\n")  # fmt: skip
    runners.extend([(await serve(a))[0], (await serve(b))[0]])
    addr_a, addr_b = (f"127.0.0.1:{r.addresses[0][1]}" for r in runners)
    targets = [ep(addr_a)]
    sink = Sink()
    task = asyncio.create_task(Scraper(sink, lambda: list(targets), SETTINGS).run())
    try:
        await wait_for(lambda: addr_a in sink.metrics)
        targets.append(ep(addr_b, ENGINE_TRTLLM))
        await wait_for(lambda: addr_b in sink.metrics)
        assert sink.metrics[addr_b].waiting == 4
        assert b.paths == {"/prometheus/metrics"} and a.paths == {"/metrics"}
        targets.pop(0)
        await asyncio.sleep(0.1)
        hits = a.hits
        await asyncio.sleep(0.2)
        assert a.hits == hits  # removed endpoint no longer scraped
        assert b.hits > 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_oversized_and_error_pages_count_as_failures(runners: list[web.AppRunner]) -> None:
    big = Pod(body=vllm_page(1) + "#" * 70_000)
    big_chunked = Pod(body=vllm_page(1) + "#" * 70_000, chunked=True)
    err = Pod(status=500)
    runners.extend([(await serve(pod))[0] for pod in (big, big_chunked, err)])
    addrs = [f"127.0.0.1:{r.addresses[0][1]}" for r in runners]
    sink = Sink()
    settings = ScrapeSettings(interval=0.02, timeout=0.3, backoff_max=0.1, max_body=65_536)
    task = asyncio.create_task(Scraper(sink, lambda: [ep(a) for a in addrs], settings).run())
    try:
        await wait_for(lambda: {(a, False) for a in addrs} <= set(sink.health))
        assert sink.metrics == {}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_chunked_and_gzip_pages(runners: list[web.AppRunner]) -> None:
    chunked = Pod(body=vllm_page(5) + "# filler\n" * 3000, chunked=True)
    zipped = Pod(body=vllm_page(6) + "# filler\n" * 3000)
    runners.extend([(await serve(pod))[0] for pod in (chunked, zipped)])
    addrs = [f"127.0.0.1:{r.addresses[0][1]}" for r in runners]
    sink = Sink()
    settings = ScrapeSettings(interval=0.02, timeout=0.3, backoff_max=0.1, gzip=True)
    task = asyncio.create_task(Scraper(sink, lambda: [ep(a) for a in addrs], settings).run())
    try:
        await wait_for(lambda: len(sink.metrics) == 2)
        assert [sink.metrics[a].waiting for a in addrs] == [5, 6]
        assert zipped.gzip_seen
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
