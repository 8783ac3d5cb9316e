"""The scrape loop: every endpoint's /metrics, on a short interval, into a sink.

One ticker, `Scraper.run`, wakes on a grid of `interval` ticks, at the ticks where something is
due: a scrape, a deadline, or (at least every steady period) a new look at the target set. At each
wake it re-reads the target set (`targets()`), starts the scrapes that are due and times out those
past their deadline; an answer that brings its endpoint's next scrape before the planned wake moves
the wake forward. Pods whose figures stand still therefore cost no empty wakeups. A
scrape is a request written on the endpoint's kept connection (`KeepAliveFetch.begin`) whose answer
is handled in its completion callback: no task, timer or semaphore per scrape (a task only for a
fresh connection or a `Fetch` twin), which cost about a sixth of each scrape's CPU when every
endpoint had its own loop. At most `max_concurrency` scrapes are in flight; the rest queue and
start as answers come back. An endpoint is scraped every tick while its load moves, one tick later
each time while it does not (up to `steady_interval`, 150 ms, still fresh for the saturation
detector's 250 ms staleness bound), and backs off while it fails; a bug in the sink or the parser
is logged and the endpoint is tried again at its next tick. A quiet pod is not even fetched that
often: when its last two pages showed it idle (nothing running or queued) with the same figures,
and the EPP (this replica or a peer, `changes`) started or ended no request there since, nothing
but traffic from outside the EPP can have changed it, so at its steady ticks the scraper vouches
for the last figures (the sink gets them again, `scraped_at` the vouching instant) instead of
fetching, until `quiet_interval` after the last fetch or the EPP's first change there. A pod goes
quiet on its first idle page when the EPP has nothing in flight there (`flights`) and changed
nothing while the page was fetched: the EPP's own requests ending there cannot leave it busy, so the
ramp back to the steady period would only repeat the same page. A pod with
requests running is never quiet: its KV grows as they decode, and figures vouched for while it grew
misled picks. It asks only for the families the parser reads (`name[]`, as prometheus_client serves
it: vLLM, SGLang and trtllm-serve pages shrink to a few lines; servers that ignore the query send
the whole page). Pages go through the pure `epp.scrape.parser`; results and health transitions go
to a `MetricsSink` (the datastore). HTTP is one kept connection per endpoint (`epp.scrape.client`);
tests can pass a `Fetch` twin and need no sockets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
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
    # longest wait while its pages show the same load, in whole intervals (three at the
    # defaults); the saturation detector's staleness bound (250 ms) leaves a tick and a late
    # answer of margin. Busy pods stand still between the EPP's starts and ends there (their
    # in-flight counts cover those until the next page), so this sets most of the scraping cost
    # (docs/benchmarks.md, "Busy pods fetched every 150 ms")
    steady_interval: float = 0.15
    # longest time the figures of a quiet pod (idle: nothing running or queued, the same figures
    # twice, no request started or ended there by the EPP) are vouched for without a fetch;
    # <= steady_interval: never. Busy pods are never quiet: their KV grows as they decode (when
    # they could be, at 0.5 s, prefix8-b32-kv4's p99 TTFT doubled, docs/scheduling.md)
    quiet_interval: float = 0.5
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
        if self.quiet_interval < 0 or self.steady_interval <= 0:
            raise ValueError("quiet_interval must be >= 0 and steady_interval > 0")
        if self.max_concurrency < 1 or self.unhealthy_after < 1 or self.max_body < 1:
            raise ValueError("max_concurrency, unhealthy_after and max_body must be >= 1")

    @property
    def steady_ticks(self) -> int:
        """Ticks between fetches of a pod whose pages show the same load."""
        return max(1, int(self.steady_interval / self.interval + 1e-9))

    @property
    def steady_period(self) -> float:
        """Seconds between fetches of a pod whose pages show the same load."""
        return self.steady_ticks * self.interval

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


@dataclass(slots=True, eq=False)
class _Target:
    """One endpoint's scrape state between ticks."""

    ep: Endpoint
    url: str
    health: _Health
    due: float  # the grid tick of its next scrape
    ticks: int = 1  # ticks from one scrape to the next
    last: EndpointMetrics | None = None
    last_page: bytes = b""
    quiet_until: float = 0.0  # while its figures are vouched for without a fetch (0: not quiet)
    seen: int = 0  # the EPP's change count there when the last fetch began
    started: float = 0.0  # when the fetch in flight began
    pending: asyncio.Future[bytes] | None = None  # the fetch in flight
    kept: bool = False  # that fetch went out on a kept connection (KeepAliveFetch.begin)
    queued: bool = False  # due, waiting for a free place under max_concurrency


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
        flights: Callable[[str], int] | None = None,
    ) -> None:
        """`changes(address)`: a count that grows whenever the EPP starts or ends a request on
        the endpoint (`Datastore.load_changes`); None: every steady tick fetches.
        `flights(address)`: the requests the EPP (this replica and its peers) has in flight there
        (`Datastore.flights`); None: a pod goes quiet only after two idle pages."""
        self._sink = sink
        self._targets = targets
        self._settings = settings
        self._fetch = fetch
        self._clock = clock
        self._changes = changes
        self._flights = flights
        self._by_address: dict[str, _Target] = {}
        self._health: dict[str, _Health] = {}  # outlives a target replaced for a changed endpoint
        self._http: KeepAliveFetch | None = None
        self._in_flight = 0
        self._waiting: deque[_Target] = deque()  # due, over max_concurrency
        # the longest wait between fetches of a pod whose figures stand still, in ticks
        self._steady_ticks = settings.steady_ticks
        self._wake_at = 0.0  # the grid tick the ticker sleeps until
        self._alarm: asyncio.TimerHandle | None = None  # wakes the ticker at `_wake_at`
        self._waker: asyncio.Future[None] | None = None  # what the ticker awaits

    async def run(self) -> None:
        s = self._settings
        owned = self._fetch is None
        if self._fetch is None:
            self._fetch = KeepAliveFetch(s.timeout, s.max_body, s.gzip)
        if isinstance(self._fetch, KeepAliveFetch):
            self._http = self._fetch
        try:
            tick = self._tick_after(self._clock())
            while True:
                tick = await self._sleep_until(tick)
                self._sync(tick)
                self._tick(tick)
                tick = self._next_wake(tick)
        finally:  # `_sleep_until` cancelled its own alarm
            for target in self._by_address.values():
                self._drop(target)
            self._by_address.clear()
            self._health.clear()
            self._waiting.clear()
            if owned and self._http is not None:
                await self._http.close()
                self._fetch = self._http = None

    # -- when the ticker wakes -------------------------------------------------------------
    async def _sleep_until(self, tick: float) -> float:
        """Sleep until `tick`, or an earlier tick an answer asks for (`_wake_sooner`); the
        tick it woke for."""
        loop = asyncio.get_running_loop()
        self._wake_at = tick
        waker = self._waker = loop.create_future()
        self._alarm = loop.call_later(max(0.0, tick - self._clock()), _resolve, waker)
        try:
            await waker
        finally:
            self._alarm.cancel()
            self._alarm = self._waker = None
        return self._wake_at

    def _next_wake(self, tick: float) -> float:
        """The next grid tick with something to do: a target due, a fetch's deadline, or the
        steady period's look at the target set (new endpoints wait no longer than that)."""
        s = self._settings
        wake = tick + self._steady_ticks * s.interval
        for target in self._by_address.values():
            if target.pending is not None:
                at = target.started + s.timeout
            elif target.queued:
                continue  # started by an answer, not by a tick
            else:
                at = target.due
            wake = min(wake, at)
        wake = self._tick_after(wake - s.interval / 2)  # dues lie on the grid; deadlines after
        # never the same tick again; rejoin the grid when the loop fell behind
        return max(wake, tick + s.interval, self._tick_after(self._clock() - s.interval))

    def _wake_sooner(self, due: float) -> None:
        """An answer set its endpoint's next scrape: wake for it if the ticker sleeps past it."""
        waker, alarm = self._waker, self._alarm
        if waker is None or alarm is None or waker.done():
            return
        if due >= self._wake_at - self._settings.interval / 2:
            return
        alarm.cancel()
        self._wake_at = due
        self._alarm = asyncio.get_running_loop().call_later(
            max(0.0, due - self._clock()), _resolve, waker
        )

    # -- the target set --------------------------------------------------------------------
    def _sync(self, tick: float) -> None:
        wanted = {ep.address: ep for ep in self._targets()}
        for address in [a for a in self._by_address if a not in wanted]:
            self._drop(self._by_address.pop(address))
            self._health.pop(address, None)
        s = self._settings
        for address, ep in wanted.items():
            current = self._by_address.get(address)
            if current is not None and (current.ep is ep or current.ep == ep):
                continue
            if current is not None:  # relabelled (engine, ...): start over, health kept
                self._drop(current)
            health = self._health.setdefault(address, _Health())
            url = s.url_for(ep.address, ep.engine)
            self._by_address[address] = _Target(ep, url, health, due=tick)

    def _drop(self, target: _Target) -> None:
        """Stop a target's scrape: its callback sees it gone and counts no failure (a
        timeout cancels with `pending` kept, and that one counts)."""
        target.queued = False
        pending, target.pending = target.pending, None
        if pending is not None:
            pending.cancel()

    # -- one tick --------------------------------------------------------------------------
    def _tick(self, tick: float) -> None:
        """Start the scrapes due at this grid tick; time out the ones past their deadline."""
        s = self._settings
        soon = tick + s.interval / 2
        changes = self._changes
        for target in self._by_address.values():  # only `_sync` changes the set
            if target.pending is not None:
                if self._clock() - target.started > s.timeout:
                    target.pending.cancel()  # `_landed` counts it as a timeout
                continue
            if target.queued or target.due > soon:
                continue
            # quiet, and the EPP changed nothing there: the last figures still hold
            if (
                target.quiet_until > tick
                and target.last is not None
                and changes is not None
                and changes(target.ep.address) == target.seen
            ):
                self._safely(self._vouch, target)
                continue
            if self._in_flight >= s.max_concurrency:
                target.queued = True
                self._waiting.append(target)
                continue
            self._launch(target, kept=True)

    def _vouch(self, target: _Target) -> None:
        assert target.last is not None
        now = self._clock()
        self._sink.set_metrics(target.ep.address, replace(target.last, scraped_at=now))
        # the fetch comes at the first tick the vouching ends, not a steady period after it:
        # outside traffic on a quiet pod is seen within `quiet_interval` (and a tick)
        ends = self._tick_after(target.quiet_until - self._settings.interval)
        target.due = min(self._next(target.due, target.ticks), ends)

    def _launch(self, target: _Target, kept: bool) -> None:
        """Send the fetch: on a kept idle connection without a task where the client can, else
        as a task (a fresh connection, or a `Fetch` twin)."""
        assert self._fetch is not None
        target.quiet_until = 0.0
        target.started = self._clock()
        if self._changes is not None:
            target.seen = self._changes(target.ep.address)
        pending = self._http.begin(target.url) if kept and self._http is not None else None
        target.kept = pending is not None
        if pending is None:
            pending = asyncio.ensure_future(self._fetch(target.url))
            if isinstance(pending, asyncio.Task):
                pending.set_name(f"scrape {target.ep.address}")
        target.pending = pending
        self._in_flight += 1
        pending.add_done_callback(functools.partial(self._landed, target))

    def _landed(self, target: _Target, done: asyncio.Future[bytes]) -> None:
        if target.pending is not done:  # dropped (endpoint removed or changed, or shut down)
            self._in_flight -= 1
            if not done.cancelled():
                done.exception()  # retrieved: nobody waits for it
            return
        target.pending = None
        self._in_flight -= 1
        self._safely(self._take, target, done)
        if target.pending is None:
            self._wake_sooner(target.due)
        while self._waiting and self._in_flight < self._settings.max_concurrency:
            queued = self._waiting.popleft()
            if queued.queued and self._by_address.get(queued.ep.address) is queued:
                queued.queued = False
                self._launch(queued, kept=True)

    def _take(self, target: _Target, done: asyncio.Future[bytes]) -> None:
        """One fetch's outcome: the sink's figures and health, and when the next scrape is."""
        s, started = self._settings, target.started
        health = target.health
        if done.cancelled():
            error: BaseException | None = TimeoutError(f"no answer in {s.timeout:g}s")
        else:
            error = done.exception()
        if target.kept and isinstance(error, ConnectionError):
            self._launch(target, kept=False)  # the endpoint had closed the kept connection
            return
        try:
            if error is not None:
                raise error
            body = done.result()
            if body == target.last_page and target.last is not None:  # steady: same figures
                metrics = replace(target.last, scraped_at=started)
            else:
                metrics = parse_metrics(body, target.ep.engine, started)
                target.last_page = body
        except (OSError, TimeoutError, ScrapeError, MetricsParseError) as exc:
            target.ticks = self._failed(target.ep, health, exc)
        except Exception as exc:  # a bug in a fetch or the parser must not stop the scraping
            if health.failures == 0:
                log.error("unexpected error scraping %s", target.url, exc_info=exc)
            target.ticks = self._failed(target.ep, health, exc)
        else:
            self._sink.set_metrics(target.ep.address, metrics)
            last = target.last
            moved = last is None or _moved(last, metrics) or health.failures > 0
            target.ticks = 1 if moved else min(self._steady_ticks, target.ticks + 1)
            if self._quiet(target, metrics, settled=not moved):
                target.ticks = self._steady_ticks
                target.quiet_until = started + s.quiet_interval
            target.last = metrics
            if not health.healthy:
                log.info("endpoint %s answers again after %d failures", target.url, health.failures)
                health.healthy = True
                self._sink.set_health(target.ep.address, True)
            health.failures = 0
        target.due = self._next(target.due, target.ticks)

    def _quiet(self, target: _Target, metrics: EndpointMetrics, settled: bool) -> bool:
        """Whether an idle page lets the pod go quiet: after the same figures on a steady
        period, or at once when the EPP has nothing in flight there and changed nothing while
        the page was fetched (its own requests ending there are all the page moved for)."""
        changes = self._changes
        if changes is None or metrics.waiting or metrics.running:
            return False
        if settled and target.ticks == self._steady_ticks:
            return True
        address = target.ep.address
        return (
            self._flights is not None
            and target.health.failures == 0
            and self._flights(address) == 0
            and changes(address) == target.seen
        )

    def _safely(self, step: Callable[..., None], target: _Target, *args: object) -> None:
        """Run one target's step; a bug there (the sink's, say) is logged, and the target is
        scraped again at its next tick rather than left behind."""
        try:
            step(target, *args)
        except Exception:
            log.exception("scrape of %s failed unexpectedly; trying again", target.ep.address)
            target.due = self._next(target.due, 1)

    def _next(self, due: float, ticks: int) -> float:
        """The tick `ticks` after `due`, or the grid's next one when the loop fell behind."""
        interval = self._settings.interval
        due += ticks * interval
        now = self._clock()
        if due < now - interval:  # fell more than a tick behind: rejoin the grid
            due = self._tick_after(now)
        return due

    def _tick_after(self, now: float) -> float:
        """The next tick of the grid."""
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


def _resolve(waker: asyncio.Future[None]) -> None:
    if not waker.done():
        waker.set_result(None)


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
