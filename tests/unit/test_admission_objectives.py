"""Latency objectives: the online latency model learns what the pool does; a request is
offered only endpoints predicted to meet its objectives, waits while none does, and is refused
early (503 ObjectiveUnmet) when none could."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import orjson
import pytest
from prometheus_client import CollectorRegistry

from epp.admission.controller import AdmissionController
from epp.admission.flow_control import FlowControl
from epp.admission.tickets import Ticket
from epp.api.model import ResourceSet
from epp.datastore import Datastore
from epp.errors import ObjectiveUnmet
from epp.observability import EppMetrics
from epp.request import read_body
from epp.scheduling.latency import LatencyModel, OnlineLinear, features_of
from epp.settings import SaturationSettings
from epp.tracking.tracker import Tracking
from epp.types import Endpoint, EndpointMetrics, EndpointState
from tests.factories import director as make_director
from tests.factories import pod, pool, seed_store

POOL = "default/llama2-gpu-pool"
A, B = "127.0.0.2:8000", "127.0.0.3:8000"
BODY = read_body(orjson.dumps({"model": "m", "prompt": "x" * 800, "max_tokens": 50}), 1 << 20)


def state(load: int, limit: int = 4, tpot: float = 0.02) -> EndpointState:
    return EndpointState(
        Endpoint(A, A, POOL),
        EndpointMetrics(scraped_at=1.0),
        in_flight=load,
        limit=limit,
        tpot=tpot,
    )


def test_online_least_squares_finds_the_line_and_follows_a_change() -> None:
    model = OnlineLinear((0.0, 0.0))
    rng = random.Random(3)
    for _ in range(300):
        x = rng.uniform(0, 10)
        model.update((1.0, x), 2.0 + 3.0 * x)
    assert model.predict((1.0, 4.0)) == pytest.approx(14.0, rel=1e-3)
    for _ in range(3000):  # the pool got twice as slow: the forgetting model follows
        x = rng.uniform(0, 10)
        model.update((1.0, x), 4.0 + 6.0 * x)
    assert model.predict((1.0, 4.0)) == pytest.approx(28.0, rel=0.01)


def test_the_latency_model_learns_queueing_and_batch_effects_from_samples() -> None:
    model = LatencyModel()
    rng = random.Random(9)

    def truth(s: EndpointState, prompt: int) -> tuple[float, float]:
        queued = max(0, s.load + 1 - s.limit)
        batch = min(s.load + 1, s.limit)
        return 0.01 + prompt * 0.0001 + queued * 0.8 + batch * 0.004, 0.015 + batch * 0.002

    samples = [(state(rng.randrange(0, 8)), rng.randrange(10, 2000)) for _ in range(600)]
    for s, prompt in samples:
        ttft, tpot = truth(s, prompt)
        model.observe(features_of(s, prompt), ttft, tpot)
    errors = []
    for load in (0, 3, 5, 7):
        predicted = model.predict(state(load), 1000)
        ttft, tpot = truth(state(load), 1000)
        errors += [abs(predicted.ttft - ttft) / ttft, abs(predicted.tpot - tpot) / tpot]
    assert max(errors) < 0.1 and model.samples == 600


def store_of_two() -> Datastore:
    store = Datastore()
    pods = tuple(
        replace(pod(name, ip), max_num_seqs=2)
        for name, ip in (("a", "127.0.0.2"), ("b", "127.0.0.3"))
    )
    store.apply_resources(ResourceSet((pool(),), (), pods))
    for address in (A, B):
        store.record_tokens(address, 0.2, 10)  # 20 ms per output token
    return store


async def test_only_endpoints_predicted_to_meet_the_objective_are_offered() -> None:
    store = store_of_two()
    admission = AdmissionController(
        store, SaturationSettings(), FlowControl(store, 5.0), objectives_after=0
    )
    store.lease(A, 10)  # A: half its batch busy, B idle
    idle = admission.latency.predict(store.candidates(POOL)[1], BODY.prompt_tokens).ttft
    busy = admission.latency.predict(store.candidates(POOL)[0], BODY.prompt_tokens).ttft
    assert busy > idle
    tight = Ticket(ttft_ms=(idle + busy) / 2 * 1000)
    offered = await admission.admit(BODY, POOL, 0, ticket=tight)
    assert [c.address for c in offered] == [B]
    assert len(await admission.admit(BODY, POOL, 0)) == 2  # no objective: both


async def test_an_unreachable_objective_is_refused_at_once_with_its_reason() -> None:
    store = store_of_two()
    admission = AdmissionController(
        store, SaturationSettings(), FlowControl(store, 5.0), objectives_after=0
    )
    with pytest.raises(ObjectiveUnmet) as info:
        await admission.admit(BODY, POOL, 0, ticket=Ticket(ttft_ms=0.001))
    assert (info.value.status, info.value.reason) == (503, "ObjectiveUnmet")
    assert "even idle" in info.value.message


async def test_a_request_waits_while_no_endpoint_meets_it_then_gives_up_at_its_objective() -> None:
    store = store_of_two()
    flow = FlowControl(store, 5.0)
    admission = AdmissionController(store, SaturationSettings(), flow, objectives_after=0)
    leases = [store.lease(address, 10) for address in (A, A, B, B)]  # both batches full
    idle = admission.latency.predict(
        replace(store.candidates(POOL)[0], in_flight=0, in_flight_since_scrape=0), 100
    ).ttft
    ticket = Ticket(ttft_ms=(idle + 0.3) * 1000)
    waiting = asyncio.create_task(admission.admit(BODY, POOL, 0, ticket=ticket))
    await asyncio.sleep(0.02)
    assert not waiting.done() and flow.queued(POOL) == 1
    for lease in leases[:2]:
        lease.release()  # A is idle again: predicted in time
    offered = await asyncio.wait_for(waiting, 1)
    assert [c.address for c in offered] == [A]
    late = asyncio.create_task(admission.admit(BODY, POOL, 0, ticket=ticket))
    store.lease(A, 10)
    store.lease(A, 10)
    with pytest.raises(ObjectiveUnmet, match="in time"):
        await asyncio.wait_for(late, 2)  # no room came within its TTFT objective
    assert flow.queued(POOL) == 0


async def test_a_streamed_answer_teaches_the_model_and_counts_against_its_objective() -> None:
    store = seed_store()
    now = [100.0]
    d = make_director(store, clock=lambda: now[0])
    registry = CollectorRegistry()
    tracking = Tracking(d, store, EppMetrics(registry), clock=lambda: now[0])
    body = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}]}
    for ttft_ms, first_after in ((500, 0.2), (1000, 1.2)):
        tracker = await tracking.start(
            {"x-slo-ttft-ms": str(ttft_ms)}, orjson.dumps({**body, "stream": True})
        )
        assert tracker.decision.prediction is not None
        assert tracker.decision.objectives == (ttft_ms, None)
        tracker.response_headers(200, "text/event-stream", None)
        now[0] += first_after
        tracker.response_body(b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', False)
        now[0] += 0.5
        tracker.response_body(b"data: [DONE]\n\n", True)
    assert d.latency.samples == 2

    def attained(met: str) -> float | None:
        labels = {"model_name": "llama2-7b-chat", "objective": "ttft", "met": met}
        return registry.get_sample_value("epp_objective_attainment_total", labels)

    assert (attained("true"), attained("false")) == (1.0, 1.0)  # 200 ms of 500, 1200 ms of 1000
    count = registry.get_sample_value("epp_latency_prediction_error_ratio_count", {"kind": "ttft"})
    assert count == 2


async def test_objectives_decide_nothing_until_the_model_has_learned_from_answers() -> None:
    store = store_of_two()
    admission = AdmissionController(
        store, SaturationSettings(), FlowControl(store, 5.0), objectives_after=3
    )
    hopeless = Ticket(ttft_ms=0.001)
    assert len(await admission.admit(BODY, POOL, 0, ticket=hopeless)) == 2  # a first guess
    for _ in range(3):
        p = admission.predict(store.candidates(POOL)[0], BODY.prompt_tokens)
        admission.latency.observe(p.features, p.ttft, p.tpot)
    with pytest.raises(ObjectiveUnmet):
        await admission.admit(BODY, POOL, 0, ticket=hopeless)
