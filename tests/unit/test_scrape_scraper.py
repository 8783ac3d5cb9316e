"""Scraper loop logic with an in-memory fetch: health transitions, backoff, restarts, targets."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from epp.scrape.scraper import ScrapeError, Scraper, ScrapeSettings
from epp.types import ENGINE_SGLANG, Endpoint, EndpointMetrics

PAGE = b"vllm:num_requests_waiting 2\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.5\n"
FAST = ScrapeSettings(interval=0.01, steady_interval=0.01, unhealthy_after=3, backoff_max=0.08)


@dataclass
class FakePods:
    """Fetch twin: answers PAGE for every URL unless the address is marked failing."""

    failing: set[str] = field(default_factory=set)
    calls: dict[str, int] = field(default_factory=dict)
    urls: set[str] = field(default_factory=set)

    async def __call__(self, url: str) -> bytes:
        address = url.split("/")[2]
        self.calls[address] = self.calls.get(address, 0) + 1
        self.urls.add(url)
        await asyncio.sleep(0)
        if address in self.failing:
            raise ScrapeError("HTTP 503")
        return PAGE


@dataclass
class Sink:
    metrics: dict[str, EndpointMetrics] = field(default_factory=dict)
    health: list[tuple[str, bool]] = field(default_factory=list)
    explode_once: bool = False

    def set_metrics(self, address: str, metrics: EndpointMetrics) -> None:
        if self.explode_once:
            self.explode_once = False
            raise RuntimeError("datastore bug")
        self.metrics[address] = metrics

    def set_health(self, address: str, healthy: bool) -> None:
        self.health.append((address, healthy))


def ep(address: str, engine: str = "vllm") -> Endpoint:
    return Endpoint(address=address, pod=address, pool="ns/pool", engine=engine)


async def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_unhealthy_after_n_failures_and_back() -> None:
    pods, sink = FakePods(failing={"10.0.0.1:8000"}), Sink()
    task = asyncio.create_task(Scraper(sink, lambda: [ep("10.0.0.1:8000")], FAST, fetch=pods).run())
    await wait_for(lambda: ("10.0.0.1:8000", False) in sink.health)
    assert pods.calls["10.0.0.1:8000"] >= FAST.unhealthy_after
    assert "10.0.0.1:8000" not in sink.metrics
    pods.failing.clear()
    await wait_for(lambda: ("10.0.0.1:8000", True) in sink.health)
    assert sink.metrics["10.0.0.1:8000"].waiting == 2
    assert sink.health == [("10.0.0.1:8000", False), ("10.0.0.1:8000", True)]
    await stop(task)


async def test_failing_pod_is_backed_off() -> None:
    pods, sink = FakePods(failing={"a:1"}), Sink()
    task = asyncio.create_task(
        Scraper(sink, lambda: [ep("a:1"), ep("b:1")], FAST, fetch=pods).run()
    )
    await asyncio.sleep(0.5)
    await stop(task)
    # healthy pod: ~50 scrapes at 10 ms; failing one: 20, 40, 80, 80 ms ... waits, about 8
    assert pods.calls["b:1"] > 25
    assert pods.calls["a:1"] < 15


async def test_a_bug_in_the_sink_is_logged_and_scraping_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pods, sink = FakePods(), Sink(explode_once=True)
    task = asyncio.create_task(Scraper(sink, lambda: [ep("a:1")], FAST, fetch=pods).run())
    await wait_for(lambda: "a:1" in sink.metrics)
    await stop(task)
    assert pods.calls["a:1"] >= 2  # the page the sink choked on, then the next one
    assert any("failed unexpectedly" in r.getMessage() for r in caplog.records)


async def test_health_survives_endpoint_change() -> None:
    pods, sink = FakePods(failing={"a:1"}), Sink()
    targets = [ep("a:1")]
    task = asyncio.create_task(Scraper(sink, lambda: targets, FAST, fetch=pods).run())
    await wait_for(lambda: ("a:1", False) in sink.health)
    targets[0] = ep("a:1", ENGINE_SGLANG)  # relabelled pod: its loop restarts with the new engine
    await asyncio.sleep(0.05)
    pods.failing.clear()
    targets[0] = ep("a:1")
    await wait_for(lambda: ("a:1", True) in sink.health)
    await stop(task)


async def test_a_scrape_stopped_by_the_scraper_counts_no_failure() -> None:
    """A scrape in flight when its endpoint is relabelled, removed, or the scraper stops is not
    the pod's fault: no failure is counted and no endpoint is marked unhealthy."""
    started: list[str] = []

    async def slow(url: str) -> bytes:
        started.append(url.split("/")[2])
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    sink = Sink()
    settings = ScrapeSettings(interval=0.01, steady_interval=0.01, unhealthy_after=1, timeout=5.0)
    targets = [ep("a:1"), ep("b:1")]
    task = asyncio.create_task(Scraper(sink, lambda: targets, settings, fetch=slow).run())
    await wait_for(lambda: {"a:1", "b:1"} <= set(started))
    targets[:] = [ep("a:1", ENGINE_SGLANG)]  # a relabelled, b removed, both mid-scrape
    await wait_for(lambda: started.count("a:1") == 2)
    await stop(task)  # the relabelled a's scrape is in flight
    await asyncio.sleep(0.02)  # the cancelled scrapes' callbacks have run
    assert sink.health == []


async def test_unexpected_fetch_error_does_not_stop_loop() -> None:
    calls = 0

    async def flaky(url: str) -> bytes:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise KeyError("bug in a fetch twin")
        return PAGE

    sink = Sink()
    task = asyncio.create_task(Scraper(sink, lambda: [ep("a:1")], FAST, fetch=flaky).run())
    await wait_for(lambda: "a:1" in sink.metrics)
    await stop(task)
    assert calls >= 3


async def test_cancel_stops_every_loop() -> None:
    pods, sink = FakePods(), Sink()
    task = asyncio.create_task(
        Scraper(sink, lambda: [ep(f"p{i}:1") for i in range(20)], FAST, fetch=pods).run()
    )
    await wait_for(lambda: len(sink.metrics) == 20)
    await stop(task)
    before = sum(pods.calls.values())
    await asyncio.sleep(0.05)
    assert sum(pods.calls.values()) == before
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("scrape ")]


async def test_a_steady_pod_is_scraped_less_often_until_its_load_moves() -> None:
    waiting, calls = 2, 0

    async def fetch(url: str) -> bytes:
        nonlocal calls
        calls += 1
        return PAGE.replace(b"waiting 2", b"waiting %d" % waiting)

    settings = ScrapeSettings(interval=0.01, steady_interval=0.08)
    task = asyncio.create_task(Scraper(Sink(), lambda: [ep("a:1")], settings, fetch=fetch).run())
    await asyncio.sleep(0.5)
    steady = calls
    assert steady < 15  # 1, 2, 3 ... 8 ticks of 10 ms, then every 8th (50 at every tick)
    for step in range(3, 40):  # a new figure on every page: back to the short interval
        waiting = step
        await asyncio.sleep(0.01)
    await stop(task)
    assert calls - steady > 15


def test_only_the_parsed_families_are_asked_for() -> None:
    url = ScrapeSettings().url_for("10.0.0.1:8000", "vllm")
    assert url.startswith("http://10.0.0.1:8000/metrics?name[]=vllm%3A")
    assert "name[]=vllm%3Anum_requests_waiting" in url
    assert "name[]=vllm%3Ainter_token_latency_seconds_sum" in url
    assert "bucket" not in url  # histogram buckets are never asked for
    plain = ScrapeSettings(only_used_families=False).url_for("10.0.0.1:8000", "trtllm-serve")
    assert plain == "http://10.0.0.1:8000/prometheus/metrics"


def test_settings_validation() -> None:
    assert ScrapeSettings().path_for("trtllm-serve") == "/prometheus/metrics"
    assert ScrapeSettings().path_for("vllm") == "/metrics"
    for bad in (
        {"interval": 0},
        {"max_concurrency": 0},
        {"backoff_max": 0.01},
        {"unhealthy_after": 0},
        {"quiet_interval": -1},
    ):
        with pytest.raises(ValueError):
            ScrapeSettings(**bad)


async def test_logs_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="epp.scrape.scraper")
    pods, sink = FakePods(failing={"a:1"}), Sink()
    task = asyncio.create_task(Scraper(sink, lambda: [ep("a:1")], FAST, fetch=pods).run())
    await wait_for(lambda: pods.calls.get("a:1", 0) >= 6)
    await stop(task)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 503" in warnings[0].getMessage()


async def test_a_quiet_pod_is_vouched_for_until_the_epp_changes_its_load() -> None:
    """Idle, the same figures twice, and no request started or ended there by the EPP: at
    its steady ticks the last figures are vouched for (fresh `scraped_at`) without a fetch,
    up to the quiet interval; the EPP's first change there brings the fetches back."""
    idle = PAGE.replace(b"waiting 2", b"waiting 0").replace(b"running 1", b"running 0")
    fetches, changes, seen_at = 0, 0, []

    async def fetch(url: str) -> bytes:
        nonlocal fetches
        fetches += 1
        return idle

    class Seen(Sink):
        def set_metrics(self, address: str, metrics: EndpointMetrics) -> None:
            super().set_metrics(address, metrics)
            seen_at.append(metrics.scraped_at)

    settings = ScrapeSettings(interval=0.01, steady_interval=0.02, quiet_interval=0.2)
    scraper = Scraper(Seen(), lambda: [ep("a:1")], settings, fetch=fetch, changes=lambda a: changes)
    task = asyncio.create_task(scraper.run())
    await asyncio.sleep(0.6)
    quiet_fetches = fetches
    assert 3 <= quiet_fetches <= 9  # 2 to be steady, then one per 200 ms (30 at every 20 ms)
    gaps = [b - a for a, b in itertools.pairwise(seen_at)]
    assert len(seen_at) >= 20 and max(gaps) < 0.1  # never as old as the quiet interval
    for _ in range(20):  # the EPP sends there: a fetch at every steady tick again
        changes += 1
        await asyncio.sleep(0.02)
    await stop(task)
    assert fetches - quiet_fetches >= 12


async def test_a_quiet_pod_is_fetched_as_its_quiet_interval_ends() -> None:
    """Outside traffic on a quiet pod is seen within the quiet interval and a tick, even when
    the steady period does not divide it (80 ms steady ticks, 100 ms quiet: not at 160 ms)."""
    idle = PAGE.replace(b"waiting 2", b"waiting 0").replace(b"running 1", b"running 0")
    fetched_at: list[float] = []

    async def fetch(url: str) -> bytes:
        fetched_at.append(time.monotonic())
        return idle

    settings = ScrapeSettings(interval=0.01, steady_interval=0.08, quiet_interval=0.1)
    scraper = Scraper(Sink(), lambda: [ep("a:1")], settings, fetch=fetch, changes=lambda a: 0)
    task = asyncio.create_task(scraper.run())
    await asyncio.sleep(0.8)
    await stop(task)
    gaps = [b - a for a, b in itertools.pairwise(fetched_at[-4:])]  # once quiet
    assert len(gaps) >= 3
    assert max(gaps) < 0.1 + 0.01 + 0.025  # the quiet interval, a tick, a slow loop's slack
    assert min(gaps) > 0.085  # quiet: not fetched at every steady tick


IDLE = PAGE.replace(b"waiting 2", b"waiting 0").replace(b"running 1", b"running 0")


@pytest.mark.parametrize("in_flight", [0, 1], ids=["nothing-in-flight", "one-in-flight"])
async def test_a_pod_goes_quiet_on_its_first_idle_page_when_the_epp_has_nothing_there(
    in_flight: int,
) -> None:
    """The EPP's last request there ended and the next page shows the pod idle: with nothing
    of the EPP's in flight there, that page is vouched for at once (no ramp of fetches that
    would repeat it). With a request of the EPP's still there (on its way, or its answer still
    streaming to the client), the page is fetched again before the pod goes quiet."""
    busy, changes, fetched_at = True, 0, []
    end_from, ended = time.monotonic() + 0.1, 0.0

    async def fetch(url: str) -> bytes:
        nonlocal busy, changes, ended
        fetched_at.append(time.monotonic())
        if busy and fetched_at[-1] >= end_from:
            # the EPP's request there ends as this (busy) page is read: between two fetches,
            # so the next one is the first sent after the change (the scraper rightly ramps
            # when a change lands while a fetch is on its way, which a flip at a time would
            # sometimes do)
            busy, changes, ended = False, changes + 1, fetched_at[-1]
            return PAGE
        return PAGE if busy else IDLE

    settings = ScrapeSettings(interval=0.01, steady_interval=0.03, quiet_interval=0.3)
    scraper = Scraper(
        Sink(),
        lambda: [ep("a:1")],
        settings,
        fetch=fetch,
        changes=lambda a: changes,
        flights=lambda a: 1 if busy else in_flight,
    )
    task = asyncio.create_task(scraper.run())
    await asyncio.sleep(0.35)
    assert ended  # the request ended
    await stop(task)
    after = [t for t in fetched_at if t > ended]
    assert after  # the idle page was fetched
    later = [t for t in after if t > after[0] + 0.005]
    if in_flight:
        assert later and later[0] - after[0] < 0.05  # the ramp: the next tick, not 300 ms
    else:
        assert later == []  # vouched for until the quiet interval (300 ms) ends


async def test_the_ticker_wakes_only_when_something_is_due() -> None:
    """A steady pod due every 50 ms on a 10 ms grid: the target set is read (once per wake)
    about every 50 ms, not every tick; a page that moves still brings the next fetch to the
    next tick, even while the ticker sleeps towards a later one."""
    reads, waiting, fetched_at = 0, 2, []

    def targets() -> list[Endpoint]:
        nonlocal reads
        reads += 1
        return [ep("a:1"), ep("b:1")]

    async def fetch(url: str) -> bytes:
        if "b:1" in url:  # b answers late, after the ticker went to sleep
            await asyncio.sleep(0.015)
            fetched_at.append(time.monotonic())
            return PAGE.replace(b"waiting 2", b"waiting %d" % waiting)
        return PAGE

    settings = ScrapeSettings(interval=0.01, steady_interval=0.05)
    task = asyncio.create_task(Scraper(Sink(), targets, settings, fetch=fetch).run())
    await asyncio.sleep(0.5)
    steady_reads = reads
    assert steady_reads <= 20  # ~10 wakes at 50 ms (50 at every tick)
    start = len(fetched_at)
    for step in range(3, 33):  # b's page moves every tick: fetched about every other tick
        waiting = step
        await asyncio.sleep(0.01)
    await stop(task)
    assert len(fetched_at) - start >= 8  # one per 25 ms answer and tick, not one per 50 ms


@pytest.mark.parametrize(
    "page",
    [
        PAGE.replace(b"running 1", b"running 0"),  # waiting 2: the engine moves its queue
        PAGE.replace(b"waiting 2", b"waiting 0"),  # running 1: its KV grows as it decodes
    ],
    ids=["queued", "running"],
)
async def test_a_busy_pod_is_never_vouched_for(page: bytes) -> None:
    calls = 0

    async def fetch(url: str) -> bytes:
        nonlocal calls
        calls += 1
        return page

    settings = ScrapeSettings(interval=0.01, steady_interval=0.02, quiet_interval=0.2)
    task = asyncio.create_task(
        Scraper(Sink(), lambda: [ep("a:1")], settings, fetch=fetch, changes=lambda a: 0).run()
    )
    await asyncio.sleep(0.4)
    await stop(task)
    assert calls >= 15  # every steady tick (20 ms)


async def test_a_silent_endpoint_times_out_one_fetch_at_a_time() -> None:
    started, open_now, most = 0, 0, 0

    async def silent(url: str) -> bytes:
        nonlocal started, open_now, most
        started += 1
        open_now += 1
        most = max(most, open_now)
        try:
            await asyncio.sleep(3600)
        finally:
            open_now -= 1
        raise AssertionError("unreachable")

    settings = ScrapeSettings(interval=0.01, timeout=0.03, unhealthy_after=2, backoff_max=0.02)
    sink = Sink()
    task = asyncio.create_task(Scraper(sink, lambda: [ep("a:1")], settings, fetch=silent).run())
    await wait_for(lambda: ("a:1", False) in sink.health)
    await stop(task)
    assert started >= 2 and most == 1  # each fetch cancelled at its deadline before the next
    assert open_now == 0  # and none left behind by the stop


async def test_concurrency_is_capped_and_every_endpoint_still_scraped() -> None:
    open_now, most = 0, 0
    per_pod: dict[str, int] = {}

    async def slow(url: str) -> bytes:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.002)
        open_now -= 1
        address = url.split("/")[2]
        per_pod[address] = per_pod.get(address, 0) + 1
        return PAGE

    settings = ScrapeSettings(interval=0.05, steady_interval=0.05, max_concurrency=3)
    sink = Sink()
    pods = [ep(f"p{i}:1") for i in range(20)]
    task = asyncio.create_task(Scraper(sink, lambda: pods, settings, fetch=slow).run())
    await asyncio.sleep(0.4)
    await stop(task)
    assert most == 3
    # queued scrapes start as places free, within the tick: every pod about every 50 ms (were
    # they left for the next tick, 3 a tick, each pod would wait 7 ticks: one scrape in 0.4 s)
    assert len(per_pod) == 20 and min(per_pod.values()) >= 3
