"""Answer lengths learned per model: a cap is a cap, unless answers keep running into it."""

from __future__ import annotations

import random

import orjson
import pytest

from epp.admission.rooms import RoomView, StandardRoom
from epp.observability import EppMetrics
from epp.scheduling.output_length import MIN_SAMPLES, LengthPlan, OutputLengths
from epp.scheduling.service_time import ServiceTime
from epp.tracking.tracker import Tracking
from epp.types import Endpoint, EndpointMetrics, EndpointState
from tests.factories import SERVED, director, seed_store


def test_until_enough_answers_are_seen_a_cap_only_bounds_the_prior() -> None:
    """No answer says yet whether caps tell lengths: a production cap of 1,024 is not a
    1,024-token answer (planned as told, every request of a fresh EPP held out for a fast pod)."""
    lengths = OutputLengths(prior=200)
    assert lengths.plan("m", None) == LengthPlan(200, 200, told=False)
    assert lengths.plan("m", 64) == LengthPlan(64, 200, told=False)
    assert lengths.plan("m", 1024) == LengthPlan(200, 200, told=False)
    for _ in range(MIN_SAMPLES - 1):
        lengths.observe("m", 100, 1024)
    assert lengths.plan("m", 1024) == LengthPlan(200, 200, told=False)
    lengths.observe("m", 100, 1024)  # enough: what answers have been, under the cap
    assert lengths.plan("m", 1024) == LengthPlan(100, 100, told=False)


def test_a_fresh_epp_does_not_hold_a_capped_request_for_a_fast_pod() -> None:
    """What admission does with the plan (as `AdmissionController` builds the room test): a
    request waiting for room, with a production cap and no answer seen yet, takes the free slot
    on a slow GPU rather than waiting for the fast one's batch, as it does once answers are
    learned to fall far short of the cap."""

    def state(address: str, load: int, tpot: float) -> EndpointState:
        ep = Endpoint(address, address, "default/pool")
        metrics = EndpointMetrics(scraped_at=100.0)
        return EndpointState(ep, metrics, in_flight=load, limit=8, tpot=tpot)

    # a full H100-like pod and a MIG slice ~3x slower at decoding, with one free slot
    view = RoomView([state("10.0.0.1:8000", 9, 0.03), state("10.0.0.2:8000", 7, 0.09)])
    lengths = OutputLengths(prior=200)

    def takes_the_slot() -> bool:
        plan = lengths.plan("m", 1024)
        room = StandardRoom(
            lambda: view, ServiceTime(200), plan.expected, lambda: 100.0, plan.typical,
            free_first=not plan.told,
        )  # fmt: skip
        return room(True, True)  # first in line, held: only a free slot will do

    assert takes_the_slot()
    for _ in range(MIN_SAMPLES):
        lengths.observe("m", 100, 1024)
    assert takes_the_slot()


def test_a_production_cap_plans_with_what_answers_have_been() -> None:
    rng = random.Random(3)
    lengths = OutputLengths(prior=200)
    answers = [rng.randint(20, 280) for _ in range(400)]
    for n in answers:
        lengths.observe("m", n, 1024)
    recent = answers[-512:]
    mean = sum(recent) / len(recent)
    plan = lengths.plan("m", 1024)
    assert plan.expected == pytest.approx(mean, abs=8)  # refreshed every few answers
    assert plan.typical == plan.expected and not plan.told
    # a smaller cap cuts the expectation: E[min(L, 100)]
    cut = sum(min(n, 100) for n in recent) / len(recent)
    assert lengths.plan("m", 100).expected == pytest.approx(cut, abs=5)
    assert lengths.plan("m", None).expected == plan.typical
    assert lengths.plan("other-model", 1024) == LengthPlan(200, 200, told=False)


def test_a_cap_answers_run_into_is_the_length() -> None:
    lengths = OutputLengths(prior=200)
    rng = random.Random(4)
    for _ in range(100):
        cap = rng.randint(10, 500)
        lengths.observe("m", cap, cap)  # the client announced each length
    assert lengths.plan("m", 37).expected == 37
    assert lengths.plan("m", 480).expected == 480
    assert lengths.plan("m", 480).told


def test_bad_figures_are_refused_or_ignored() -> None:
    with pytest.raises(ValueError):
        OutputLengths(prior=0)
    lengths = OutputLengths()
    lengths.observe("m", 0, None)
    assert lengths.snapshot() == {}


CHAT = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def answer(tracking: Tracking, tokens: int, cap: int | None, finish: bool = True) -> None:
    body = {**CHAT, "max_tokens": cap} if cap else CHAT
    tracker = await tracking.start({}, orjson.dumps(body))
    tracker.response_headers(200, "text/event-stream", None)
    usage = {"prompt_tokens": 3, "completion_tokens": tokens}
    event = orjson.dumps({"model": SERVED, "choices": [], "usage": usage})
    tracker.response_body(b"data: " + event + b"\n\n", False)
    if finish:
        tracker.response_body(b"data: [DONE]\n\n", True)
    tracker.complete()


async def test_the_tracker_teaches_whole_answers_only() -> None:
    store = seed_store()
    d = director(store)
    tracking = Tracking(d, store, EppMetrics())
    for _ in range(MIN_SAMPLES):
        await answer(tracking, 90, 1024)
    await answer(tracking, 3, 1024, finish=False)  # the client went away: not an answer length
    seen = d.lengths.snapshot()[SERVED]
    assert seen["answers"] == MIN_SAMPLES and seen["mean"] == 90
    assert seen["cap_hits"] == 0.0
    assert d.lengths.plan(SERVED, 1024) == LengthPlan(90, 90, told=False)
