"""Answer lengths learned per model: a cap is a cap, unless answers keep running into it."""

from __future__ import annotations

import random

import orjson
import pytest

from epp.observability import EppMetrics
from epp.scheduling.output_length import MIN_SAMPLES, LengthPlan, OutputLengths
from epp.tracking.tracker import Tracking
from tests.factories import SERVED, director, seed_store


def test_until_enough_answers_are_seen_the_cap_or_the_prior_stands() -> None:
    lengths = OutputLengths(prior=200)
    assert lengths.plan("m", None) == LengthPlan(200, 200, told=False)
    assert lengths.plan("m", 64) == LengthPlan(64, 200, told=True)
    for _ in range(MIN_SAMPLES - 1):
        lengths.observe("m", 100, 1024)
    assert lengths.plan("m", 1024) == LengthPlan(1024, 200)


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
    assert lengths.plan("other-model", 1024) == LengthPlan(1024, 200)


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
