"""Anthropic's Messages API (`/v1/messages`) as vLLM serves it: requests, answers, events.

A request's `system` and `messages` become the same conversation bytes a chat request would
(`render_turns`), so prefix caching sees one conversation whichever API carries it. Answers
report usage Anthropic's way: `input_tokens` are the prompt tokens not read from the cache,
`cache_read_input_tokens` those that were. A stream is Anthropic's named events: message_start,
content_block_start, one content_block_delta per token (spliced from precomputed bytes),
content_block_stop, message_delta (stop reason, output tokens) and message_stop.
"""

from __future__ import annotations

from typing import Any

import orjson

from epp.sim.openai import (
    WORDS,
    ApiError,
    CompletionRequest,
    conversation_request,
    json_object,
    opt_int,
    output_text,
)
from epp.sim.wire import ConversationIds, Counts, Streamer

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where} must be a string or a list of content blocks", where)
    parts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            raise ApiError(400, f"{where} must hold content block objects", where)
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif kind == "tool_result":
            parts.append(_text(block.get("content", ""), where))
        elif kind == "tool_use":
            parts.append(orjson.dumps(block.get("input", {})).decode())
    return "".join(parts)


def parse(raw: bytes) -> CompletionRequest:
    body = json_object(raw)
    max_tokens = opt_int(body, "max_tokens")
    if max_tokens is None:
        raise ApiError(400, "'max_tokens' is required", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    turns: list[tuple[str, str]] = []
    if body.get("system") is not None:
        turns.append(("system", _text(body["system"], "system")))
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ApiError(400, f"messages[{i}].role must be 'user' or 'assistant'", "messages")
        turns.append((m["role"], _text(m.get("content"), f"messages[{i}].content")))
    return conversation_request(body, turns, max_tokens)


def _usage(counts: Counts) -> dict[str, int]:
    return {
        "input_tokens": counts.prompt_tokens - counts.cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": counts.cached,
        "output_tokens": counts.generated,
    }


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **obj}) + b"\n\n"


class MessagesStream:
    __slots__ = ("_chunks", "_head")

    def __init__(self, rid: str, model: str) -> None:
        self._head = {"id": rid, "type": "message", "role": "assistant", "model": model}
        pre = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
               b'"delta":{"type":"text_delta","text":')  # fmt: skip
        self._chunks = [pre + orjson.dumps(w) + b"}}\n\n" for w in WORDS]

    def start(self, counts: Counts) -> bytes:
        message: dict[str, Any] = {**self._head, "content": [], "stop_reason": None,
                                   "stop_sequence": None, "usage": _usage(counts)}  # fmt: skip
        return _event("message_start", {"message": message}) + _event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        )

    def tokens(self, start: int, count: int) -> bytes:
        chunks, n = self._chunks, len(self._chunks)
        return b"".join([chunks[i % n] for i in range(start, start + count)])

    def finish(self, counts: Counts) -> bytes:
        delta = {"stop_reason": _STOP_REASONS.get(counts.reason, "end_turn"), "stop_sequence": None}
        return (
            _event("content_block_stop", {"index": 0})
            + _event(
                "message_delta", {"delta": delta, "usage": {"output_tokens": counts.generated}}
            )
            + _event("message_stop", {})
        )


class MessagesWire(ConversationIds):
    id_prefix = "msg_"

    def parse(self, raw: bytes) -> CompletionRequest:
        return parse(raw)

    def streamer(self, rid: str, created: int, req: CompletionRequest) -> Streamer:
        return MessagesStream(rid, req.model)

    def answer(self, rid: str, created: int, req: CompletionRequest, counts: Counts) -> bytes:
        return orjson.dumps(
            {
                "id": rid,
                "type": "message",
                "role": "assistant",
                "model": req.model,
                "content": [{"type": "text", "text": output_text(0, counts.generated)}],
                "stop_reason": _STOP_REASONS.get(counts.reason, "end_turn"),
                "stop_sequence": None,
                "usage": _usage(counts),
            }
        )

    def error(self, error: ApiError) -> bytes:
        kind = _ERROR_TYPES.get(error.status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})
