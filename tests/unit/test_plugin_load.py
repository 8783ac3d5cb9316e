"""Load scorers on hand-built snapshots: queue, running, KV, in-flight, token load, staleness."""

from __future__ import annotations

import pytest

from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.in_flight import InFlightScorer, TokenLoadScorer
from epp.scheduling.plugins.kv_cache import KvCacheScorer
from epp.scheduling.plugins.queue import QueueScorer
from epp.scheduling.plugins.running import RunningRequestsScorer
from epp.scheduling.plugins.signals import min_max, min_max_fresh
from epp.scheduling.snapshot import Snapshot
from epp.types import Endpoint, EndpointMetrics, EndpointState

NOW = 1000.0
REQ = SchedulingRequest("r", "m")


def clock() -> float:
    return NOW


def ep(
    address: str,
    waiting: int = 0,
    running: int = 0,
    kv: float = 0.0,
    age: float | None = 0.01,
    in_flight: int = 0,
    tokens: int = 0,
) -> EndpointState:
    scraped = 0.0 if age is None else NOW - age
    metrics = EndpointMetrics(waiting, running, kv, scraped_at=scraped)
    return EndpointState(Endpoint(address, address, "ns/pool"), metrics, in_flight=in_flight,
                         in_flight_tokens=tokens)  # fmt: skip


def test_min_max_normalisation() -> None:
    assert min_max([0, 5, 10]) == [1.0, 0.5, 0.0]
    assert min_max([3, 3]) == [1.0, 1.0]
    snap = Snapshot([ep("stale", age=None), ep("a"), ep("b")])
    assert min_max_fresh(snap, [0, 2, 4], NOW - 1) == [0.0, 1.0, 0.0]
    assert min_max_fresh(snap, [0, 7, 7], NOW - 1) == [0.0, 1.0, 1.0]
    assert min_max_fresh(Snapshot([ep("x", age=None)]), [0], NOW - 1) == [0.0]


def test_queue_scorer_prefers_short_queue() -> None:
    scores = QueueScorer(clock=clock).score(
        REQ, [ep("a", waiting=0), ep("b", waiting=4), ep("c", waiting=8)]
    )
    assert scores == [1.0, 0.5, 0.0]


def test_queue_scorer_all_equal_scores_one() -> None:
    assert QueueScorer(clock=clock).score(REQ, [ep("a", 3), ep("b", 3)]) == [1.0, 1.0]


@pytest.mark.parametrize("age", [None, 0.6, 30.0])
def test_stale_or_never_scraped_pod_does_not_look_idle(age: float | None) -> None:
    # the stale pod reports an empty queue and cache; it must score like the busiest pod
    stale, busy = ep("stale", waiting=0, kv=0.0, age=age), ep("busy", waiting=9, kv=0.9)
    idle = ep("idle", waiting=1, kv=0.1)
    q = QueueScorer(clock=clock).score(REQ, [stale, busy, idle])
    kv = KvCacheScorer(clock=clock).score(REQ, [stale, busy, idle])
    run = RunningRequestsScorer(clock=clock).score(REQ, [stale, busy, idle])
    assert q[0] == 0.0 and q[2] == 1.0
    assert kv[0] == 0.0 and kv[2] == pytest.approx(0.9)
    assert run[0] == 0.0


def test_all_stale_is_neutral() -> None:
    states = [ep("a", waiting=0, age=None), ep("b", waiting=50, age=5.0)]
    assert QueueScorer(clock=clock).score(REQ, states) == [0.0, 0.0]
    assert KvCacheScorer(clock=clock).score(REQ, states) == [0.0, 0.0]


def test_staleness_threshold_is_a_parameter() -> None:
    states = [ep("a", waiting=0, age=2.0), ep("b", waiting=5)]
    assert QueueScorer(staleness=5.0, clock=clock).score(REQ, states) == [1.0, 0.0]
    assert QueueScorer(staleness=1.0, clock=clock).score(REQ, states) == [0.0, 1.0]


def test_running_scorer() -> None:
    scores = RunningRequestsScorer(clock=clock).score(
        REQ, [ep("a", running=10), ep("b", running=2)]
    )
    assert scores == [0.0, 1.0]


def test_kv_scorer_is_one_minus_usage() -> None:
    scores = KvCacheScorer(clock=clock).score(REQ, [ep("a", kv=0.25), ep("b", kv=1.0)])
    assert scores == [0.75, 0.0]


def test_in_flight_scorer_requests_and_tokens() -> None:
    states = [ep("a", in_flight=2, tokens=9000), ep("b", in_flight=6, tokens=1000)]
    assert InFlightScorer().score(REQ, states) == [1.0, 0.0]
    assert InFlightScorer("tokens").score(REQ, states) == [0.0, 1.0]
    with pytest.raises(ValueError, match="unit"):
        InFlightScorer("bytes")


def test_in_flight_ignores_staleness() -> None:
    # EPP-side counters are live even when scrapes are not
    states = [ep("a", age=None, in_flight=0), ep("b", age=None, in_flight=3)]
    assert InFlightScorer().score(REQ, states) == [1.0, 0.0]


def test_token_load_scorer_upstream_formula() -> None:
    scorer = TokenLoadScorer(threshold_tokens=1000)
    states = [ep("a", tokens=0), ep("b", tokens=250), ep("c", tokens=5000)]
    assert scorer.score(REQ, states) == [1.0, 0.75, 0.0]


def test_one_thousand_endpoints() -> None:
    states = [ep(f"10.0.{i // 250}.{i % 250}:8000", waiting=i % 17) for i in range(1000)]
    scores = QueueScorer(clock=clock).score(REQ, states)
    assert len(scores) == 1000
    assert max(scores) == 1.0 and min(scores) == 0.0
    assert scores[17] == 1.0 and scores[16] == 0.0


def test_in_flight_scorer_weighs_load_by_measured_speed() -> None:
    from dataclasses import replace

    fast, slow = ep("a:1", in_flight=4), ep("b:1", in_flight=2)
    request = SchedulingRequest("r", "m")
    plain = InFlightScorer()
    assert plain.score(request, [fast, slow]) == [0.0, 1.0]  # unmeasured: fewer requests wins
    fast, slow = replace(fast, tpot=0.01), replace(slow, tpot=0.025)  # slow streams 2.5x slower
    assert plain.score(request, [fast, slow]) == [1.0, 0.0]  # (4+1)*1 = 5 beats (2+1)*2.5 = 7.5
    assert InFlightScorer(speed_aware=False).score(request, [fast, slow]) == [0.0, 1.0]


def test_datastore_learns_each_endpoint_pace_from_streamed_responses() -> None:
    from epp.api.model import ResourceSet
    from epp.datastore import Datastore
    from tests.factories import model, pod, pool

    store = Datastore()
    store.apply_resources(ResourceSet((pool(),), (model(),), (pod("a", "10.0.0.1"),)))
    store.record_tokens("10.0.0.1:8000", 1.0, 101)  # 100 gaps in 1 s
    store.record_tokens("10.0.0.1:8000", 3.0, 101)
    store.record_tokens("10.0.0.1:8000", 0.0, 50)  # ignored: nothing measured
    (state,) = store.candidates("default/llama2-gpu-pool")
    assert state.tpot == pytest.approx(0.01 + 0.2 * (0.03 - 0.01))
    # the pace's noise: the second sample strayed 20 ms from the first
    assert state.tpot_spread == pytest.approx(0.02)
    store.record_tokens("10.0.0.1:8000", 9.0, 101, first_only=True)  # ignored: already known
    (after,) = store.candidates("default/llama2-gpu-pool")
    assert after.tpot == state.tpot
    store.record_tokens("10.0.0.1:8000", 1.4, 101)  # 14 ms: the average itself
    (third,) = store.candidates("default/llama2-gpu-pool")
    assert third.tpot_spread == pytest.approx(0.02 + 0.2 * (0.0 - 0.02))
