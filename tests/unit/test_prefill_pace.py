"""Prefill pace: seconds per computed prompt token, learned from an engine's own counters."""

from __future__ import annotations

from dataclasses import replace

import pytest

from epp.prefill_pace import PrefillPaces
from epp.scrape.parser import parse_metrics
from epp.types import ENGINE_VLLM, EndpointMetrics, EndpointState
from tests.unit.test_datastore import fresh, pod, store_with

A = "10.0.0.1:8000"


def page(seconds: float, requests: float, prompt: float, cached: float) -> EndpointMetrics:
    return EndpointMetrics(
        prefill_seconds=seconds, prefill_count=requests, prompt_tokens=prompt, cached_tokens=cached
    )


def test_the_pace_is_prefill_time_less_one_step_per_request_over_computed_tokens() -> None:
    paces = PrefillPaces(min_tokens=1000, smoothing=0.5)
    assert paces.observe(A, page(10.0, 100, 50_000, 20_000), 0.02) is None  # where counting starts
    assert paces.observe(A, page(10.1, 101, 50_400, 20_000), 0.02) is None  # 400 tokens: too few
    # 10 requests, 3000 prompt tokens of which 1000 cached: (1.2 - 10 x 0.02) s / 2000 tokens
    assert paces.observe(A, page(11.2, 110, 53_000, 21_000), 0.02) == pytest.approx(0.0005)
    assert paces.get(A) == pytest.approx(0.0005)
    # smoothed: half of the new sample (0.3 s over 1000 tokens, 1 request of 0 s step)
    assert paces.observe(A, page(11.5, 111, 54_000, 21_000), 0.0) == pytest.approx(0.0004)


def test_a_restarted_engine_starts_counting_again_and_keeps_the_pace_it_had() -> None:
    paces = PrefillPaces(min_tokens=1000)
    paces.observe(A, page(10.0, 100, 50_000, 0), 0.0)
    assert paces.observe(A, page(11.0, 101, 52_000, 0), 0.0) == pytest.approx(0.0005)
    assert paces.observe(A, page(0.5, 1, 2_000, 0), 0.0) is None  # counters went back
    assert paces.get(A) == pytest.approx(0.0005)
    paces.forget(A)
    assert paces.get(A) == 0.0


def test_cache_hits_alone_never_make_a_sample_nor_a_negative_pace() -> None:
    paces = PrefillPaces(min_tokens=1000)
    paces.observe(A, page(10.0, 100, 50_000, 0), 0.05)
    assert paces.observe(A, page(10.5, 110, 60_000, 10_000), 0.05) is None  # all cached
    # prefill shorter than the steps it ran in (the step estimate is a mean): clamped to 0
    assert paces.observe(A, page(10.6, 120, 62_000, 10_000), 0.05) == 0.0


def test_an_engine_without_the_families_gives_no_pace() -> None:
    assert PrefillPaces().observe(A, EndpointMetrics(), 0.01) is None


def test_the_parser_reads_vllm_prefill_histogram_and_token_counters() -> None:
    text = (
        'vllm:num_requests_running{model_name="m"} 1\n'
        'vllm:num_requests_waiting{model_name="m"} 0\n'
        'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
        'vllm:prompt_tokens_total{engine="0",model_name="m"} 4000.0\n'
        'vllm:prompt_tokens_total{engine="1",model_name="m"} 1000.0\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 1500.0\n'
        'vllm:request_prefill_time_seconds_bucket{le="+Inf",model_name="m"} 7.0\n'
        'vllm:request_prefill_time_seconds_sum{model_name="m"} 0.75\n'
        'vllm:request_prefill_time_seconds_count{model_name="m"} 7.0\n'
    )
    m = parse_metrics(text, ENGINE_VLLM, 0.0)
    assert (m.prefill_seconds, m.prefill_count) == (0.75, 7.0)
    assert (m.prompt_tokens, m.cached_tokens) == (5000.0, 1500.0)


def test_the_datastore_puts_the_learned_pace_on_the_endpoint() -> None:
    store = store_with(pod("a", "10.0.0.1"))

    def scrape(seconds: float, prompt: float) -> EndpointState:
        store.set_metrics(A, replace(fresh(), **vars_of(page(seconds, prompt / 100, prompt, 0))))
        return store.candidates("default/llama2-gpu-pool")[0]

    assert scrape(1.0, 1000).prefill_pace == 0.0
    assert scrape(3.0, 5000).prefill_pace == pytest.approx(2.0 / 4000)


def vars_of(m: EndpointMetrics) -> dict[str, float | None]:
    return {
        "prefill_seconds": m.prefill_seconds,
        "prefill_count": m.prefill_count,
        "prompt_tokens": m.prompt_tokens,
        "cached_tokens": m.cached_tokens,
    }


def aligned(seconds: float, requests: float, computed: float) -> EndpointMetrics:
    """A page with vLLM's per-request computed-token histogram (observed with prefill time)."""
    return EndpointMetrics(
        prefill_seconds=seconds,
        prefill_count=requests,
        prompt_tokens=99_999.0,  # moves at other moments: not read where the histogram is
        cached_tokens=0.0,
        computed_tokens=computed,
    )


def test_the_per_request_computed_tokens_are_read_before_the_token_counters() -> None:
    paces = PrefillPaces(min_tokens=1000, smoothing=1.0)
    paces.observe(A, aligned(1.0, 10, 5_000), 0.01)
    # 4 requests finished: 0.7 s of prefill, 2000 computed tokens; the counters say nothing
    assert paces.observe(A, aligned(1.7, 14, 7_000), 0.01) == pytest.approx((0.7 - 0.04) / 2000)


def test_a_window_closes_only_once_prefill_time_came_with_its_tokens() -> None:
    """Older vLLM counts a prompt at its first token and its prefill time when it finishes:
    tokens with no finished request yet are not a pace of zero."""
    paces = PrefillPaces(min_tokens=1000, smoothing=1.0)
    paces.observe(A, page(1.0, 10, 5_000, 0), 0.0)
    assert paces.observe(A, page(1.0, 10, 7_000, 0), 0.0) is None  # 2000 tokens, no time yet
    assert paces.observe(A, page(1.4, 11, 7_000, 0), 0.0) == pytest.approx(0.4 / 2000)


def test_switching_between_the_two_sources_starts_counting_again() -> None:
    paces = PrefillPaces(min_tokens=1000, smoothing=1.0)
    paces.observe(A, page(1.0, 10, 5_000, 0), 0.0)
    assert paces.observe(A, aligned(2.0, 20, 9_000), 0.0) is None


def test_the_parser_reads_vllm_computed_prompt_tokens_histogram() -> None:
    text = (
        'vllm:num_requests_running{model_name="m"} 1\n'
        'vllm:num_requests_waiting{model_name="m"} 0\n'
        'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
        'vllm:request_prefill_kv_computed_tokens_bucket{le="+Inf",model_name="m"} 3.0\n'
        'vllm:request_prefill_kv_computed_tokens_sum{model_name="m"} 2500.0\n'
        'vllm:request_prefill_kv_computed_tokens_count{model_name="m"} 3.0\n'
    )
    assert parse_metrics(text, ENGINE_VLLM, 0.0).computed_tokens == 2500.0
