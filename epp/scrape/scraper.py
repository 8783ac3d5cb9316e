"""The scrape loop: every endpoint's /metrics, on a short jittered interval, into a sink.

One task per endpoint (fixed-rate, jittered, backing off while the pod fails), supervised by
`Scraper.run`, which follows the target set (`targets()` is re-read every interval), restarts a
loop that crashed and cancels the loops of removed endpoints. Pages go through the pure
`epp.scrape.parser`; results and health transitions go to a `MetricsSink` (the datastore). HTTP is
one keep-alive aiohttp session; tests can pass a `Fetch` twin instead and need no sockets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from epp.scrape.parser import MetricsParseError, parse_metrics
from epp.types import ENGINE_TRTLLM, Endpoint, EndpointMetrics

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[bytes]]
"""Return the body of one GET of a URL, or raise (ScrapeError, OSError, TimeoutError...)."""


class MetricsSink(Protocol):
    def set_metrics(self, address: str, metrics: EndpointMetrics) -> None: ...
    def set_health(self, address: str, healthy: bool) -> None: ...


class ScrapeError(Exception):
    """The endpoint answered, but not with a metrics page we accept (status, type, size)."""


@dataclass(frozen=True, slots=True)
class ScrapeSettings:
    interval: float = 0.05  # seconds between scrapes of one endpoint
    jitter: float = 0.2  # each wait is interval * (1 ± jitter), so pods are not polled in lockstep
    timeout: float = 0.5  # per request, connect included
    max_concurrency: int = 64  # requests in flight over all endpoints
    unhealthy_after: int = 3  # consecutive failures before set_health(address, False)
    backoff_max: float = 2.0  # a failing endpoint is retried after interval * 2**n, capped here
    path: str = "/metrics"
    engine_paths: tuple[tuple[str, str], ...] = ((ENGINE_TRTLLM, "/prometheus/metrics"),)
    max_body: int = 8 * 1024 * 1024  # larger pages are failures, never buffered whole
    gzip: bool = False  # ask for gzip: less network, more CPU here (loopback/LAN: leave off)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0 or self.backoff_max < self.interval:
            raise ValueError("scrape interval/timeout must be > 0 and backoff_max >= interval")
        if not 0 <= self.jitter < 1:
            raise ValueError("scrape jitter must be a fraction in [0, 1)")
        if self.max_concurrency < 1 or self.unhealthy_after < 1 or self.max_body < 1:
            raise ValueError("max_concurrency, unhealthy_after and max_body must be >= 1")

    def path_for(self, engine: str) -> str:
        return dict(self.engine_paths).get(engine, self.path)


class _HttpFetch:
    """The production Fetch: one aiohttp session, keep-alive, bounded body, text format only."""

    def __init__(self, settings: ScrapeSettings) -> None:
        self._max = settings.max_body
        self._headers = {
            "Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1",
            "Accept-Encoding": "gzip" if settings.gzip else "identity",
        }
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.max_concurrency, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=settings.timeout),
            skip_auto_headers=("User-Agent",),
        )

    async def __call__(self, url: str) -> bytes:
        async with self._session.get(
            URL(url, encoded=True), headers=self._headers, allow_redirects=False
        ) as resp:
            if resp.status != 200:
                raise ScrapeError(f"HTTP {resp.status}")
            if resp.content_type == "text/html":
                raise ScrapeError("content type text/html is not a metrics page")
            length = resp.content_length
            if length is not None:
                if length > self._max:
                    raise ScrapeError(f"page of {length} bytes is over {self._max}")
                return await resp.read()
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > self._max:
                    raise ScrapeError(f"page over {self._max} bytes")
                chunks.append(chunk)
            return b"".join(chunks)

    async def close(self) -> None:
        await self._session.close()


@dataclass(slots=True)
class _Health:
    failures: int = 0
    healthy: bool = True


class Scraper:
    """Scrapes every endpoint `targets()` returns until cancelled."""

    def __init__(
        self,
        sink: MetricsSink,
        targets: Callable[[], Sequence[Endpoint]],
        settings: ScrapeSettings,
        *,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._targets = targets
        self._settings = settings
        self._fetch = fetch
        self._clock = clock
        self._tasks: dict[str, tuple[Endpoint, asyncio.Task[None]]] = {}
        self._health: dict[str, _Health] = {}  # outlives a loop restarted for a changed endpoint

    async def run(self) -> None:
        http: _HttpFetch | None = None
        fetch = self._fetch
        if fetch is None:
            fetch = http = _HttpFetch(self._settings)
        semaphore = asyncio.Semaphore(self._settings.max_concurrency)
        try:
            while True:
                self._sync(fetch, semaphore)
                await asyncio.sleep(self._settings.interval)
        finally:
            tasks = [task for _, task in self._tasks.values()]
            self._tasks.clear()
            self._health.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if http is not None:
                await http.close()

    def _sync(self, fetch: Fetch, semaphore: asyncio.Semaphore) -> None:
        wanted = {ep.address: ep for ep in self._targets()}
        for address in [a for a in self._tasks if a not in wanted]:
            self._tasks.pop(address)[1].cancel()
            self._health.pop(address, None)
        for address, ep in wanted.items():
            current = self._tasks.get(address)
            if current is not None and current[0] == ep and not current[1].done():
                continue
            if current is not None:
                old = current[1]
                old.cancel()
                if old.done() and not old.cancelled():
                    log.error("scrape loop of %s died (%r); restarting", address, old.exception())
            task = asyncio.create_task(self._loop(ep, fetch, semaphore), name=f"scrape {address}")
            self._tasks[address] = (ep, task)

    async def _loop(self, ep: Endpoint, fetch: Fetch, semaphore: asyncio.Semaphore) -> None:
        s = self._settings
        url = f"http://{ep.address}{s.path_for(ep.engine)}"
        health = self._health.setdefault(ep.address, _Health())
        await asyncio.sleep(random.uniform(0, s.interval))  # spread the first round
        while True:
            started = self._clock()
            delay = s.interval
            try:
                async with semaphore:
                    body = await fetch(url)
                metrics = parse_metrics(body, ep.engine, started)
            except (
                OSError,
                TimeoutError,
                aiohttp.ClientError,
                ScrapeError,
                MetricsParseError,
            ) as exc:
                delay = self._failed(ep, health, exc)
            except Exception as exc:  # a bug in a fetch or the parser must not stop the loop
                if health.failures == 0:
                    log.exception("unexpected error scraping %s", url)
                delay = self._failed(ep, health, exc)
            else:
                self._sink.set_metrics(ep.address, metrics)
                if not health.healthy:
                    log.info("endpoint %s answers again after %d failures", url, health.failures)
                    health.healthy = True
                    self._sink.set_health(ep.address, True)
                health.failures = 0
            wait = delay * (1 + random.uniform(-s.jitter, s.jitter)) - (self._clock() - started)
            await asyncio.sleep(max(0.0, wait))

    def _failed(self, ep: Endpoint, health: _Health, exc: BaseException) -> float:
        s = self._settings
        health.failures += 1
        if health.healthy and health.failures >= s.unhealthy_after:
            health.healthy = False
            log.warning(
                "endpoint %s unhealthy after %d failed scrapes: %s",
                ep.address,
                health.failures,
                _describe(exc),
            )
            self._sink.set_health(ep.address, False)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("scrape of %s failed (%d): %s", ep.address, health.failures, _describe(exc))
        return float(min(s.backoff_max, s.interval * 2 ** min(health.failures, 30)))


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
