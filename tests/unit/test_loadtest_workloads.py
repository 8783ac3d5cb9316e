"""loadtest/workloads.py: seeded, reproducible shapes with the lengths and sharing they promise."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest

from loadtest.workloads import (
    CHARS_PER_TOKEN,
    Conversation,
    SharedPrefixShape,
    poisson_arrivals,
    shared_prefix,
    sharegpt_like,
    text,
    workload,
)


def test_text_is_about_the_asked_tokens_and_seeded() -> None:
    a = text(random.Random(5), 100)
    assert len(a) == 100 * CHARS_PER_TOKEN
    assert a == text(random.Random(5), 100)
    assert a != text(random.Random(6), 100)


def test_sharegpt_like_is_reproducible_with_long_tails() -> None:
    first = list(itertools.islice(sharegpt_like(7), 400))
    again = list(itertools.islice(sharegpt_like(7), 400))
    assert first == again
    prompts = [r.prompt_chars / CHARS_PER_TOKEN for r in first]
    outputs = [r.max_tokens for r in first]
    assert 120 < statistics.median(prompts) < 300
    assert 90 < statistics.median(outputs) < 180
    assert max(prompts) > 3 * statistics.median(prompts)  # a long tail, not a constant
    assert all(4 <= o <= 512 for o in outputs)
    # distinct requests share no cacheable 16-token block at the start
    starts = {r.messages[0][1][:64] for r in first}
    assert len(starts) == len(first)


def test_shared_prefix_uses_few_long_system_prompts() -> None:
    shape = SharedPrefixShape(groups=4, system_tokens=500, question_tokens=20)
    reqs = list(itertools.islice(shared_prefix(3, shape), 200))
    systems = {r.messages[0][1] for r in reqs}
    assert len(systems) == 4
    assert all(len(s) >= 500 * CHARS_PER_TOKEN for s in systems)
    assert {r.group for r in reqs} == {f"group-{g}" for g in range(4)}
    assert len({r.messages[1][1] for r in reqs}) == 200
    assert all(shape.output_min <= r.max_tokens <= shape.output_max for r in reqs)


def test_request_body_streams_with_usage() -> None:
    req = next(shared_prefix(1))
    body = req.body("m")
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == req.max_tokens
    assert "stream_options" not in req.body("m", stream=False)


def test_unknown_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        workload("nope", 1)


def test_conversation_grows_its_history() -> None:
    conv = Conversation(random.Random(1), "system text", "c1", max_turns=2)
    first = conv.next_request()
    conv.answered("answer one")
    second = conv.next_request()
    assert second.messages[: len(first.messages)] == first.messages
    assert second.messages[len(first.messages)] == ("assistant", "answer one")
    conv.answered("answer two")
    assert conv.done


def test_poisson_arrivals_match_the_rate_and_stay_bounded() -> None:
    arrivals = poisson_arrivals(1, 20.0, 50.0)
    assert arrivals == sorted(arrivals)
    assert all(0 <= t < 50.0 for t in arrivals)
    assert 900 < len(arrivals) < 1100
    assert poisson_arrivals(1, 0.0, 10.0) == []
