"""The tracker's per-model metric series are looked up once per model pair, and the counts stay
exact, also after the bounded set of looked-up pairs starts over."""

from __future__ import annotations

import orjson

from epp.observability import EppMetrics
from epp.tracking.tracker import _MAX_SERIES, Tracking
from tests.factories import SERVED, director, seed_store

BODY = orjson.dumps({"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}]})


async def test_per_model_counts_stay_exact_across_the_series_bound() -> None:
    store = seed_store()
    metrics = EppMetrics()
    tracking = Tracking(director(store), store, metrics)
    labels = {"model_name": "llama2-7b-chat", "target_model_name": SERVED}

    running = {"model_name": "llama2-7b-chat"}

    def sample(name: str, only: dict[str, str] = labels) -> float | None:
        return metrics.registry.get_sample_value(name, only)

    async def one() -> None:
        tracker = await tracking.start({":path": "/v1/chat/completions"}, BODY)
        assert sample("inference_objective_running_requests", running) == 1
        tracker.response_headers(200, "application/json", None)
        tracker.complete()

    await one()
    assert tracking.series("llama2-7b-chat", SERVED) is tracking.series("llama2-7b-chat", SERVED)
    open_one = await tracking.start({":path": "/v1/chat/completions"}, BODY)
    for i in range(_MAX_SERIES):  # other pairs fill the bound: the set starts over
        tracking.series(f"m{i}", "t")
    open_one.complete()  # started before the set started over, ended after
    await one()
    assert sample("inference_objective_request_total") == 3
    assert sample("inference_objective_request_duration_seconds_count") == 3
    assert sample("inference_objective_input_tokens_count") == 2  # the open one was not answered
    assert sample("inference_objective_running_requests", running) == 0
