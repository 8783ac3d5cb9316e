"""Every API clients use, through the real local stack as `make run` starts it (the seed's
manifests: control plane, Envoy, EPP, simulated pods), with the official `openai` and
`anthropic` SDKs as clients: chat, completions, responses, embeddings and Anthropic messages,
streamed and not. Each answer names the model the client asked for (the pods serve another
name: the EPP rewrites it on the way in and restores it on the way back, in streams too) and
carries usage in its API's shape. The seed's HTTPRoute matches /v1/chat/completions by path
and any path with the `x-model-name` header, so the clients send that header, as the banner of
`epp up` says."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest
import pytest_asyncio

from epp.local.stack import LocalStack
from tests.e2e.conftest import stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "llama2-7b-chat"  # the InferenceModel; the pods serve meta-llama/Llama-2-7b-chat-hf
HEADERS = {"x-model-name": MODEL}
SYSTEM = "You are a terse assistant. " * 10


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    tmp: Path = tmp_path_factory.mktemp("apis-stack")
    async with LocalStack(stack_config(tmp, control_plane=None, first_pod_ip=140)) as running:
        assert running.uses_control_plane
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def oai(stack: LocalStack) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{stack.url}/v1", api_key="unused", default_headers=HEADERS, max_retries=0
    ) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def claude(stack: LocalStack) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=stack.url, api_key="unused", default_headers=HEADERS, max_retries=0
    ) as client:
        yield client


async def test_chat_and_completions_streamed_and_not(oai: openai.AsyncOpenAI) -> None:
    chat = await oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert chat.model == MODEL and chat.usage is not None and chat.usage.completion_tokens == 5
    chunks = await oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    seen = [chunk async for chunk in chunks]
    assert {c.model for c in seen} == {MODEL}
    assert seen[-1].usage is not None and seen[-1].usage.completion_tokens == 5
    done = await oai.completions.create(model=MODEL, prompt="Once upon", max_tokens=4)
    assert done.model == MODEL and done.usage is not None and done.usage.completion_tokens == 4
    pieces = await oai.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    streamed = [p async for p in pieces]
    assert {p.model for p in streamed} == {MODEL}
    assert streamed[-1].usage is not None and streamed[-1].usage.completion_tokens == 4


async def test_responses_streamed_and_not(oai: openai.AsyncOpenAI) -> None:
    answer = await oai.responses.create(
        model=MODEL, instructions=SYSTEM, input="hello", max_output_tokens=6
    )
    assert answer.model == MODEL and answer.usage is not None
    assert answer.usage.output_tokens == 6 and len(answer.output_text.split()) == 6
    async with oai.responses.stream(model=MODEL, instructions=SYSTEM, input="hello") as stream:
        names = {event.response.model async for event in stream if hasattr(event, "response")}
        final = await stream.get_final_response()
    assert names == {MODEL} and final.model == MODEL and final.usage is not None
    assert len(final.output_text.split()) == final.usage.output_tokens > 0
    assert final.usage.input_tokens == answer.usage.input_tokens


async def test_embeddings(oai: openai.AsyncOpenAI) -> None:
    vectors = await oai.embeddings.create(model=MODEL, input=["first text", "second text"])
    assert vectors.model == MODEL and len(vectors.data) == 2
    assert len(vectors.data[1].embedding) == 256 and vectors.usage.prompt_tokens == 6


async def test_anthropic_messages_streamed_and_not(claude: anthropic.AsyncAnthropic) -> None:
    turns: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello"}]
    answer = await claude.messages.create(model=MODEL, system=SYSTEM, messages=turns, max_tokens=7)
    assert answer.model == MODEL and answer.stop_reason == "max_tokens"
    assert answer.usage.output_tokens == 7 and answer.content[0].type == "text"
    async with claude.messages.stream(
        model=MODEL, system=SYSTEM, messages=turns, max_tokens=4
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert final.model == MODEL and final.usage.output_tokens == 4
    assert len(text.split()) == 4
    total = final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0)
    assert total == answer.usage.input_tokens + (answer.usage.cache_read_input_tokens or 0)


# ---- requests that are what they say ---------------------------------------------------------


async def post(stack: LocalStack, body: bytes, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        return await client.post(
            "/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json", **headers},
        )


def chat_body(model: str = MODEL) -> bytes:
    return orjson.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi " * 50}], "max_tokens": 3}
    )


def assert_error(response: httpx.Response, status: int, reason: str, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["x-gateway-inference-error"] == reason
    assert "x-inference-pod" not in response.headers  # answered by the EPP, no pod bothered
    error = response.json()["error"]
    assert error["code"] == status and words in error["message"]


async def test_bad_names_and_bodies_get_clear_errors_and_the_next_request_is_served(
    stack: LocalStack,
) -> None:
    assert_error(await post(stack, chat_body("nonexistent")), 404, "ModelNotFound", "nonexistent")
    long_name = await post(stack, chat_body("x" * 10_000))
    assert_error(long_name, 400, "BadRequest", "10000 characters long")
    assert_error(await post(stack, chat_body("llama\n2")), 400, "BadRequest", "'\\n' at position 5")
    assert_error(
        await post(stack, chat_body(), **{"content-encoding": "gzip"}),
        400, "BadRequest", "labelled gzip but is not gzip data",
    )  # fmt: skip
    assert_error(
        await post(stack, b"\x1b\x00\x00", **{"content-encoding": "br"}),
        415, "UnsupportedMediaType", "'br' is not supported",
    )  # fmt: skip
    bomb = gzip.compress(b'{"model": "x", "prompt": "' + b"a" * (40 << 20) + b'"}')
    assert len(bomb) < 100_000
    assert_error(
        await post(stack, bomb, **{"content-encoding": "gzip"}),
        413, "RequestTooLarge", "decoded from gzip exceeds",
    )  # fmt: skip
    for encoding, packed in (("gzip", gzip.compress(chat_body())),
                             ("deflate", zlib.compress(chat_body()))):  # fmt: skip
        served = await post(stack, packed, **{"content-encoding": encoding})
        assert served.status_code == 200, served.text
        assert served.json()["model"] == MODEL and served.json()["usage"]["completion_tokens"] == 3
    after = await post(stack, chat_body())
    assert after.status_code == 200 and after.json()["model"] == MODEL


async def test_the_model_catalog_through_the_gateway(
    stack: LocalStack, oai: openai.AsyncOpenAI
) -> None:
    listed = [m.id async for m in oai.models.list()]
    assert listed == [MODEL, "meta-llama/Llama-2-7b-chat-hf"]
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as client:
        plain = await client.get("/v1/models")  # no header: the control plane's catalog route
        one = await client.get(f"/v1/models/{MODEL}")
        missing = await client.get("/v1/models/nonexistent")
    assert plain.status_code == 200 and "x-inference-pod" not in plain.headers
    assert [m["id"] for m in plain.json()["data"]] == listed
    assert one.json()["id"] == MODEL and one.json()["root"] == "meta-llama/Llama-2-7b-chat-hf"
    assert_error(missing, 404, "ModelNotFound", "nonexistent")
