"""Answer lengths learned from what the engines count, with no response body read."""

from __future__ import annotations

from dataclasses import replace

from epp.answer_lengths import AnswerBatch, EngineAnswers
from epp.scheduling.output_length import OutputLengths
from epp.scrape.parser import parse_metrics
from epp.types import ENGINE_VLLM, EndpointMetrics
from tests.unit.test_datastore import fresh, pod, store_with

A = "10.0.0.1:8000"
M = "meta-llama/Llama-2-7b-hf"


def page(tokens: float, answers: float, at_cap: float = 0.0) -> EndpointMetrics:
    return EndpointMetrics(
        answer_tokens=tokens, answers=answers, answers_at_cap=at_cap, answers_model=M
    )


def test_the_growth_between_scrapes_is_a_batch_of_answers() -> None:
    engine = EngineAnswers()
    assert engine.observe(A, page(1000, 10)) is None  # counting starts
    assert engine.observe(A, page(1000, 10)) is None  # nothing finished
    assert engine.observe(A, page(1600, 14, 1)) == AnswerBatch(M, 4, 150.0, 1)
    assert engine.observe(A, page(30, 1)) is None  # restarted engine: counting starts again
    assert engine.observe(A, page(130, 2)) == AnswerBatch(M, 1, 100.0, 0)
    assert engine.observe(A, EndpointMetrics()) is None  # an engine without the histogram


def test_the_parser_reads_the_generation_histogram_and_the_cap_finishes() -> None:
    text = (
        'vllm:num_requests_running{model_name="m"} 1\n'
        'vllm:num_requests_waiting{model_name="m"} 0\n'
        'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
        'vllm:request_success_total{finished_reason="stop",model_name="m"} 5.0\n'
        'vllm:request_success_total{finished_reason="length",model_name="m"} 2.0\n'
        'vllm:request_generation_tokens_bucket{le="+Inf",model_name="m"} 7.0\n'
        'vllm:request_generation_tokens_sum{model_name="m"} 900.0\n'
        'vllm:request_generation_tokens_count{model_name="m"} 7.0\n'
    )
    m = parse_metrics(text, ENGINE_VLLM, 0.0)
    assert (m.answer_tokens, m.answers, m.answers_at_cap, m.answers_model) == (900, 7, 2, "m")


def test_a_common_cap_is_planned_with_the_learned_length_not_as_the_answer() -> None:
    lengths = OutputLengths(prior=200, min_samples=20)
    assert lengths.plan(M, 1024).expected == 200  # nothing learned yet: the prior, under the cap
    lengths.observe_batch(AnswerBatch(M, 30, 150.0, 0))
    plan = lengths.plan(M, 1024)
    assert (plan.expected, plan.typical, plan.told) == (150, 150, False)
    assert lengths.plan(M, None).expected == 150


def test_answers_that_run_into_their_caps_make_the_cap_the_length() -> None:
    lengths = OutputLengths(prior=200, min_samples=20)
    lengths.observe_batch(AnswerBatch(M, 25, 90.0, 25))
    plan = lengths.plan(M, 77)
    assert (plan.expected, plan.told) == (77, True)


def test_the_datastore_hands_engine_answers_to_its_listener() -> None:
    store = store_with(pod("a", "10.0.0.1"))
    seen: list[AnswerBatch] = []
    store.on_answers = seen.append
    for tokens, answers in ((0.0, 0.0), (500.0, 5.0)):
        store.set_metrics(A, replace(fresh(), answer_tokens=tokens, answers=answers,
                                     answers_at_cap=0.0, answers_model=M))  # fmt: skip
    assert seen == [AnswerBatch(M, 5, 100.0, 0)]
