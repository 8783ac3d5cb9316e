"""Every API's body read into the request value: the API (by path, else by shape), the prompt
a prefix cache would see, the output limit, the stream flag; and the usage read back from each
API's own answer shape, streamed and not."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from epp.request import (
    API_CHAT,
    API_COMPLETIONS,
    API_EMBEDDINGS,
    API_MESSAGES,
    API_OTHER,
    API_RESPONSES,
    InferenceRequest,
    read,
    read_body,
)
from epp.tracking.follower import ResponseFollower

LIMIT = 1 << 20


def parse(path: str, body: dict[str, Any]) -> InferenceRequest:
    return read({":path": path, ":method": "POST"}, orjson.dumps(body), LIMIT)


def test_the_path_names_the_api_and_the_shape_decides_elsewhere() -> None:
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert parse("/v1/chat/completions", chat).api == API_CHAT
    assert parse("/v1/messages", {**chat, "max_tokens": 9}).api == API_MESSAGES
    assert parse("/v1/responses?x=1", {"model": "m", "input": "hi"}).api == API_RESPONSES
    assert parse("/v1/embeddings", {"model": "m", "input": "hi"}).api == API_EMBEDDINGS
    assert parse("/v1/completions", {"model": "m", "prompt": "hi"}).api == API_COMPLETIONS
    assert parse("/custom", chat).api == API_CHAT
    assert parse("/custom", {"model": "m", "prompt": "x"}).api == API_COMPLETIONS
    assert parse("/custom", {"model": "m", "input": "x"}).api == API_OTHER


def test_anthropic_messages_prompt_limit_and_stream() -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 300,
        "stream": True,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [
            {"role": "user", "content": "list files"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "a.py b.py"}],
                    }
                ],
            },
        ],
    }
    request = parse("/v1/messages", body)
    assert request.model == "claude-x"
    assert request.output_limit == 300 and request.stream
    assert request.prompt == (
        b"<|im_start|>system\nYou are terse.<|im_end|>\n"
        b"<|im_start|>user\nlist files<|im_end|>\n"
        b"<|im_start|>assistant\n<|im_end|>\n"
        b"<|im_start|>user\na.py b.py<|im_end|>\n"
    )
    assert request.prompt_tokens == len(request.prompt) // 4


def test_a_conversation_keeps_its_leading_bytes_turn_after_turn_in_every_chat_api() -> None:
    turns: list[dict[str, Any]] = [{"role": "user", "content": "q1"}]
    previous = {API_MESSAGES: b"", API_CHAT: b"", API_RESPONSES: b""}
    for i in range(5):
        now = {
            API_MESSAGES: parse(
                "/v1/messages", {"model": "m", "system": "S", "messages": turns, "max_tokens": 5}
            ).prompt,
            API_CHAT: parse(
                "/v1/chat/completions",
                {"model": "m", "messages": [{"role": "system", "content": "S"}, *turns]},
            ).prompt,
            API_RESPONSES: parse(
                "/v1/responses", {"model": "m", "instructions": "S", "input": turns}
            ).prompt,
        }
        assert now[API_MESSAGES] == now[API_CHAT] == now[API_RESPONSES]  # one rendering
        for api, prompt in now.items():
            assert prompt.startswith(previous[api]) and len(prompt) > len(previous[api])
        previous = now
        turns += [{"role": "assistant", "content": f"a{i}"}, {"role": "user", "content": f"q{i}"}]


def test_responses_input_forms_and_output_limit() -> None:
    plain = parse("/v1/responses", {"model": "m", "input": "hello", "max_output_tokens": 64})
    assert plain.prompt == b"<|im_start|>user\nhello<|im_end|>\n"
    assert plain.output_limit == 64 and not plain.stream
    items = {
        "model": "m",
        "stream": True,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "what is 2+2"}]},
            {"type": "function_call", "call_id": "c", "name": "add", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "4"},
        ],
        "max_tokens": 5,  # not a Responses field: no limit from it
    }
    request = parse("/v1/responses", items)
    assert request.prompt == (
        b"<|im_start|>user\nwhat is 2+2<|im_end|>\n<|im_start|>tool\n4<|im_end|>\n"
    )
    assert request.stream and request.output_limit is None


def test_embeddings_input_and_a_one_token_answer() -> None:
    one = parse("/v1/embeddings", {"model": "e5", "input": "a sentence to embed"})
    assert one.prompt == b"a sentence to embed" and one.output_limit == 1
    many = parse("/v1/embeddings", {"model": "e5", "input": ["ab", "cd"], "max_tokens": 99})
    assert many.prompt == b"abcd" and many.output_limit == 1
    ids = parse("/v1/embeddings", {"model": "e5", "input": [1, 2, 3]})
    assert ids.prompt == b"" and ids.prompt_tokens == 1


def test_limits_come_from_each_apis_own_field() -> None:
    chat = {"model": "m", "messages": [], "max_completion_tokens": 7, "max_tokens": 9}
    assert parse("/v1/chat/completions", chat).output_limit == 7
    assert (
        parse("/v1/completions", {"model": "m", "prompt": "p", "max_tokens": 9}).output_limit == 9
    )
    anthropic = {"model": "m", "messages": [], "max_tokens": 11, "max_completion_tokens": 2}
    assert parse("/v1/messages", anthropic).output_limit == 11
    assert (
        parse("/v1/messages", {"model": "m", "messages": [], "max_tokens": 0}).output_limit is None
    )


def test_a_rewritten_body_keeps_every_other_field() -> None:
    body = {
        "model": "claude",
        "max_tokens": 5,
        "system": "S",
        "messages": [{"role": "user", "content": "x"}],
    }
    request = read_body(orjson.dumps(body), LIMIT, "/v1/messages")
    assert orjson.loads(request.body_for("served")) == {**body, "model": "served"}
    assert request.body_for("claude") is request.body


# ---- usage, as each API answers it -----------------------------------------------------------


def follow(streaming: bool, *pieces: bytes) -> ResponseFollower:
    follower = ResponseFollower(streaming, "served", "client")
    for piece in pieces:
        follower.feed(piece)
    follower.finish()
    return follower


def sse(*events: dict[str, Any], named: bool = False) -> bytes:
    out = b""
    for event in events:
        if named:
            out += b"event: " + str(event["type"]).encode() + b"\n"
        out += b"data: " + orjson.dumps(event) + b"\n\n"
    return out


def test_usage_of_an_anthropic_answer_streamed_and_not() -> None:
    whole = {
        "type": "message",
        "model": "served",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {"input_tokens": 20, "cache_read_input_tokens": 12, "output_tokens": 7},
    }
    done = follow(False, orjson.dumps(whole))
    assert (done.prompt_tokens, done.output_tokens, done.cached_tokens) == (32, 7, 12)
    events = sse(
        {
            "type": "message_start",
            "message": {
                "model": "served",
                "usage": {"input_tokens": 30, "output_tokens": 1, "cache_read_input_tokens": 16},
            },
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a"}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
        named=True,
    )
    cut = len(events) // 2  # an event split across chunks
    streamed = follow(True, events[:cut], events[cut:])
    assert (streamed.prompt_tokens, streamed.output_tokens, streamed.cached_tokens) == (46, 9, 16)


def test_usage_of_a_responses_answer_streamed_and_not() -> None:
    usage = {
        "input_tokens": 40,
        "input_tokens_details": {"cached_tokens": 32},
        "output_tokens": 5,
        "total_tokens": 45,
    }
    done = follow(False, orjson.dumps({"object": "response", "model": "served", "usage": usage}))
    assert (done.prompt_tokens, done.output_tokens, done.cached_tokens) == (40, 5, 32)
    events = sse(
        {"type": "response.created", "response": {"model": "served", "usage": None}},
        {"type": "response.output_text.delta", "delta": "a"},
        {"type": "response.completed", "response": {"model": "served", "usage": usage}},
        named=True,
    )
    streamed = follow(True, events)
    assert (streamed.prompt_tokens, streamed.output_tokens, streamed.cached_tokens) == (40, 5, 32)


def test_usage_of_embeddings_and_of_chat() -> None:
    embedded = follow(
        False,
        orjson.dumps(
            {
                "object": "list",
                "data": [],
                "model": "served",
                "usage": {"prompt_tokens": 8, "total_tokens": 8},
            }
        ),
    )
    assert (embedded.prompt_tokens, embedded.output_tokens) == (8, 0) and embedded.saw_usage
    chat = sse(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 4,
                "prompt_tokens_details": {"cached_tokens": 2},
            },
        }
    )
    streamed = follow(True, chat + b"data: [DONE]\n\n")
    assert (streamed.prompt_tokens, streamed.output_tokens, streamed.cached_tokens) == (3, 4, 2)


@pytest.mark.parametrize("api_path", ["/v1/messages", "/v1/responses"])
def test_the_served_name_is_restored_inside_nested_stream_events(api_path: str) -> None:
    key = "message" if api_path == "/v1/messages" else "response"
    first = sse({"type": f"{key}_start", key: {"id": "x", "model": "served"}}, named=True)
    follower = ResponseFollower(True, "served", "client")
    out = follower.feed(first[:20]) + follower.feed(first[20:]) + follower.finish()
    assert b'"model":"client"' in out and b"served" not in out
