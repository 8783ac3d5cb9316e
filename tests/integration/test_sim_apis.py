"""The simulator speaks every API a vLLM pod serves, checked with the official SDKs as clients:
Anthropic messages, OpenAI responses and embeddings (streamed and not), with usage in each
API's shape, prefix-cache hits across APIs, and errors in each API's own format."""

from __future__ import annotations

import base64
from array import array
from collections.abc import AsyncIterator

import anthropic
import httpx
import openai
import pytest

from epp.sim.cluster import SimCluster, SimPodSpec

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-2-7b-chat-hf"
SYSTEM = "You are a careful assistant who answers in full sentences. " * 8


@pytest.fixture
async def base() -> AsyncIterator[str]:
    async with SimCluster([SimPodSpec("127.0.0.2", 0, "pod-a", speed=8.0)]) as cluster:
        yield f"http://{cluster.pods[0].address}"


async def test_anthropic_messages_answered_and_streamed(base: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=base, api_key="unused", max_retries=0) as client:
        await _messages(client)


async def _messages(client: anthropic.AsyncAnthropic) -> None:
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello there"}]
    answer = await client.messages.create(
        model=MODEL, max_tokens=6, system=SYSTEM, messages=messages
    )
    assert answer.model == MODEL and answer.role == "assistant"
    assert answer.stop_reason == "max_tokens" and answer.usage.output_tokens == 6
    assert answer.content[0].type == "text" and answer.content[0].text.strip()
    first = answer.usage.input_tokens + (answer.usage.cache_read_input_tokens or 0)
    async with client.messages.stream(
        model=MODEL, max_tokens=5, system=SYSTEM, messages=messages
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert final.model == MODEL and final.usage.output_tokens == 5
    assert text == final.content[0].text and len(text.split()) == 5  # type: ignore[union-attr]
    # the same conversation again: its prompt is read from the prefix cache
    assert (final.usage.cache_read_input_tokens or 0) > 0
    assert final.usage.input_tokens + (final.usage.cache_read_input_tokens or 0) == first
    with pytest.raises(anthropic.NotFoundError) as info:
        await client.messages.create(model="nope", max_tokens=4, messages=messages)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model=MODEL, max_tokens=4, messages=[])


async def test_openai_responses_answered_and_streamed(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as client:
        await _responses(client)


async def _responses(client: openai.AsyncOpenAI) -> None:
    answer = await client.responses.create(
        model=MODEL, instructions=SYSTEM, input="hello", max_output_tokens=7
    )
    assert answer.model == MODEL and answer.status == "incomplete"
    assert answer.usage is not None and answer.usage.output_tokens == 7
    assert len(answer.output_text.split()) == 7
    events = await client.responses.create(
        model=MODEL, instructions=SYSTEM, input=[{"role": "user", "content": "hello"}],
        max_output_tokens=4, stream=True,
    )  # fmt: skip
    kinds, deltas, last = [], [], None
    async for event in events:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        last = event
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.incomplete" and len(deltas) == 4
    assert last is not None and last.response.model == MODEL  # type: ignore[union-attr]
    usage = last.response.usage  # type: ignore[union-attr]
    assert usage.output_tokens == 4 and usage.input_tokens_details.cached_tokens > 0
    assert last.response.output_text == "".join(deltas)  # type: ignore[union-attr]
    # the SDK's own stream helper rebuilds the response from the events (of one that completes)
    async with client.responses.stream(model=MODEL, input="hi") as stream:
        final = await stream.get_final_response()
    assert final.model == MODEL and final.status == "completed" and final.usage is not None
    assert len(final.output_text.split()) == final.usage.output_tokens


async def test_openai_embeddings_as_floats_and_base64(base: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as client:
        await _embeddings(client, base)


async def _embeddings(client: openai.AsyncOpenAI, base: str) -> None:
    one = await client.embeddings.create(model=MODEL, input=["alpha beta", "gamma"])
    assert one.model == MODEL and [d.index for d in one.data] == [0, 1]
    assert len(one.data[0].embedding) == 256
    assert abs(sum(v * v for v in one.data[0].embedding) - 1.0) < 1e-3
    assert one.usage.prompt_tokens == 3 + 2 and one.usage.total_tokens == 5
    again = await client.embeddings.create(
        model=MODEL, input="alpha beta", dimensions=16, encoding_format="float"
    )
    assert len(again.data[0].embedding) == 16
    async with httpx.AsyncClient(base_url=base) as http:
        raw = await http.post(
            "/v1/embeddings",
            json={"model": MODEL, "input": "alpha beta", "encoding_format": "base64"},
        )
        packed = array("f", base64.b64decode(raw.json()["data"][0]["embedding"]))
        assert list(packed) == pytest.approx(one.data[0].embedding, rel=1e-6)
        bad = await http.post("/v1/embeddings", json={"model": MODEL, "input": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


async def test_a_twenty_turn_agent_conversation_reads_its_context_from_the_prefix_cache(
    base: str,
) -> None:
    """What a session holding its pod buys: turn after turn, the conversation so far (a
    640-token system prompt, about 50 tokens more a turn) is read from the pod's prefix cache."""
    tools = "".join(f"Tool {i}: reads, edits and runs files of the project, carefully. "
                    for i in range(40))  # fmt: skip
    turns: list[anthropic.types.MessageParam] = []
    cached = prompt = 0
    async with anthropic.AsyncAnthropic(base_url=base, api_key="-", max_retries=0) as client:
        for i in range(20):
            turns.append({"role": "user", "content": f"Step {i}: look at file_{i}.py. " * 4})
            answer = await client.messages.create(
                model=MODEL, system=tools, messages=turns, max_tokens=16
            )
            turns.append({"role": "assistant", "content": answer.content[0].text})  # type: ignore[union-attr]
            hit = answer.usage.cache_read_input_tokens or 0
            cached, prompt = cached + hit, prompt + answer.usage.input_tokens + hit
            if i:  # all but the newest turn and the last partial block come from the cache
                assert answer.usage.input_tokens < 100
    print(f"prefix-cache hits over 20 turns: {cached / prompt:.3f} ({cached}/{prompt} tokens)")
    assert cached / prompt >= 0.9
