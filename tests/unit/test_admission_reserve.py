"""The fair reserve: a few free batch slots kept for flows under their fair share while flows
contend; a lone flow still gets every slot; a flow over its share probes only a full batch."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import orjson
import pytest

from epp.admission.flow_control import FlowControl
from epp.admission.rooms import CRITICAL_QUEUE_AFTER, FULL, RoomView, StandardRoom
from epp.admission.shares import Shares
from epp.api.model import ModelRoute, ResourceSet
from epp.datastore import Datastore
from epp.director import Decision, Director
from epp.scheduling.service_time import ServiceTime
from epp.settings import ProtocolSettings, SaturationSettings
from epp.types import Endpoint, EndpointMetrics, EndpointState
from tests.factories import director as make_director
from tests.factories import fresh, pod, pool

POOL = "default/llama2-gpu-pool"
A, B = "127.0.0.2:8000", "127.0.0.3:8000"


def test_the_reserve_is_a_share_of_the_slots_and_at_least_one() -> None:
    assert Shares(0.0).reserved(32) == 0
    assert Shares(0.06).reserved(32) == 2
    assert Shares(0.01).reserved(8) == 1
    assert Shares(0.25).reserved(0) == 0  # some limit unknown: nothing to keep
    with pytest.raises(ValueError, match="fair reserve"):
        Shares(1.0)


def test_a_flow_is_over_its_share_at_the_slots_over_the_active_flows() -> None:
    shares = Shares(0.25)
    ends = [shares.started(POOL, "a") for _ in range(4)]
    assert shares.under_share(POOL, "a", 8)  # a lone flow's share is every slot
    assert shares.under_share(POOL, "b", 8)  # b asks: two flows, 4 slots each, b holds none
    shares.waits(POOL, "b", 1)  # b waits: it is active
    assert not shares.under_share(POOL, "a", 8)  # a holds 4 of 8 between two flows
    assert shares.may_take_free(POOL, "a", 3, 8)  # more than the reserve (2) is free
    assert not shares.may_take_free(POOL, "a", 2, 8)  # only the reserve is free
    assert shares.may_take_free(POOL, "b", 1, 8)  # b is under its share
    ends[0]()
    assert shares.under_share(POOL, "a", 8)  # 3 of 8
    for end in ends[1:]:
        end()
    shares.waits(POOL, "b", -1)
    assert shares.active(POOL) == 0 and shares.running_flows(POOL) == {}


def endpoint(address: str, load: int, limit: int) -> EndpointState:
    ep = Endpoint(address, address, "default/pool")
    return EndpointState(ep, EndpointMetrics(scraped_at=100.0), in_flight=load, limit=limit)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_flow_over_its_share_sees_the_reserve_as_full_batches_and_probes_only_a_full_one() -> (
    None
):
    clock = Clock()
    view = RoomView([endpoint(A, 3, 4), endpoint(B, 4, 4)])  # one free slot: the reserve
    assert view.slot_counts() == (8, 1)
    assert view.mask(FULL) == ([False, True], True)
    over = StandardRoom(lambda: view, ServiceTime(200), 10, clock, fair_share=lambda v: False)
    under = StandardRoom(lambda: view, ServiceTime(200), 10, clock, fair_share=lambda v: True)
    assert under(True, True) and under(True, False)
    assert not over(True, False)  # not even as an arrival with nobody waiting
    assert not over(True, True)
    clock.now += CRITICAL_QUEUE_AFTER
    assert not over(False, True)  # behind others, never
    assert over(True, True)  # the head of the line, after a while, probes B's full batch
    assert [s.address for s in view.full()] == [B]
    no_full = RoomView([endpoint(A, 3, 4), endpoint(B, 3, 4)])
    assert not StandardRoom(
        lambda: no_full, ServiceTime(200), 10, clock, fair_share=lambda v: False
    )(True, True)


def setup(reserve: float) -> tuple[Datastore, Director, FlowControl]:
    store = Datastore()
    models = (ModelRoute("default", "std", "std", POOL, 0),)
    pods = tuple(
        replace(pod(name, ip), max_num_seqs=4)
        for name, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3"))
    )
    store.apply_resources(ResourceSet((pool(),), models, pods))
    store.set_metrics(A, fresh())
    store.set_metrics(B, fresh())
    flow = FlowControl(store, 5.0, fair_reserve=reserve)
    saturation = SaturationSettings(queue_depth=100, kv_cache_util=0.99)
    protocol = ProtocolSettings(trust_control_headers=True)  # the gateway names the flow
    director = make_director(store, 3, protocol=protocol, saturation=saturation, flow=flow)
    return store, director, flow


def send(director: Director, tenant: str) -> asyncio.Task[Decision]:
    body = orjson.dumps({"model": "std", "prompt": "hello", "max_tokens": 10})
    headers = {"x-gateway-inference-fairness-id": tenant}
    return asyncio.ensure_future(director.handle(headers, body))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_light_flow_finds_a_free_slot_while_a_flood_waits_and_a_lone_flow_takes_all() -> (
    None
):
    store, director, flow = setup(0.25)  # 8 slots, 2 kept
    light = [send(director, "b")]
    await settle()
    flood = [send(director, "a") for _ in range(8)]
    await settle()
    done = [t for t in flood if t.done()]
    assert len(done) == 5  # a stops where only the reserve is free (1 + 5 of 8)
    assert flow.queued(POOL) == 3
    assert flow.shares.running_flows(POOL) == {"a": 5, "b": 1}
    light.append(send(director, "b"))
    await settle()
    assert light[1].done()  # b, under its share, takes a reserved slot at once
    done[0].result().lease.release()
    await settle()
    assert flow.queued(POOL) == 3  # 2 free, both the reserve: a (4 of 8) waits
    done[1].result().lease.release()
    await settle()
    assert flow.queued(POOL) == 2  # 3 free: a takes the one past the reserve
    for task in light:
        task.result().lease.release()
    await settle()
    # b has gone: a is alone, and a lone flow takes the reserve too
    assert flow.queued(POOL) == 0 and all(t.done() for t in flood)
    flood += [send(director, "a") for _ in range(2)]
    await settle()
    assert all(t.done() for t in flood)
    assert [s.load for s in store.candidates(POOL)] == [4, 4]


async def test_without_a_reserve_the_flood_takes_every_free_slot() -> None:
    _, director, flow = setup(0.0)
    await send(director, "b")
    flood = [send(director, "a") for _ in range(8)]
    await settle()
    # the 7 free slots; the declared batches are full, so the eighth waits for a free slot
    assert sum(t.done() for t in flood) == 7 and flow.queued(POOL) == 1
    assert flow.shares.running_flows(POOL) == {}  # nothing counted without a reserve


def test_without_a_reserve_or_a_known_limit_every_flow_may_take_a_free_slot() -> None:
    none = Shares(0.0)
    none.waits(POOL, "b", 1)
    none.started(POOL, "a")
    assert none.may_take_free(POOL, "a", 0, 8)
    assert Shares(0.25).may_take_free(POOL, "a", 0, 0)  # some limit unknown
