"""Flows inside a band: fair turns by tokens, work-conserving; per-flow and per-pool bounds;
TTLs; sheddable waiters evicted by better arrivals; the drop reason each refusal carries."""

from __future__ import annotations

import asyncio

import pytest

from epp.admission.flow_control import FlowControl, Place
from epp.admission.flows import cost_of
from epp.admission.tickets import Tickets
from epp.api.model import RequestDefaults
from epp.datastore import Datastore
from epp.errors import BadRequest, Evicted, QueueFull, TTLExpired

POOL = "default/pool"


class Slots:
    """A room with `free` slots: a request that goes takes one."""

    def __init__(self, flow: FlowControl) -> None:
        self.free = 0
        self.flow = flow

    def test(self, first: bool, held: bool) -> bool:
        return self.free > 0

    def open(self, n: int = 1) -> None:
        for _ in range(n):
            self.free += 1
            self.flow.notify(POOL)


async def enqueue(
    flow: FlowControl, slots: Slots, order: list[str], name: str, priority: int, place: Place
) -> asyncio.Task[None]:
    async def wait() -> None:
        await flow.wait_for_room(POOL, priority, slots.test, place)
        slots.free -= 1
        order.append(name)

    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    return task


async def drain(slots: Slots, tasks: list[asyncio.Task[None]]) -> None:
    for _ in tasks:
        slots.open()
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*tasks), 1)


def setup(**kwargs: object) -> tuple[FlowControl, Slots]:
    flow = FlowControl(Datastore(), 5.0, **kwargs)  # type: ignore[arg-type]
    return flow, Slots(flow)


@pytest.mark.parametrize(("fair", "expected"), [(True, "ababaaaaaa"), (False, "aaaaaaaabb")])
async def test_two_flows_of_one_band_take_turns_and_without_fairness_arrival_order_wins(
    fair: bool, expected: str
) -> None:
    flow, slots = setup(fair=fair)
    order: list[str] = []
    tasks = [await enqueue(flow, slots, order, "a", 0, Place("a", cost=10)) for _ in range(8)]
    tasks += [await enqueue(flow, slots, order, "b", 0, Place("b", cost=10)) for _ in range(2)]
    assert flow.flows(POOL) == {(0, "a"): (8, 0), (0, "b"): (2, 0)}
    await drain(slots, tasks)
    assert "".join(order) == expected
    assert flow.flows(POOL) == {} and flow.queued(POOL) == 0


async def test_turns_are_weighted_by_tokens_not_by_requests() -> None:
    flow, slots = setup()
    order: list[str] = []
    long_ = [await enqueue(flow, slots, order, "L", 0, Place("long", cost=100)) for _ in range(3)]
    short = [await enqueue(flow, slots, order, "s", 0, Place("short", cost=10)) for _ in range(12)]
    await drain(slots, long_ + short)
    # one long request (100 tokens) per ten short ones (10 tokens each)
    assert "".join(order) == "L" + "s" * 10 + "L" + "s" * 2 + "L"


async def test_an_idle_flow_banks_no_credit_and_a_lone_flow_is_served_in_arrival_order() -> None:
    flow, slots = setup()
    order: list[str] = []
    tasks = [await enqueue(flow, slots, order, f"a{i}", 0, Place("a", cost=10)) for i in range(6)]
    slots.open(4)
    await asyncio.sleep(0)
    assert order == ["a0", "a1", "a2", "a3"]  # alone, it takes every slot in its own order
    # b was idle all along: it starts at the band's present, not with 4 requests' credit
    tasks += [await enqueue(flow, slots, order, f"b{i}", 0, Place("b", cost=10)) for i in range(3)]
    await drain(slots, tasks[4:])
    assert order[4:] == ["b0", "a4", "b1", "a5", "b2"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_inside_a_flow_the_waiter_due_first_goes_first_and_aging_bounds_the_overtaking() -> (
    None
):
    clock = Clock()
    flow, slots = setup(clock=clock)
    order: list[str] = []
    # a long answer (due 4 s after its arrival), then a short one 1 s later (due after 0.5 s):
    # the short one is due first and takes the first slot
    tasks = [await enqueue(flow, slots, order, "long", 0, Place("a", due=4.0))]
    clock.now += 1.0
    tasks.append(await enqueue(flow, slots, order, "short", 0, Place("a", due=0.5)))
    # one that came 3.6 s after the long one is due after it: the long one's wait has aged it
    clock.now += 2.6
    tasks.append(await enqueue(flow, slots, order, "late", 0, Place("a", due=0.5)))
    await drain(slots, tasks)
    assert order == ["short", "long", "late"]
    assert flow.queued(POOL) == 0 and flow.flows(POOL) == {}


async def test_a_short_answer_overtakes_only_inside_its_own_flow_and_fair_turns_stay() -> None:
    clock = Clock()
    flow, slots = setup(clock=clock)
    order: list[str] = []
    tasks = [await enqueue(flow, slots, order, "a-long", 0, Place("a", cost=10, due=9.0))]
    tasks.append(await enqueue(flow, slots, order, "b-long", 0, Place("b", cost=10, due=9.0)))
    tasks.append(await enqueue(flow, slots, order, "a-short", 0, Place("a", cost=10, due=0.1)))
    slots.open()
    await asyncio.sleep(0)
    # flow a's turn, taken by its shorter answer: b's turn is next, not a's other request
    assert order == ["a-short"]
    # a third flow arriving now starts at the band's present: the turn a's short answer took
    # (the head's), not the later one it left to a's long answer
    tasks.append(await enqueue(flow, slots, order, "c", 0, Place("c", cost=10)))
    await drain(slots, tasks[1:])
    assert order == ["a-short", "b-long", "c", "a-long"]


async def test_priority_still_comes_before_fairness() -> None:
    flow, slots = setup()
    order: list[str] = []
    tasks = [await enqueue(flow, slots, order, "std", 0, Place("a")) for _ in range(2)]
    tasks.append(await enqueue(flow, slots, order, "crit", 1, Place("b")))
    await drain(slots, tasks)
    assert order == ["crit", "std", "std"]


async def test_a_waiter_past_its_ttl_gets_ttl_expired_and_gives_its_turn_back() -> None:
    flow, slots = setup()
    order: list[str] = []
    with pytest.raises(TTLExpired) as info:
        await flow.wait_for_room(POOL, 0, slots.test, Place("a", cost=10, ttl=0.02))
    assert (info.value.status, info.value.reason) == (503, "TTLExpired")
    assert "TTL of 0.02s" in info.value.message
    assert flow.queued(POOL) == 0 and flow.flows(POOL) == {}
    # the expired request's cost was given back: flow a starts level with flow b
    tasks = [await enqueue(flow, slots, order, "b", 0, Place("b", cost=10))]
    tasks.append(await enqueue(flow, slots, order, "a", 0, Place("a", cost=10)))
    await drain(slots, tasks)
    assert order == ["b", "a"]


async def test_the_default_ttl_applies_without_a_ticket_ttl() -> None:
    flow = FlowControl(Datastore(), 0.02)
    with pytest.raises(TTLExpired, match=r"TTL of 0\.02s"):
        await flow.wait_for_room(POOL, 0, lambda first, held: False, Place())


async def test_a_better_arrival_evicts_the_newest_sheddable_waiter_when_the_pool_is_full() -> None:
    flow, slots = setup(max_pool_requests=3)
    order: list[str] = []
    old = await enqueue(flow, slots, order, "old", -1, Place("batch"))
    new = await enqueue(flow, slots, order, "new", -1, Place("batch"))
    std = await enqueue(flow, slots, order, "std", 0, Place("web"))
    crit = await enqueue(flow, slots, order, "crit", 1, Place("web"))  # full: evicts `new`
    await asyncio.sleep(0)
    assert new.done()
    with pytest.raises(Evicted) as info:
        new.result()
    assert (info.value.status, info.value.reason) == (429, "Evicted")
    assert flow.waiting(POOL) == {-1: (1, 0), 0: (1, 0), 1: (1, 0)}
    # a sheddable arrival evicts nobody of its own band, and a standard one no standard one
    with pytest.raises(QueueFull, match="--queue-max-pool-requests 3"):
        await flow.wait_for_room(POOL, -1, slots.test, Place("batch"))
    std2 = await enqueue(flow, slots, order, "std2", 0, Place("web"))  # evicts `old`
    with pytest.raises(Evicted):
        await asyncio.wait_for(old, 1)
    with pytest.raises(QueueFull) as full:
        await flow.wait_for_room(POOL, 1, slots.test, Place("web"))
    assert (full.value.status, full.value.reason) == (429, "QueueFull")
    await drain(slots, [crit, std, std2])
    assert order == ["crit", "std", "std2"] and flow.queued(POOL) == 0


async def test_one_flow_may_not_fill_the_band_past_its_own_bound() -> None:
    flow, slots = setup(max_flow_requests=2)
    order: list[str] = []
    tasks = [await enqueue(flow, slots, order, "a", 0, Place("a")) for _ in range(2)]
    with pytest.raises(QueueFull, match=r"for flow .a.*--queue-max-flow-requests 2"):
        await flow.wait_for_room(POOL, 0, slots.test, Place("a"))
    tasks.append(await enqueue(flow, slots, order, "b", 0, Place("b")))  # another tenant may
    tasks.append(await enqueue(flow, slots, order, "a", 1, Place("a")))  # and another band
    await drain(slots, tasks)
    assert sorted(order) == ["a", "a", "a", "b"]


async def test_a_cancelled_waiter_leaves_no_flow_behind() -> None:
    flow, slots = setup()
    task = await enqueue(flow, slots, [], "a", 0, Place("a", size=10))
    assert flow.flows(POOL) == {(0, "a"): (1, 10)}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert flow.flows(POOL) == {} and flow.waiting(POOL) == {}


def test_cost_counts_output_tokens_double() -> None:
    assert cost_of(100, 50) == 200.0 and cost_of(0, 0) == 1.0


def test_a_ticket_reads_headers_then_the_models_defaults_then_the_epps_defaults() -> None:
    tickets = Tickets(30.0, fairness_header="X-User-Id")
    plain = tickets.ticket({})
    assert (plain.flow, plain.ttl, plain.ttl_told) == ("default-flow", 30.0, False)
    model = RequestDefaults(fairness_id="batch", ttl=600.0, ttft_ms=500.0)
    by_model = tickets.ticket({}, model)
    assert (by_model.flow, by_model.ttl, by_model.ttl_told) == ("batch", 600.0, True)
    assert (by_model.ttft_ms, by_model.tpot_ms) == (500.0, None)
    assert tickets.ticket({"x-user-id": "u1"}, model).flow == "u1"
    headers = {
        "x-gateway-inference-fairness-id": "tenant-a",
        "x-user-id": "u1",
        "x-gateway-inference-ttl-ms": "2500",
        "x-slo-ttft-ms": "800",
        "x-slo-tpot-ms": "40",
    }
    told = tickets.ticket(headers, model)  # a client's own fairness id decides nothing
    assert (told.flow, told.ttl, told.ttl_told) == ("u1", 2.5, True)
    assert (told.ttft_ms, told.tpot_ms) == (800.0, 40.0)
    trusted = Tickets(30.0, fairness_header="X-User-Id", trusted=True)
    assert trusted.ticket(headers, model).flow == "tenant-a"  # the gateway's, behind a trusted one
    assert trusted.ticket({"x-llm-d-inference-fairness-id": "t"}).flow == "t"


def test_a_client_may_shorten_its_ttl_but_not_lengthen_it_unless_the_gateway_is_trusted() -> None:
    longer = {"x-gateway-inference-ttl-ms": "900000"}
    assert Tickets(30.0).ticket(longer).ttl == 30.0
    assert Tickets(30.0).ticket(longer, RequestDefaults(ttl=60.0)).ttl == 60.0
    assert Tickets(30.0, trusted=True).ticket(longer).ttl == 900.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-gateway-inference-ttl-ms", "soon"),
        ("x-gateway-inference-ttl-ms", "-5"),
        ("x-slo-ttft-ms", "0"),
        ("x-slo-tpot-ms", "inf"),
        ("x-gateway-inference-fairness-id", "x" * 129),
    ],
)
def test_a_malformed_header_is_a_400_naming_it(name: str, value: str) -> None:
    with pytest.raises(BadRequest) as info:
        Tickets(30.0, trusted=True).ticket({name: value})
    assert info.value.status == 400
    assert (name in info.value.message) or ("fairness id" in info.value.message)
