"""Admission rules on their own: no director, no scheduler, no sockets."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import orjson
import pytest

from epp.admission.controller import AdmissionController, Offer
from epp.admission.envelope import LowerEnvelope
from epp.admission.flow_control import FlowControl
from epp.admission.limits import BatchLimitLearner
from epp.admission.rooms import (
    CRITICAL_QUEUE_AFTER,
    CriticalRoom,
    RoomView,
    StandardRoom,
    free,
    has_queue_room,
    has_room,
    probe,
    queue_slack,
    worth_taking,
)
from epp.admission.shedding import Shedder
from epp.errors import NoEndpoints, Shed
from epp.request import NO_INFERENCE, read_body
from epp.scheduling.config import load_config
from epp.scheduling.registry import service_time_of
from epp.scheduling.service_time import ServiceTime
from epp.settings import SaturationSettings
from epp.types import Endpoint, EndpointMetrics, EndpointState
from tests.factories import ManualClock as Clock
from tests.factories import store_of_two

FAST, SLOW = "10.0.0.1:8000", "10.0.0.2:8000"


def endpoint(address: str, load: int, limit: int, tpot: float) -> EndpointState:
    """An endpoint with `load` requests on it (the EPP's count), a batch `limit` and a pace."""
    ep = Endpoint(address, address, "default/pool")
    return EndpointState(
        ep, EndpointMetrics(scraped_at=100.0), in_flight=load, limit=limit, tpot=tpot
    )


def two_pods(fast_load: int, slow_load: int) -> RoomView:
    """A fast pod (20 ms/token) and a half-speed one, batches of 4 (room up to 4 + 1)."""
    return RoomView([endpoint(FAST, fast_load, 4, 0.02), endpoint(SLOW, slow_load, 4, 0.04)])


def test_the_envelope_is_the_minimum_of_its_lines() -> None:
    rng = random.Random(5)
    for _ in range(200):
        n = rng.randrange(1, 40)
        slopes = [rng.choice((0.02, 0.04, rng.uniform(0.01, 0.1))) for _ in range(n)]
        intercepts = [rng.choice((0.0, rng.uniform(0.0, 30.0))) for _ in range(n)]
        envelope = LowerEnvelope(slopes, intercepts)
        assert len(envelope) <= n
        for x in (1, 7, 64, 200, 513, 4096, rng.uniform(1, 10_000)):
            brute = min(a * x + b for a, b in zip(slopes, intercepts, strict=True))
            assert envelope.min_at(x) == pytest.approx(brute, rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError):
        LowerEnvelope([], [])


def test_a_long_request_declines_a_slow_slot_a_short_one_takes_it() -> None:
    model = ServiceTime(200)
    view = two_pods(fast_load=5, slow_load=3)  # only the slow pod has room
    assert view.room == [False, True]
    # 20 tokens: 0.8 s on the slow pod, sooner than 2.4 s on the fast one behind its queue
    assert worth_taking(view, model, 0.0, 20)
    # 1,000 tokens: 40 s there against 22 s on the fast pod; the slack is 2 s
    assert not worth_taking(view, model, 0.0, 1000)
    assert not worth_taking(view, model, 15.9, 1000)
    # having held out for the difference, it takes the slow slot after all
    assert worth_taking(view, model, 16.0, 1000)


def test_no_room_anywhere_is_no_room_and_room_everywhere_is_room() -> None:
    model = ServiceTime(200)
    assert not worth_taking(two_pods(5, 5), model, 1e9, 1)
    assert worth_taking(two_pods(0, 0), model, 0.0, 100_000)


def test_unmeasured_paces_never_hold_a_request_back() -> None:
    view = RoomView([endpoint(FAST, 5, 4, 0.0), endpoint(SLOW, 0, 4, 0.0)])
    assert worth_taking(view, ServiceTime(200), 0.0, 100_000)


def test_the_time_the_room_has_been_busy_counts_against_what_a_faster_pod_saves() -> None:
    clock = Clock()
    views = [two_pods(5, 3)]
    busy = [0.0]
    room = StandardRoom(lambda: views[0], ServiceTime(200), 1000, clock, room_busy=lambda: busy[0])
    busy[0] = 60.0
    assert not room(True, False)  # arriving (not held): no room's time counts, it declines
    busy[0] = 15.9
    # held: the 18 s it would lose on the slow pod exceed the 2 s slack + 15.9 s of a busy room
    assert not room(True, True) and not room(False, True)
    busy[0] = 16.0
    assert room(True, True) and room(False, True)  # first in line or behind, the same room
    # without a room to ask, no time counts
    assert not StandardRoom(lambda: views[0], ServiceTime(200), 1000, clock)(True, True)


def test_a_pool_that_lost_its_endpoints_lets_the_waiter_through_to_its_503() -> None:
    def gone() -> RoomView:
        raise NoEndpoints("no ready endpoint")

    assert StandardRoom(gone, ServiceTime(), None, Clock())(True, True)
    assert CriticalRoom(gone, Clock())(True, True)


def test_a_critical_request_wants_a_free_slot_then_settles_for_a_short_queue() -> None:
    clock = Clock()
    full_without_queue = [RoomView([endpoint(FAST, 4, 4, 0.02), endpoint(SLOW, 5, 4, 0.04)])]
    room = CriticalRoom(lambda: full_without_queue[0], clock)
    assert not room(True, True)
    clock.now += CRITICAL_QUEUE_AFTER
    assert room(True, True)  # FAST's batch is full but nothing queues behind it
    assert CriticalRoom(lambda: two_pods(3, 5), clock)(True, True)  # a free slot at once
    # offered: free slots first, even on the slow pod
    assert [c.address for c in two_pods(4, 3).with_room(1)] == [SLOW]
    assert [c.address for c in two_pods(4, 3).with_room(0)] == [FAST, SLOW]


def test_sheddable_requests_keep_a_reserve_and_respect_saturation() -> None:
    shedder = Shedder(SaturationSettings(queue_depth=100, kv_cache_util=0.99))
    states = [endpoint(FAST, 3, 4, 0.02), endpoint(SLOW, 1, 4, 0.04)]
    assert [c.address for c in shedder.admit(states, 100.0)] == [SLOW]  # keeps 1 of 4 free
    with pytest.raises(Shed):
        shedder.admit([endpoint(FAST, 3, 4, 0.02)], 100.0)
    with pytest.raises(Shed):  # stale metrics count as saturated
        shedder.admit(states, 200.0)


def test_the_shedder_keeps_the_configured_aggregate() -> None:
    assert Shedder(SaturationSettings(aggregate="mean")).detector.aggregate == "mean"
    assert Shedder(SaturationSettings()).detector.aggregate == SaturationSettings().aggregate


POOL = "default/llama2-gpu-pool"
BODY = read_body(orjson.dumps({"model": "m", "prompt": "hello"}), 1 << 20)


async def test_the_view_is_built_once_per_snapshot() -> None:
    store = store_of_two()
    admission = AdmissionController(store, SaturationSettings(), FlowControl(store))
    first = admission.view(POOL)
    assert admission.view(POOL) is first
    lease = store.lease("127.0.0.2:8000", 10)
    assert admission.view(POOL) is not first  # the snapshot changed
    lease.release()
    with pytest.raises(NoEndpoints):
        admission.view(POOL, ["10.9.9.9"])


async def test_admit_waits_for_room_and_offers_only_endpoints_with_room() -> None:
    store = store_of_two(max_num_seqs=1)  # room: the declared batch of 1 per pod, no queue
    admission = AdmissionController(store, SaturationSettings(), FlowControl(store, timeout=5))
    leases = []
    for _ in range(2):
        offered = await admission.admit(BODY, POOL, 0)
        assert len(offered) == 2 - len(leases)
        leases.append(store.lease(offered[0].address, 1))
    waiting = asyncio.create_task(admission.admit(BODY, POOL, 0))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # both batches full: it waits here, not in a server's queue
    leases[1].release()  # the first slot that frees anywhere is its
    offered = await asyncio.wait_for(waiting, 1)
    # the full batch is on offer only for a prompt it may cache (warm-only: the scheduler
    # takes it only where its prefix gate keeps the hold)
    assert isinstance(offered, Offer)
    assert offered.warm_only == {leases[0].address}
    assert [c.address for c in offered if c.address not in offered.warm_only] == [leases[1].address]
    # a request no model runs never waits, and is offered every ready endpoint
    assert len(await admission.admit(NO_INFERENCE, POOL, 0)) == 2


async def test_a_learned_limit_keeps_a_queue_place_a_declared_one_does_not() -> None:
    """A learned limit may be a low first guess: a quarter of it (at least one) may queue so the
    server can show it runs more. The declared `--max-num-seqs` is the engine's hard cap."""
    declared = Endpoint(FAST, FAST, "default/pool", max_num_seqs=4)
    undeclared = Endpoint(SLOW, SLOW, "default/pool")
    learned_below = Endpoint(FAST, FAST, "default/pool", max_num_seqs=8)

    def at(ep: Endpoint, load: int, limit: int) -> EndpointState:
        return EndpointState(ep, EndpointMetrics(scraped_at=100.0), in_flight=load, limit=limit)

    assert (queue_slack(4, 4), queue_slack(4), queue_slack(6, 8), queue_slack(16)) == (0, 1, 1, 4)
    states = [at(declared, 4, 4), at(undeclared, 4, 4), at(learned_below, 6, 6)]
    assert [has_room(s) for s in states] == [False, True, True]
    assert RoomView(states).room == [False, True, True]
    assert [has_queue_room(s) for s in states] == [True, True, True]  # a session's next turn
    assert not has_room(at(undeclared, 5, 4)) and not has_queue_room(at(declared, 5, 4))


async def test_without_flow_control_nothing_waits() -> None:
    store = store_of_two(max_num_seqs=1)
    admission = AdmissionController(store, SaturationSettings())
    for _ in range(6):
        assert len(await admission.admit(BODY, POOL, 0)) == 2
        store.lease("127.0.0.2:8000", 1)


def test_admission_and_the_scorer_share_the_users_typical_answer_length() -> None:
    config = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "service-time-scorer", "parameters": {"typicalOutputTokens": 50}},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [
            {
                "name": "gpu-aware",
                "plugins": [
                    {"pluginRef": "service-time-scorer", "weight": 1},
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
    }
    assert service_time_of(load_config(config)).typical_output_tokens == 50
    no_scorer = {**config, "plugins": [{"type": "max-score-picker"}]}
    no_scorer["schedulingProfiles"] = [
        {"name": "gpu-aware", "plugins": [{"pluginRef": "max-score-picker"}]}
    ]
    assert service_time_of(load_config(no_scorer)) == ServiceTime()


def test_a_batch_limit_is_learned_from_a_lasting_queue_and_grows() -> None:
    learner = BatchLimitLearner()
    ep = Endpoint(FAST, FAST, "default/pool")
    queued = EndpointMetrics(waiting=2, running=6)
    assert learner.learn(ep, queued, 0) is None
    assert learner.learn(ep, EndpointMetrics(running=6), 0) is None  # the queue went away
    assert [learner.learn(ep, queued, 0) for _ in range(3)] == [None, None, 6]
    assert learner.learn(ep, EndpointMetrics(running=7), 6) == 7  # it ran more: the limit grows
    assert learner.learn(ep, EndpointMetrics(running=5, waiting=1), 7) is None
    learner.forget(FAST)
    assert learner.learn(ep, queued, 0) is None  # counting starts over


def test_below_a_declared_batch_size_only_a_full_kv_cache_teaches_a_limit() -> None:
    learner = BatchLimitLearner()
    declared = Endpoint(FAST, FAST, "default/pool", max_num_seqs=8)
    half = EndpointMetrics(waiting=3, running=4, kv_usage=0.5)
    assert [learner.learn(declared, half, 0) for _ in range(4)] == [None] * 4
    full_kv = EndpointMetrics(waiting=3, running=4, kv_usage=0.95)
    assert learner.learn(declared, full_kv, 0) == 4


def test_the_room_view_agrees_with_the_room_rules_endpoint_by_endpoint() -> None:
    rng = random.Random(11)
    states = [
        endpoint(f"10.0.{i}.1:8000", rng.randrange(12), rng.choice((0, 1, 3, 4, 8)), 0.02)
        for i in range(300)
    ]
    view = RoomView(states)
    assert view.room == [has_room(s) for s in states]
    assert view.any_free == any(free(s) for s in states)
    assert view.any_probe == any(probe(s) for s in states)
    assert [has_room(replace(s, healthy=False)) for s in states[:20]] == [False] * 20


def test_a_request_of_unknown_length_takes_the_first_free_slot_anywhere() -> None:
    clock = Clock()
    views = [two_pods(fast_load=5, slow_load=3)]  # only the slow pod has a free slot
    told = StandardRoom(lambda: views[0], ServiceTime(200), 1000, clock)
    unknown = StandardRoom(lambda: views[0], ServiceTime(200), 1000, clock, free_first=True)
    assert not told(True, True)  # a long answer, known to be long, holds out for the fast pod
    assert unknown(True, True)  # nothing says this one is long: it goes now
    queued_only = [two_pods(fast_load=4, slow_load=4)]  # room only as queue places
    room = StandardRoom(lambda: queued_only[0], ServiceTime(200), 1000, clock, free_first=True)
    assert room(True, False) == worth_taking(queued_only[0], ServiceTime(200), 0.0, 1000)
    assert [c.address for c in two_pods(4, 3).with_room(0, free_first=True)] == [SLOW]


def test_a_held_request_takes_a_free_slot_not_a_place_in_a_servers_queue() -> None:
    clock = Clock()
    queued_only = [two_pods(fast_load=4, slow_load=4)]  # both batches full, queue places left
    arriving = StandardRoom(lambda: queued_only[0], ServiceTime(200), 10, clock)
    assert arriving(True, False)  # nobody waits: a queue place is as good as any
    held = StandardRoom(lambda: queued_only[0], ServiceTime(200), 10, clock)
    assert not held(True, True)  # others contend: the room's order would be lost in there
    assert not held(False, True)
    clock.now += CRITICAL_QUEUE_AFTER
    assert not held(False, True)  # behind others, it never probes
    assert held(True, True)  # the head of the line, after a while, probes a full batch
    assert held(True, True) and StandardRoom(lambda: two_pods(3, 4), ServiceTime(200), 10, clock)(
        False, True
    )  # a free slot: at once
