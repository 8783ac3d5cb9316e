"""The scrape loop: every endpoint's /metrics, on a short interval, into a sink.

One task per endpoint, supervised by `Scraper.run`, which follows the target set (`targets()` is
re-read every interval), restarts a loop that crashed and cancels the loops of removed
endpoints. Every loop wakes on the same grid of `interval` ticks, so the scrapes of one tick
share the event loop's wake-ups (a lone scrape pays them all: measured ~25 % more CPU with
jittered timers); a loop scrapes every tick while the pod's load moves, every other tick (up to
`steady_interval`, still fresh for the saturation detector's staleness bound) while it does not,
and backs off while the pod fails. A quiet pod is not even fetched that often: when its last
page showed no queue and the same load as the page before, and the EPP (this replica or a peer,
`changes`) started or ended no request there since, nothing can have moved its running and
waiting figures but traffic from outside the EPP, so at its steady ticks the loop vouches for the
last figures (the sink gets them again, `scraped_at` the vouching instant) instead of fetching,
until `quiet_interval` after the last fetch or the EPP's first change there. It asks only for the
families the parser reads (`name[]`, as
prometheus_client serves it: vLLM, SGLang and trtllm-serve pages shrink to a few lines; servers
that ignore the query send the whole page). Pages go through the pure `epp.scrape.parser`;
results and health transitions go to a `MetricsSink` (the datastore). HTTP is one kept
connection per endpoint (`epp.scrape.client`); tests can pass a `Fetch` twin and need no sockets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol
from urllib.parse import quote

from epp.scrape.client import KeepAliveFetch, ScrapeError
from epp.scrape.parser import ENGINE_SPECS, MetricsParseError, parse_metrics
from epp.types import ENGINE_TRTLLM, Endpoint, EndpointMetrics

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[bytes]]
"""Return the body of one GET of a URL, or raise (ScrapeError, OSError, TimeoutError...)."""


class MetricsSink(Protocol):
    def set_metrics(self, address: str, metrics: EndpointMetrics) -> None: ...
    def set_health(self, address: str, healthy: bool) -> None: ...


__all__ = ["Fetch", "MetricsSink", "ScrapeError", "ScrapeSettings", "Scraper"]
KV_MOVE = 0.01  # a KV-cache usage change below this is not a change of load


@dataclass(frozen=True, slots=True)
class ScrapeSettings:
    interval: float = 0.05  # seconds between scrapes of one endpoint whose load moves
    # longest wait while its pages show the same load, in whole intervals (two at the defaults):
    # well inside the saturation detector's 200 ms staleness bound
    steady_interval: float = 0.1
    # longest time the figures of a quiet pod (no queue, load unmoved, no request started or
    # ended there by the EPP) are vouched for without a fetch; <= steady_interval: never (the
    # default: at 0.5 s it cost prefix8-b32-kv4 twice its p99 TTFT, docs/scheduling.md)
    quiet_interval: float = 0.0
    timeout: float = 0.5  # per request, connect included
    max_concurrency: int = 64  # requests in flight over all endpoints
    unhealthy_after: int = 3  # consecutive failures before set_health(address, False)
    backoff_max: float = 2.0  # a failing endpoint is retried after interval * 2**n, capped here
    path: str = "/metrics"
    engine_paths: tuple[tuple[str, str], ...] = ((ENGINE_TRTLLM, "/prometheus/metrics"),)
    max_body: int = 8 * 1024 * 1024  # larger pages are failures, never buffered whole
    gzip: bool = False  # ask for gzip: less network, more CPU here (loopback/LAN: leave off)
    only_used_families: bool = True  # ask for the parsed families only (name[] query)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0 or self.backoff_max < self.interval:
            raise ValueError("scrape interval/timeout must be > 0 and backoff_max >= interval")
        if self.quiet_interval < 0:
            raise ValueError("quiet_interval must be >= 0")
        if self.max_concurrency < 1 or self.unhealthy_after < 1 or self.max_body < 1:
            raise ValueError("max_concurrency, unhealthy_after and max_body must be >= 1")

    def path_for(self, engine: str) -> str:
        return dict(self.engine_paths).get(engine, self.path)

    def url_for(self, address: str, engine: str) -> str:
        url = f"http://{address}{self.path_for(engine)}"
        spec = ENGINE_SPECS.get(engine)
        if self.only_used_families and spec is not None:
            url += "?" + "&".join(f"name[]={quote(n, safe='')}" for n in spec.families())
        return url


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
        changes: Callable[[str], int] | None = None,
    ) -> None:
        """`changes(address)`: a count that grows whenever the EPP starts or ends a request on
        the endpoint (`Datastore.load_changes`); None: every steady tick fetches."""
        self._sink = sink
        self._targets = targets
        self._settings = settings
        self._fetch = fetch
        self._clock = clock
        self._changes = changes
        self._tasks: dict[str, tuple[Endpoint, asyncio.Task[None]]] = {}
        self._health: dict[str, _Health] = {}  # outlives a loop restarted for a changed endpoint

    async def run(self) -> None:
        http: KeepAliveFetch | None = None
        fetch = self._fetch
        if fetch is None:
            s = self._settings
            fetch = http = KeepAliveFetch(s.timeout, s.max_body, s.gzip)
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
        url = s.url_for(ep.address, ep.engine)
        steady = max(1, int(s.steady_interval / s.interval + 1e-9))  # in ticks
        health = self._health.setdefault(ep.address, _Health())
        due = self._tick_after(self._clock())
        await asyncio.sleep(due - self._clock())
        last: EndpointMetrics | None = None
        last_page = b""
        ticks = 1
        quiet_until = 0.0  # while the figures are vouched for without a fetch (0: not quiet)
        changes = self._changes
        seen = 0  # the EPP's change count when the last fetch began
        while True:
            started = self._clock()
            # quiet, and the EPP changed nothing there: the last figures still hold
            if (
                started < quiet_until
                and last is not None
                and changes is not None
                and changes(ep.address) == seen
            ):
                self._sink.set_metrics(ep.address, replace(last, scraped_at=started))
                due = self._next(due, ticks)
                await asyncio.sleep(max(0.0, due - self._clock()))
                continue
            quiet_until = 0.0
            if changes is not None:
                seen = changes(ep.address)
            try:
                async with semaphore:
                    body = await fetch(url)
                if body == last_page and last is not None:  # a steady pod: the same figures
                    metrics = replace(last, scraped_at=started)
                else:
                    metrics = parse_metrics(body, ep.engine, started)
                    last_page = body
            except (OSError, TimeoutError, ScrapeError, MetricsParseError) as exc:
                ticks = self._failed(ep, health, exc)
            except Exception as exc:  # a bug in a fetch or the parser must not stop the loop
                if health.failures == 0:
                    log.exception("unexpected error scraping %s", url)
                ticks = self._failed(ep, health, exc)
            else:
                self._sink.set_metrics(ep.address, metrics)
                moved = last is None or _moved(last, metrics) or health.failures > 0
                ticks = 1 if moved else min(steady, ticks + 1)
                if changes is not None and not moved and not metrics.waiting and ticks == steady:
                    quiet_until = started + s.quiet_interval
                last = metrics
                if not health.healthy:
                    log.info("endpoint %s answers again after %d failures", url, health.failures)
                    health.healthy = True
                    self._sink.set_health(ep.address, True)
                health.failures = 0
            due = self._next(due, ticks)
            await asyncio.sleep(max(0.0, due - self._clock()))

    def _next(self, due: float, ticks: int) -> float:
        """The tick `ticks` after `due`, or the grid's next one when the loop fell behind."""
        interval = self._settings.interval
        due += ticks * interval
        now = self._clock()
        if due < now - interval:  # fell more than a tick behind: rejoin the grid
            due = self._tick_after(now)
        return due

    def _tick_after(self, now: float) -> float:
        """The next tick of the grid all loops share."""
        interval = self._settings.interval
        return (math.floor(now / interval) + 1) * interval

    def _failed(self, ep: Endpoint, health: _Health, exc: BaseException) -> int:
        """Count a failure; the ticks to wait before the next try (doubling, capped)."""
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
        backoff = min(s.backoff_max, s.interval * 2 ** min(health.failures, 30))
        return max(1, round(float(backoff) / s.interval))


def _moved(before: EndpointMetrics, after: EndpointMetrics) -> bool:
    """Whether the pod's load changed between two pages (then the next comes soon)."""
    return (
        before.waiting != after.waiting
        or before.running != after.running
        or abs(before.kv_usage - after.kv_usage) >= KV_MOVE
        or before.lora_active != after.lora_active
        or before.lora_waiting != after.lora_waiting
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
