"""Flow control: full pods hold requests in the EPP, best priority first; sheddable ones are
refused; a wait has a deadline; a cancelled wait leaves no trace."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

import orjson
import pytest
from prometheus_client import CollectorRegistry

from epp.admission.flow_control import FlowControl
from epp.admission.limits import BatchLimitLearner
from epp.admission.rooms import has_room, keeps_reserve
from epp.api.model import ModelRoute, ResourceSet
from epp.datastore import Datastore
from epp.director import Decision, Director
from epp.errors import QueueFull, Shed, TTLExpired
from epp.observability import EppMetrics
from epp.scheduling.output_length import MIN_SAMPLES
from epp.settings import ProtocolSettings, SaturationSettings
from epp.types import EndpointMetrics
from tests.factories import SERVED, fresh, pod, pool
from tests.factories import director as make_director

A, B = "127.0.0.2:8000", "127.0.0.3:8000"


def full(running: int = 1, waiting: int = 2) -> EndpointMetrics:
    return fresh(waiting=waiting, running=running)


def setup(
    timeout: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    max_num_seqs: int | None = None,
    max_requests: int = 0,
    max_bytes: int = 0,
) -> tuple[Datastore, Director, FlowControl]:
    store = Datastore(BatchLimitLearner())
    models = tuple(
        ModelRoute("default", name, name, "default/llama2-gpu-pool", priority)
        for name, priority in (("crit", 1), ("std", 0), ("shed", -1))
    )
    pods = tuple(
        replace(pod(name, ip), max_num_seqs=max_num_seqs)
        for name, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3"))
    )
    store.apply_resources(ResourceSet((pool(),), models, pods))
    flow = FlowControl(store, timeout, max_requests, max_bytes, clock=clock)
    saturation = SaturationSettings(queue_depth=100, kv_cache_util=0.99)  # only the limit counts
    director = make_director(store, 3, saturation=saturation, flow=flow, clock=clock)
    for _ in range(MIN_SAMPLES):  # these clients announce lengths: answers run into their
        director.lengths.observe(SERVED, 200, 200)  # caps, so a cap tells the length
    return store, director, flow


def body(model: str, max_tokens: int | None = None) -> bytes:
    payload: dict[str, object] = {"model": model, "prompt": "hello"}
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    return orjson.dumps(payload)


def learn_limit_one(store: Datastore) -> None:
    for _ in range(3):  # a queue seen on three scrapes in a row: the batch holds one request
        store.set_metrics(A, full())
        store.set_metrics(B, full())
    assert [s.limit for s in store.candidates("default/llama2-gpu-pool")] == [1, 1]


async def test_a_single_queued_scrape_teaches_nothing() -> None:
    store, _, _ = setup()
    store.set_metrics(A, full(running=3, waiting=1))
    store.set_metrics(A, fresh(running=3))
    store.set_metrics(A, full(running=3, waiting=1))
    assert store.candidates("default/llama2-gpu-pool")[0].limit == 0


async def test_critical_overtakes_standard_and_sheddable_is_refused() -> None:
    store, director, flow = setup()
    learn_limit_one(store)
    store.set_metrics(A, fresh())
    store.set_metrics(B, fresh())
    # limit 1 plus a queue of one: two requests per pod, then both are full
    admitted = [await director.handle({}, body("std")) for _ in range(4)]
    assert sorted(d.endpoints[0] for d in admitted) == [A, A, B, B]
    first, *others = admitted
    with pytest.raises(Shed):
        await director.handle({}, body("shed"))
    order: list[str] = []

    async def request(model: str) -> None:
        decision = await director.handle({}, body(model))
        order.append(model)
        await asyncio.sleep(0.01)
        decision.lease.release()

    standard = asyncio.create_task(request("std"))
    await asyncio.sleep(0.01)
    critical = asyncio.create_task(request("crit"))
    await asyncio.sleep(0.01)
    assert order == [] and flow.queued("default/llama2-gpu-pool") == 2
    first.lease.release()  # one slot frees: the critical request, queued later, goes first
    await asyncio.gather(standard, critical, asyncio.sleep(0))
    for decision in others:
        decision.lease.release()
    assert order == ["crit", "std"]
    assert flow.queued("default/llama2-gpu-pool") == 0
    assert all(s.in_flight == 0 for s in store.candidates("default/llama2-gpu-pool"))


async def test_waiting_has_a_deadline_and_a_cancelled_wait_leaves_the_queue() -> None:
    store, director, flow = setup(timeout=0.05)
    learn_limit_one(store)
    with pytest.raises(TTLExpired) as info:
        await director.handle({}, body("std"))
    assert info.value.status == 503
    waiting = asyncio.create_task(director.handle({}, body("crit")))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert flow.queued("default/llama2-gpu-pool") == 0


async def fill_both(director: Director) -> list[Decision]:
    """Limit 1 plus a queue of one on both pods: four standard requests fill them."""
    return [await director.handle({}, body("std")) for _ in range(4)]


async def test_a_full_waiting_room_answers_429_at_once_per_priority() -> None:
    store, director, flow = setup(max_requests=1)
    learn_limit_one(store)
    store.set_metrics(A, fresh())
    store.set_metrics(B, fresh())
    admitted = await fill_both(director)
    waiting = asyncio.create_task(director.handle({}, body("std")))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull) as info:  # the standard band holds one request already
        await director.handle({}, body("std"))
    assert info.value.status == 429 and "--queue-max-requests 1" in info.value.message
    critical = asyncio.create_task(director.handle({}, body("crit")))  # its own band
    await asyncio.sleep(0.01)
    assert flow.queued("default/llama2-gpu-pool") == 2
    admitted[0].lease.release()
    admitted[1].lease.release()
    await asyncio.wait_for(asyncio.gather(waiting, critical), 1)
    assert flow.queued("default/llama2-gpu-pool") == 0


async def test_the_waiting_room_counts_body_bytes() -> None:
    store, director, flow = setup(max_bytes=2 * len(body("std")))
    learn_limit_one(store)
    store.set_metrics(A, fresh())
    store.set_metrics(B, fresh())
    admitted = await fill_both(director)
    first = asyncio.create_task(director.handle({}, body("std")))
    second = asyncio.create_task(director.handle({}, body("std")))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFull, match="--queue-max-bytes"):  # a third body would not fit
        await director.handle({}, body("std"))
    admitted[0].lease.release()
    await asyncio.wait_for(first, 1)  # one left: room for another body
    third = asyncio.create_task(director.handle({}, body("std")))
    await asyncio.sleep(0.01)
    assert flow.queued("default/llama2-gpu-pool") == 2
    for decision in admitted[1:]:
        decision.lease.release()
    await asyncio.wait_for(asyncio.gather(second, third), 1)


async def test_waiting_requests_are_exported_per_priority_and_flow_with_their_outcomes() -> None:
    store, _, flow = setup()
    trusted = ProtocolSettings(trust_control_headers=True)  # the gateway sets the fairness id
    saturation = SaturationSettings(queue_depth=100, kv_cache_util=0.99)
    director = make_director(store, 3, trusted, saturation, flow)
    registry = CollectorRegistry()
    metrics = EppMetrics(registry)
    flow.on_outcome = metrics.queue_outcome

    def exported(metric: str, priority: str, flow_id: str = "default-flow") -> float | None:
        metrics.refresh_pools(store, flow)
        labels = {"inference_pool": "llama2-gpu-pool", "priority": priority}
        labels["fairness_id"] = flow_id
        return registry.get_sample_value(f"inference_extension_flow_control_queue_{metric}", labels)

    def outcomes(priority: str, flow_id: str, outcome: str) -> float | None:
        labels = {"inference_pool": "llama2-gpu-pool", "priority": priority}
        labels |= {"fairness_id": flow_id, "outcome": outcome}
        name = "inference_extension_flow_control_request_queue_duration_seconds_count"
        return registry.get_sample_value(name, labels)

    assert exported("size", "0") == 0 and exported("size", "1") is None  # standard: always
    learn_limit_one(store)
    store.set_metrics(A, fresh())
    store.set_metrics(B, fresh())
    admitted = await fill_both(director)
    tenant = {"x-gateway-inference-fairness-id": "tenant-a"}
    waiting = [
        asyncio.create_task(director.handle(tenant, body("std"))),
        asyncio.create_task(director.handle({}, body("crit"))),
    ]
    await asyncio.sleep(0.01)
    assert (exported("size", "0", "tenant-a"), exported("size", "1")) == (1, 1)
    assert exported("size", "0") == 0
    assert exported("bytes", "0", "tenant-a") == len(body("std"))
    for decision in admitted[:2]:
        decision.lease.release()
    await asyncio.wait_for(asyncio.gather(*waiting), 1)
    assert (exported("size", "0", "tenant-a"), exported("size", "1")) == (None, None)
    assert outcomes("0", "default-flow", "Dispatched") == 4  # the first four, at once
    assert outcomes("0", "tenant-a", "Dispatched") == 1
    assert outcomes("1", "default-flow", "Dispatched") == 1


async def test_without_a_learned_limit_nothing_waits() -> None:
    store, director, flow = setup()
    store.set_metrics(A, fresh(waiting=0, running=50))
    decisions = [await director.handle({}, body("std")) for _ in range(20)]
    assert len(decisions) == 20 and flow.queued("default/llama2-gpu-pool") == 0


async def test_sheddable_requests_leave_a_reserve_for_the_others() -> None:
    store, director, _ = setup()
    for _ in range(3):  # batch limit 4 on both pods
        store.set_metrics(A, full(running=4))
        store.set_metrics(B, full(running=4))
    store.set_metrics(A, fresh(running=3))
    store.set_metrics(B, fresh(running=3))
    states = store.candidates("default/llama2-gpu-pool")
    assert all(has_room(s) and not keeps_reserve(s, 0.25) for s in states)
    with pytest.raises(Shed):
        await director.handle({}, body("shed"))
    assert (await director.handle({}, body("std"))).endpoints


async def test_a_low_first_limit_grows_when_the_server_runs_more() -> None:
    store, _, _ = setup()
    for _ in range(3):
        store.set_metrics(A, full(running=2))
    assert store.candidates("default/llama2-gpu-pool")[0].limit == 2
    store.set_metrics(A, fresh(running=3))  # the slack let a third in, and it runs
    assert store.candidates("default/llama2-gpu-pool")[0].limit == 3


async def fill_fast_and_slow(store: Datastore, director: Director) -> list[Decision]:
    """A streams at 25 ms per token, B at 50 ms; limit 1 (+ a queue of one) each, both full."""
    learn_limit_one(store)
    store.record_tokens(A, 2.5, 100)
    store.record_tokens(B, 5.0, 100)
    store.set_metrics(A, fresh())
    store.set_metrics(B, fresh())
    admitted = [await director.handle({}, body("std", 10)) for _ in range(4)]
    assert sorted(d.endpoints[0] for d in admitted) == [A, A, B, B]
    return admitted


Picked = list[tuple[int, str]]


async def long_then_short(
    director: Director, flow: FlowControl, short_tokens: int
) -> tuple[Picked, asyncio.Task[None], asyncio.Task[None]]:
    """A request told 400 tokens, then 10 ms later one told `short_tokens`, both held: what
    each picked (in the order they got their endpoints) and their tasks."""
    picked: Picked = []

    async def request(max_tokens: int) -> None:
        decision = await director.handle({}, body("std", max_tokens))
        picked.append((max_tokens, decision.endpoints[0]))

    long_ = asyncio.create_task(request(400))
    await asyncio.sleep(0.01)
    short = asyncio.create_task(request(short_tokens))
    await asyncio.sleep(0.01)
    assert flow.queued("default/llama2-gpu-pool") == 2
    return picked, long_, short


async def test_a_long_request_keeps_its_place_for_a_fast_pod_and_a_short_one_takes_the_slow() -> (
    None
):
    store, director, flow = setup()
    admitted = await fill_fast_and_slow(store, director)
    picked, long_, short = await long_then_short(director, flow, 10)
    on_fast = [d for d in admitted if d.endpoints[0] == A]
    on_fast[0].lease.release()  # A: a full batch with nothing queued (no place for a held one)
    # a batch slot frees on the slow pod: 400 tokens there cost 5 s more than waiting for A, so
    # the long request declines it (keeping its place) and the short one behind it takes it
    for decision in [d for d in admitted if d.endpoints[0] == B]:
        decision.lease.release()
    await asyncio.wait_for(short, 1)
    assert picked == [(10, B)] and not long_.done()
    on_fast[1].lease.release()  # now a fast slot
    await asyncio.wait_for(long_, 1)
    assert picked == [(10, B), (400, A)]


async def test_a_shorter_told_answer_that_came_later_takes_the_fast_slot_first() -> None:
    store, director, flow = setup()
    admitted = await fill_fast_and_slow(store, director)
    picked, long_, short = await long_then_short(director, flow, 20)
    for decision in [d for d in admitted if d.endpoints[0] == A]:
        decision.lease.release()  # a free slot on the fast pod
    # the short answer is due 0.9 s before the typical one, the long one 1 s after: 10 ms
    # of arrival order is nothing beside that
    await asyncio.wait_for(short, 1)
    assert picked == [(20, A)] and not long_.done()
    next(d for d in admitted if d.endpoints[0] == B).lease.release()
    await asyncio.sleep(0.01)
    assert not long_.done()  # it still holds out for the fast pod
    long_.cancel()


async def test_a_declined_slot_is_taken_once_waiting_cost_more_than_it_saves() -> None:
    now = [100.0]
    store, director, flow = setup(clock=lambda: now[0])
    admitted = await fill_fast_and_slow(store, director)
    waiting = asyncio.create_task(director.handle({}, body("std", 400)))
    next(d for d in admitted if d.endpoints[0] == B).lease.release()
    await asyncio.sleep(0.01)
    assert not waiting.done()  # declined the slow slot
    now[0] += 8.0  # 8 s waited + 2.5 s slack >= the 10 s the slow pod costs
    store.set_metrics(B, fresh())  # any event lets the queue look again
    decision = await asyncio.wait_for(waiting, 1)
    assert decision.endpoints[0] == B
    assert flow.queued("default/llama2-gpu-pool") == 0


async def test_a_short_stretch_with_no_room_does_not_make_a_long_request_take_a_slow_slot() -> None:
    now = [100.0]
    store, director, flow = setup(clock=lambda: now[0])
    admitted = await fill_fast_and_slow(store, director)
    waiting = asyncio.create_task(director.handle({}, body("std", 400)))
    await asyncio.sleep(0.01)
    now[0] += 5.0  # no room anywhere for 5 s
    assert flow.busy_for("default/llama2-gpu-pool", 0) == 5.0
    next(d for d in admitted if d.endpoints[0] == B).lease.release()
    await asyncio.sleep(0.01)
    # first in line, it still declines: the room's 5 s and the 2.5 s slack are less than the
    # 10 s the slow pod would cost it over the next fast slot
    assert not waiting.done()
    next(d for d in admitted if d.endpoints[0] == A).lease.release()
    decision = await asyncio.wait_for(waiting, 1)
    assert decision.endpoints[0] == A
    assert flow.queued("default/llama2-gpu-pool") == 0
    assert flow.busy_for("default/llama2-gpu-pool", 0) == 0.0


async def test_a_pool_past_capacity_for_longer_than_the_gain_fills_a_slow_slot() -> None:
    now = [100.0]
    store, director, flow = setup(clock=lambda: now[0])
    admitted = await fill_fast_and_slow(store, director)
    first = asyncio.create_task(director.handle({}, body("std", 400)))
    await asyncio.sleep(0.01)
    now[0] += 6.0
    second = asyncio.create_task(director.handle({}, body("std", 400)))  # joins a busy room
    await asyncio.sleep(0.01)
    now[0] += 2.0  # the room has held requests for 8 s without a break
    next(d for d in admitted if d.endpoints[0] == B).lease.release()
    # 8 s of a busy room + 2.5 s slack >= the 10 s the slow pod costs: the first in line takes
    # the slow slot rather than leave it idle while the room waits
    taken = await asyncio.wait_for(first, 1)
    assert taken.endpoints[0] == B
    await asyncio.sleep(0.01)
    assert not second.done()  # nothing free is left for it
    on_fast = [d for d in admitted if d.endpoints[0] == A]
    on_fast[0].lease.release()
    on_fast[1].lease.release()
    assert (await asyncio.wait_for(second, 1)).endpoints[0] == A
    assert flow.busy_for("default/llama2-gpu-pool", 0) == 0.0


async def test_a_critical_request_takes_the_first_free_slot_even_on_a_slow_pod() -> None:
    store, director, _ = setup()
    admitted = await fill_fast_and_slow(store, director)
    waiting = asyncio.create_task(director.handle({}, body("crit", 400)))
    await asyncio.sleep(0.01)
    for decision in [d for d in admitted if d.endpoints[0] == B]:
        decision.lease.release()  # a free batch slot on the slow pod
    decision = await asyncio.wait_for(waiting, 1)  # time to first token comes first
    assert decision.endpoints[0] == B


async def batch_and_queue_full(
    now: list[float],
) -> tuple[Datastore, Director, FlowControl, list[Decision]]:
    """Both pods: batch limit 1, one running and one queued (four standard requests)."""
    store, director, flow = setup(clock=lambda: now[0])
    learn_limit_one(store)
    store.set_metrics(A, fresh())
    store.set_metrics(B, fresh())
    admitted = [await director.handle({}, body("std")) for _ in range(4)]
    return store, director, flow, admitted


async def test_a_critical_request_waits_for_a_free_batch_slot_not_a_place_in_a_server_queue() -> (
    None
):
    now = [100.0]
    store, director, flow, admitted = await batch_and_queue_full(now)
    on_a = [d for d in admitted if d.endpoints[0] == A]
    on_a[0].lease.release()  # A: one running, room for one queued inside it
    waiting = asyncio.create_task(director.handle({}, body("crit")))
    await asyncio.sleep(0.01)
    assert not waiting.done() and flow.queued("default/llama2-gpu-pool") == 1
    on_a[1].lease.release()  # A's batch slot is free now
    decision = await asyncio.wait_for(waiting, 1)
    assert decision.endpoints[0] == A
    late = asyncio.create_task(director.handle({}, body("crit")))  # no free slot
    await asyncio.sleep(0.01)
    assert not late.done()
    now[0] += 1.0  # after a while a critical request takes queue room too (limits can grow)
    store.set_metrics(B, fresh())  # any event lets the queue look again
    assert (await asyncio.wait_for(late, 1)).endpoints[0] == A  # queued behind one there


async def test_after_its_wait_a_critical_request_queues_only_where_it_would_be_first_in_line() -> (
    None
):
    now = [100.0]
    store, director, flow, admitted = await batch_and_queue_full(now)
    late = asyncio.create_task(director.handle({}, body("crit")))
    await asyncio.sleep(0.01)
    now[0] += 1.0  # waited long enough to take queue room, but every queue is taken
    store.set_metrics(A, fresh())
    await asyncio.sleep(0.01)
    assert not late.done() and flow.queued("default/llama2-gpu-pool") == 1
    next(d for d in admitted if d.endpoints[0] == B).lease.release()  # B: one running, none queued
    assert (await asyncio.wait_for(late, 1)).endpoints[0] == B  # first in line there


async def test_a_declared_batch_size_counts_before_any_limit_is_learned() -> None:
    store, director, _ = setup(max_num_seqs=4)
    assert [s.limit for s in store.candidates("default/llama2-gpu-pool")] == [4, 4]
    store.set_metrics(A, fresh())  # idle servers: nothing learned from them
    store.set_metrics(B, fresh())
    # the pod spec's --max-num-seqs already keeps the sheddable reserve (1 of 4 slots)
    admitted = [await director.handle({}, body("shed")) for _ in range(6)]
    assert sorted(d.endpoints[0] for d in admitted) == [A, A, A, B, B, B]
    with pytest.raises(Shed):
        await director.handle({}, body("shed"))
    assert (await director.handle({}, body("crit"))).endpoints
    for _ in range(3):  # a queue at 3 running with room in the KV cache: one long step
        store.set_metrics(A, full(running=3, waiting=1))
    assert [s.limit for s in store.candidates("default/llama2-gpu-pool")] == [4, 4]
    for _ in range(3):  # the server queues at 3 running with its KV cache full: that is learned
        store.set_metrics(A, fresh(waiting=1, kv=0.95, running=3))
    assert [s.limit for s in store.candidates("default/llama2-gpu-pool")] == [3, 4]
    for _ in range(3):  # a queue at the declared size itself is learned whatever the cache
        store.set_metrics(B, full(running=4, waiting=1))
    assert [s.limit for s in store.candidates("default/llama2-gpu-pool")] == [3, 4]


def test_the_batch_limit_and_its_source_are_exported() -> None:
    store, _, _ = setup(max_num_seqs=4)
    registry = CollectorRegistry()
    metrics = EppMetrics(registry)

    def exported() -> dict[tuple[str, str], float | None]:
        metrics.refresh_pools(store)
        return {
            (address, source): registry.get_sample_value(
                "epp_endpoint_batch_limit",
                {"pool": "llama2-gpu-pool", "endpoint": address, "source": source},
            )
            for address in (A, B)
            for source in ("pod-spec", "learned")
        }

    assert exported() == {
        (A, "pod-spec"): 4,
        (A, "learned"): None,
        (B, "pod-spec"): 4,
        (B, "learned"): None,
    }
    for _ in range(3):  # a full KV cache at 3 running
        store.set_metrics(A, fresh(waiting=1, kv=0.95, running=3))
    assert exported() == {
        (A, "pod-spec"): None,
        (A, "learned"): 3,
        (B, "pod-spec"): 4,
        (B, "learned"): None,
    }


def test_flows_past_the_hundredth_share_one_series_of_the_outcome_histogram() -> None:
    registry = CollectorRegistry()
    metrics = EppMetrics(registry)
    for i in range(150):
        metrics.queue_outcome("default/p", 0, f"user-{i}", "Dispatched", 0.0)
    name = "inference_extension_flow_control_request_queue_duration_seconds_count"

    def count(flow: str) -> float | None:
        labels = {"inference_pool": "p", "priority": "0", "fairness_id": flow}
        return registry.get_sample_value(name, {**labels, "outcome": "Dispatched"})

    assert count("user-99") == 1 and count("user-100") is None and count("other") == 50
    metrics.queue_outcome("default/p", 0, "user-5", "Dispatched", 0.0)  # known: its own
    assert count("user-5") == 2
