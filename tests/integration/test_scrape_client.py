"""The keep-alive /metrics client against raw loopback servers: every framing, reuse, failures."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from epp.scrape.client import KeepAliveFetch, ScrapeError
from epp.scrape.scraper import Scraper, ScrapeSettings
from epp.types import Endpoint, EndpointMetrics

pytestmark = pytest.mark.integration

PAGE = b'vllm:num_requests_waiting{engine="0"} 3\n' * 50


class RawServer:
    """Answers each request line with `answer(request)`; counts connections and requests."""

    def __init__(self, answer: Callable[[bytes], bytes], close_after: int = 0) -> None:
        self.answer = answer
        self.close_after = close_after  # close the connection after this many answers (0: never)
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                writer.write(self.answer(head))
                await writer.drain()
                served += 1
                if self.close_after and served >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/metrics?name[]=vllm%3Anum_requests_waiting"


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[..., object]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Callable[[bytes], bytes], close_after: int = 0) -> RawServer:
        raw = RawServer(answer, close_after)
        raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        servers.append(raw.server)
        return raw

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def sized(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def chunked(body: bytes) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100])
             for i in range(0, len(body), 100)]  # fmt: skip
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(parts) + b"0\r\n\r\n"


async def test_one_kept_connection_carries_every_scrape(serve: Callable[..., object]) -> None:
    raw = await serve(lambda _: sized(PAGE))  # type: ignore[misc]
    fetch = KeepAliveFetch(timeout=1.0, max_body=1 << 20)
    for _ in range(5):
        assert await fetch(raw.url) == PAGE
    await fetch.close()
    assert raw.connections == 1 and len(raw.requests) == 5
    head = raw.requests[0].decode()
    assert head.startswith("GET /metrics?name[]=vllm%3Anum_requests_waiting HTTP/1.1\r\n")
    assert "Accept-Encoding: identity" in head


@pytest.mark.parametrize(
    "answer",
    [
        lambda _: chunked(PAGE),
        lambda _: sized(gzip.compress(PAGE), b"Content-Encoding: gzip\r\n"),
    ],
    ids=["chunked", "gzip"],
)
async def test_chunked_and_gzip_pages(serve: Callable[..., object], answer: object) -> None:
    raw = await serve(answer)  # type: ignore[misc]
    fetch = KeepAliveFetch(timeout=1.0, max_body=1 << 20, gzip=True)
    assert await fetch(raw.url) == PAGE
    assert await fetch(raw.url) == PAGE
    await fetch.close()


async def test_read_to_close_and_a_closed_kept_connection(serve: Callable[..., object]) -> None:
    old = await serve(lambda _: b"HTTP/1.0 200 OK\r\n\r\n" + PAGE, close_after=1)  # type: ignore[misc]
    fetch = KeepAliveFetch(timeout=1.0, max_body=1 << 20)
    assert await fetch(old.url) == PAGE and await fetch(old.url) == PAGE
    assert old.connections == 2
    # a server that closes kept connections after each answer: the next fetch retries once
    closing = await serve(lambda _: sized(PAGE), close_after=1)  # type: ignore[misc]
    for _ in range(3):
        await asyncio.sleep(0.01)
        assert await fetch(closing.url) == PAGE
    await fetch.close()


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda _: b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n", "HTTP 503"),
        (lambda _: sized(b"<html>", b"Content-Type: text/html\r\n"), "text/html"),
        (lambda _: sized(PAGE * 100), "over"),
        (lambda _: chunked(PAGE * 100), "over"),
        (lambda _: sized(PAGE, b"Content-Encoding: br\r\n"), "encoding"),
        (lambda _: b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1 response"),
    ],
)
async def test_unacceptable_answers_raise(
    serve: Callable[..., object], answer: object, match: str
) -> None:
    raw = await serve(answer)  # type: ignore[misc]
    fetch = KeepAliveFetch(timeout=1.0, max_body=len(PAGE) * 10)
    with pytest.raises(ScrapeError, match=match):
        await fetch(raw.url)
    await fetch.close()


async def test_silent_endpoint_times_out_and_dead_one_refuses(
    serve: Callable[..., object],
) -> None:
    raw = await serve(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")  # type: ignore[misc]
    fetch = KeepAliveFetch(timeout=0.2, max_body=1 << 20)
    with pytest.raises(TimeoutError):
        await fetch(raw.url)
    with pytest.raises(OSError):
        await fetch("http://127.0.0.1:1/metrics")
    await fetch.close()


async def test_begin_sends_on_a_kept_idle_connection_only(serve: Callable[..., object]) -> None:
    raw = await serve(lambda _: sized(PAGE))  # type: ignore[misc]
    fetch = KeepAliveFetch(timeout=1.0, max_body=1 << 20)
    assert fetch.begin(raw.url) is None  # no connection yet
    assert await fetch(raw.url) == PAGE
    pending = fetch.begin(raw.url)
    assert pending is not None and await pending == PAGE
    assert raw.connections == 1 and len(raw.requests) == 2
    await fetch.close()


async def test_an_abandoned_answer_is_never_read_as_the_next(serve: Callable[..., object]) -> None:
    slow = await serve(lambda _: sized(b"x"))  # type: ignore[misc]
    fetch = KeepAliveFetch(timeout=1.0, max_body=1 << 20)
    await fetch(slow.url)
    pending = fetch.begin(slow.url)
    assert pending is not None
    pending.cancel()  # its answer ("x") may still arrive on that connection
    assert fetch.begin(slow.url) is None  # so it carries nothing more
    assert await fetch(slow.url) == b"x"  # a fresh connection
    assert slow.connections == 2
    await fetch.close()


async def test_the_scraper_rides_kept_connections_through_server_closes(
    serve: Callable[..., object],
) -> None:
    page = (
        b"vllm:num_requests_waiting 0\nvllm:num_requests_running 3\nvllm:kv_cache_usage_perc 0.25\n"
    )
    raw = await serve(lambda _: sized(page), close_after=3)  # type: ignore[misc]
    address = raw.url.split("/")[2]
    seen: list[EndpointMetrics] = []
    health: list[bool] = []

    class Sink:
        def set_metrics(self, addr: str, metrics: EndpointMetrics) -> None:
            seen.append(metrics)

        def set_health(self, addr: str, healthy: bool) -> None:
            health.append(healthy)

    settings = ScrapeSettings(interval=0.01, steady_interval=0.01, unhealthy_after=1)
    endpoint = Endpoint(address=address, pod="p", pool="ns/pool", engine="vllm")
    task = asyncio.create_task(Scraper(Sink(), lambda: [endpoint], settings).run())
    await asyncio.sleep(0.6)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # every third answer closes the connection; the next scrape finds it closed and goes on a
    # fresh one without counting a failure (one failure would mark it unhealthy here)
    assert health == [] and len(seen) >= 15 and seen[-1].running == 3
    assert raw.connections >= len(raw.requests) // 3 >= 5
