"""A chat request through a real Envoy reaches the pod the endpoint picker chose."""

from __future__ import annotations

import asyncio
import re
from collections import Counter

import httpx
import orjson
import pytest

from epp.local.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "llama2-7b-chat"
SERVED = "meta-llama/Llama-2-7b-chat-hf"


def chat(stream: bool, content: str = "Hello there", max_tokens: int = 8) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def send(
    client: httpx.AsyncClient, body: dict[str, object], **headers: str
) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions", json=body, headers={"x-model-name": MODEL, **headers}
    )


def check_served(response: httpx.Response, stream: bool) -> str:
    assert response.status_code == 200, response.text
    picked = response.headers["x-inference-endpoint"]
    assert response.headers["x-inference-pod-address"] == picked
    if stream:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert {c["model"] for c in chunks} == {MODEL}
    else:
        payload = response.json()
        assert payload["model"] == MODEL
        assert payload["usage"]["completion_tokens"] > 0
        assert payload["choices"][0]["message"]["content"]
    return picked


async def test_fifty_requests_half_streaming_all_reach_the_picked_pod(
    seed_stack: LocalStack,
) -> None:
    addresses = {f"{p.host}:{p.port}" for p in seed_stack.pods}
    assert len(addresses) == 3
    async with httpx.AsyncClient(base_url=seed_stack.url, timeout=30) as client:
        responses = await asyncio.gather(
            *(send(client, chat(stream=i % 2 == 0, content=f"question {i}")) for i in range(50))
        )
    picked = [check_served(r, stream=i % 2 == 0) for i, r in enumerate(responses)]
    assert set(picked) <= addresses
    assert len(set(picked)) >= 2  # load was spread


async def test_a_client_cannot_choose_the_destination(seed_stack: LocalStack) -> None:
    addresses = {f"{p.host}:{p.port}" for p in seed_stack.pods}
    async with httpx.AsyncClient(base_url=seed_stack.url, timeout=30) as client:
        for stream in (False, True):
            response = await send(
                client, chat(stream), **{"x-gateway-destination-endpoint": "127.0.0.1:9"}
            )
            assert check_served(response, stream) in addresses


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model": "llama2-7b-chat", "messages": [', "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model not found"),
    ],
)
async def test_bad_bodies_get_openai_400_and_the_next_request_works(
    seed_stack: LocalStack, body: bytes, fragment: str
) -> None:
    async with httpx.AsyncClient(base_url=seed_stack.url, timeout=30) as client:
        bad = await client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/json"
        error = bad.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert fragment in error["message"]
        check_served(await send(client, chat(stream=False)), stream=False)


async def test_models_listing_passes_through(seed_stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=seed_stack.url, timeout=30) as client:
        response = await client.get("/v1/models")
    assert response.status_code == 200
    assert SERVED in {m["id"] for m in response.json()["data"]}


async def test_a_slow_pod_receives_clearly_fewer_requests(seed_stack: LocalStack) -> None:
    assert seed_stack.sim is not None
    slow = seed_stack.pods[0]
    slow_address = f"{slow.host}:{slow.port}"
    seed_stack.sim.pod(slow.name).set_speed(0.05)
    counts: Counter[str] = Counter()
    budget = iter(range(60))

    async def worker(client: httpx.AsyncClient) -> None:  # closed loop: next request when done
        for _ in budget:
            counts[check_served(await send(client, chat(False, max_tokens=32)), False)] += 1

    try:
        async with httpx.AsyncClient(base_url=seed_stack.url, timeout=60) as client:
            await asyncio.gather(*(worker(client) for _ in range(6)))
    finally:
        seed_stack.sim.pod(slow.name).set_speed(1.0)
    print("requests per pod with", slow_address, "slowed:", dict(counts))
    others = [n for a, n in counts.items() if a != slow_address]
    assert counts[slow_address] * 2 < min(others), counts


async def test_epp_metrics_use_the_upstream_names(seed_stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=seed_stack.url, timeout=30) as client:
        for i in range(40):
            check_served(await send(client, chat(stream=i % 2 == 0)), stream=i % 2 == 0)
        metrics = await client.get(f"http://127.0.0.1:{seed_stack.config.metrics_port}/metrics")
    text = metrics.text
    labels = f'model_name="{MODEL}",target_model_name="{SERVED}"'
    for name in (
        f"inference_objective_request_total{{{labels}}}",
        f"inference_objective_request_duration_seconds_count{{{labels}}}",
        f"inference_objective_input_tokens_count{{{labels}}}",
        f"inference_objective_output_tokens_count{{{labels}}}",
        f"inference_objective_normalized_time_per_output_token_seconds_count{{{labels}}}",
        f'inference_objective_running_requests{{model_name="{MODEL}"}}',
        'inference_pool_average_kv_cache_utilization{name="llama2-gpu-pool"}',
        'inference_pool_average_queue_size{name="llama2-gpu-pool"}',
        'inference_pool_ready_pods{name="llama2-gpu-pool"} 3.0',
        "inference_extension_scheduler_e2e_duration_seconds_count",
        'inference_extension_plugin_duration_seconds_count{extension_point="Scorer"',
    ):
        assert name in text, name
    assert re.search(r'inference_objective_request_error_total\{[^}]*error_code="BadRequest"', text)
