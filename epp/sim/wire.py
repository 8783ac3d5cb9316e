"""The APIs a simulated pod speaks, behind one shape: parse a body, write an answer or a stream.

A `Wire` turns a request body into a `CompletionRequest` for the engine and the engine's
progress into bytes of one API: OpenAI chat and completions (`epp.sim.openai`), Anthropic
messages (`epp.sim.anthropic`), OpenAI Responses (`epp.sim.responses`) and embeddings
(`epp.sim.embeddings`). `epp.sim.server` maps each path to its wire and drives the engine the
same way for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import orjson

from epp.sim.openai import (
    ApiError,
    CompletionRequest,
    StreamFormat,
    full_response,
    output_text,
    parse_request,
    usage,
)
from epp.sim.tokenizer import SimTokenizer


@dataclass(frozen=True, slots=True)
class Counts:
    """What the engine did for one request, as every API's usage reports it."""

    prompt_tokens: int
    generated: int
    cached: int
    reason: str  # the engine's finish reason: stop, length or abort


class Streamer(Protocol):
    def start(self, counts: Counts) -> bytes:
        """The events before the first token (the prefill is done: cached tokens are known)."""
        ...

    def tokens(self, start: int, count: int) -> bytes:
        """The events of tokens [start, start + count)."""
        ...

    def finish(self, counts: Counts) -> bytes:
        """The events after the last token, the usage among them."""
        ...


class Wire(Protocol):
    id_prefix: str

    def parse(self, raw: bytes) -> CompletionRequest: ...

    def token_ids(
        self, tokenizer: SimTokenizer, raw: bytes, req: CompletionRequest
    ) -> tuple[int, ...] | None:
        """The prompt's ids from the model's own tokenizer (its chat template for a
        conversation); None where it cannot say (a prompt of token ids)."""
        ...

    def streamer(self, rid: str, created: int, req: CompletionRequest) -> Streamer: ...

    def answer(self, rid: str, created: int, req: CompletionRequest, counts: Counts) -> bytes: ...

    def error(self, error: ApiError) -> bytes: ...


class ConversationIds:
    """`Wire.token_ids` of the chat-like APIs (Anthropic messages, Responses): the
    conversation's turns through the model's chat template."""

    def token_ids(
        self, tokenizer: SimTokenizer, raw: bytes, req: CompletionRequest
    ) -> tuple[int, ...] | None:
        return tokenizer.chat_ids([{"role": r, "content": t} for r, t in req.turns])


class _OpenAIStream:
    __slots__ = ("_fmt", "_usage")

    def __init__(self, fmt: StreamFormat, include_usage: bool) -> None:
        self._fmt = fmt
        self._usage = include_usage

    def start(self, counts: Counts) -> bytes:
        return self._fmt.role()

    def tokens(self, start: int, count: int) -> bytes:
        return self._fmt.tokens(start, count)

    def finish(self, counts: Counts) -> bytes:
        use = usage(counts.prompt_tokens, counts.generated, counts.cached) if self._usage else None
        return self._fmt.finish(counts.reason, use)


class OpenAIWire:
    """/v1/chat/completions (`chat`) and /v1/completions."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.id_prefix = "chatcmpl-" if chat else "cmpl-"

    def parse(self, raw: bytes) -> CompletionRequest:
        return parse_request(raw, self.chat)

    def token_ids(
        self, tokenizer: SimTokenizer, raw: bytes, req: CompletionRequest
    ) -> tuple[int, ...] | None:
        body = orjson.loads(raw)
        if self.chat:
            return tokenizer.chat_ids(body["messages"])
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        return tokenizer.completion_ids(prompt) if isinstance(prompt, str) else None

    def streamer(self, rid: str, created: int, req: CompletionRequest) -> Streamer:
        return _OpenAIStream(StreamFormat(self.chat, rid, created, req.model), req.include_usage)

    def answer(self, rid: str, created: int, req: CompletionRequest, counts: Counts) -> bytes:
        text = output_text(0, counts.generated)
        use = usage(counts.prompt_tokens, counts.generated, counts.cached)
        return full_response(self.chat, rid, created, req.model, text, counts.reason, use)

    def error(self, error: ApiError) -> bytes:
        return error.body()
