"""Saturation detector (admission) and the saturation filter (falls back to all)."""

from __future__ import annotations

import random
import time

import pytest

from epp.scheduling.base import BuildContext, SchedulingRequest
from epp.scheduling.params import Params
from epp.scheduling.plugins.saturation_filter import SaturationFilter
from epp.scheduling.saturation import SaturationDetector
from epp.settings import SaturationSettings
from epp.types import Endpoint, EndpointMetrics, EndpointState

NOW = 1000.0


def ep(
    address: str,
    waiting: int = 0,
    kv: float = 0.0,
    running: int = 0,
    age: float | None = 0.05,
    in_flight: int = 0,
) -> EndpointState:
    scraped = 0.0 if age is None else NOW - age
    return EndpointState(
        Endpoint(address, address, "ns/pool"),
        EndpointMetrics(waiting, running, kv, scraped_at=scraped),
        in_flight=in_flight,
    )


def test_idle_pool_is_not_saturated() -> None:
    d = SaturationDetector()
    assert d.saturation([ep("a"), ep("b")], NOW) == 0.0
    assert not d.saturated([ep("a")], NOW)


def test_level_is_mean_of_queue_and_kv_ratios() -> None:
    d = SaturationDetector(queue_depth=5, kv_cache_util=0.8)
    states = [ep("a", waiting=10), ep("b", kv=0.4)]  # 2.0 and 0.5
    assert d.saturation(states, NOW) == pytest.approx(1.25)
    assert d.saturated(states, NOW)


def test_min_aggregate_admits_while_one_pod_has_room() -> None:
    states = [ep("a", waiting=50, kv=0.95), ep("b", waiting=1, kv=0.2), ep("c", waiting=30)]
    assert SaturationDetector().saturated(states, NOW)  # the mean is well over 1
    assert not SaturationDetector(aggregate="min").saturated(states, NOW)
    assert SaturationDetector(aggregate="min").saturation(states, NOW) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="aggregate"):
        SaturationDetector(aggregate="max")


def test_stale_and_missing_metrics_count_as_saturated() -> None:
    d = SaturationDetector(staleness=0.2)
    assert d.saturation([ep("a", age=None), ep("b", age=0.5)], NOW) == 1.0
    assert d.saturation([ep("a", age=None), ep("b")], NOW) == 0.5


def test_no_candidates_is_saturated() -> None:
    assert SaturationDetector().saturation([], NOW) == 1.0


def test_in_flight_beyond_scraped_running_counts_as_queue() -> None:
    # a burst the last scrape has not seen yet: 12 sent, 2 running at the scrape
    d = SaturationDetector(queue_depth=5)
    assert d.endpoint(ep("a", running=2, in_flight=12), NOW) == pytest.approx(2.0)
    capped = SaturationDetector(max_in_flight=10)
    assert capped.endpoint(ep("a", running=20, in_flight=20), NOW) == pytest.approx(2.0)


def test_filter_keeps_unsaturated_then_falls_back_to_all() -> None:
    flt = SaturationFilter(clock=lambda: NOW)
    req = SchedulingRequest("r", "m")
    ok, full, stale = ep("ok", waiting=1), ep("full", waiting=9), ep("stale", age=None)
    assert list(flt.filter(req, [ok, full, stale])) == [ok]
    assert list(flt.filter(req, [full, stale])) == [full, stale]


def test_filter_headroom() -> None:
    req = SchedulingRequest("r", "m")
    states = [ep("a", waiting=6), ep("b", waiting=20)]
    assert [
        s.address for s in SaturationFilter(headroom=0.5, clock=lambda: NOW).filter(req, states)
    ] == ["a"]


def test_pool_level_matches_per_endpoint_levels() -> None:
    states = [
        ep("a", waiting=3, kv=0.5, running=4, in_flight=9),
        ep("b", kv=0.9, age=None),
        ep("c", waiting=12, kv=0.1, age=0.3),
        ep("d", waiting=1, kv=0.2),
    ]
    d = SaturationDetector(staleness=0.2)
    levels = [d.endpoint(s, NOW) for s in states]
    assert levels == pytest.approx([1.0, 1.0, 1.0, 0.25])
    assert d.saturation(states, NOW) == pytest.approx(sum(levels) / 4)


def test_invalid_thresholds_are_refused() -> None:
    with pytest.raises(ValueError):
        SaturationDetector(kv_cache_util=1.5)


def test_the_filter_plugin_defaults_are_epp_serves() -> None:
    """A `saturation-filter` without parameters judges as `epp serve`'s detector does: the
    thresholds come from one place, `SaturationSettings`."""
    ctx = BuildContext(random.Random(1), time.monotonic)
    plugin = SaturationFilter.from_parameters(Params({}, "saturation-filter"), ctx)
    served = SaturationSettings()
    assert plugin.detector.queue_depth == served.queue_depth
    assert plugin.detector.kv_cache_util == served.kv_cache_util
    assert plugin.detector.staleness == served.staleness_seconds
