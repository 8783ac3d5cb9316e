"""OpenAI wire format of the simulator: parse completion requests, build responses and errors.

Pure functions and values; `epp.sim.server` calls them. A prompt becomes bytes whose token i is
bytes [4i, 4i+4) (about one token per four characters, like a BPE tokenizer on English), so
token counts and prefix-cache block hashes are deterministic. Streamed token chunks are spliced
from precomputed byte prefixes and suffixes: the hot path serializes no JSON per token.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import orjson

_TEXT = "the quick brown fox jumps over lazy dogs while simulated engines emit tokens at a steady"
WORDS = tuple(f" {w}" for w in _TEXT.split(" "))
CHAT_OVERHEAD = b"<|assistant|>\n"


class ApiError(Exception):
    """An error answered in OpenAI's format, with vLLM's type names."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    def body(self) -> bytes:
        kind = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}
        err = {
            "message": self.message,
            "type": kind.get(self.status, "InternalServerError"),
            "param": self.param,
            "code": self.status,
        }
        return orjson.dumps({"error": err})


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    chat: bool
    model: str
    prompt: bytes  # token i is prompt[4i:4i+4]
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    ignore_eos: bool
    turns: tuple[tuple[str, str], ...] = ()  # (role, text) of a conversation, where one is


def _text_of(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    if content is None:
        return ""
    raise ApiError(400, f"messages[{i}].content must be a string or a list of parts", "messages")


def render_turns(turns: list[tuple[str, str]]) -> bytes:
    """The prompt of a conversation, as the chat template renders it: every chat-like API
    (chat, Anthropic messages, Responses) gives one conversation the same bytes."""
    return "".join(f"<|{role}|>\n{text}\n" for role, text in turns).encode() + CHAT_OVERHEAD


def conversation_request(
    body: dict[str, Any], turns: list[tuple[str, str]], max_tokens: int | None
) -> CompletionRequest:
    """A chat-like request of another API (Anthropic messages, Responses): its conversation
    rendered as chat renders it, usage always reported, stopped at the model's end."""
    prompt = render_turns(turns)
    return CompletionRequest(
        chat=True,
        model=body["model"],
        prompt=prompt,
        prompt_tokens=max(1, -(-len(prompt) // 4)),
        max_tokens=max_tokens,
        stream=opt_bool(body, "stream"),
        include_usage=True,
        ignore_eos=False,
        turns=tuple(turns),
    )


def _chat_prompt(body: dict[str, Any]) -> bytes:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a 'role'", "messages")
        turns.append((m["role"], _text_of(m.get("content"), i)))
    return render_turns(turns)


def _completion_prompt(body: dict[str, Any]) -> bytes:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt.encode()
    if isinstance(prompt, list) and prompt:
        if not all(isinstance(t, int) and 0 <= t < 2**32 for t in prompt):
            raise ApiError(400, "'prompt' token ids must be non-negative integers", "prompt")
        return array("I", prompt).tobytes()
    raise ApiError(400, "'prompt' must be a non-empty string or list of token ids", "prompt")


def opt_int(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        v = body.get(name)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ApiError(400, f"'{name}' must be a positive integer", name)
        return v
    return None


def opt_bool(body: dict[str, Any], name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(400, f"'{name}' must be a boolean", name)
    return v


def json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object with a model name, or a 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required and must be a string", "model")
    return body


def parse_request(raw: bytes, chat: bool) -> CompletionRequest:
    body = json_object(raw)
    model = body["model"]
    prompt = _chat_prompt(body) if chat else _completion_prompt(body)
    if chat:
        max_tokens = opt_int(body, "max_completion_tokens", "max_tokens")
    else:
        max_tokens = opt_int(body, "max_tokens")
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, "only n=1 is supported by the simulator", "n")
    stream = opt_bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "'stream_options' must be an object", "stream_options")
    include_usage = bool(opts and opts.get("include_usage"))
    return CompletionRequest(
        chat=chat,
        model=model,
        prompt=prompt,
        prompt_tokens=max(1, -(-len(prompt) // 4)),
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        ignore_eos=opt_bool(body, "ignore_eos"),
    )


def output_text(start: int, count: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(start, start + count))


def usage(prompt_tokens: int, completion_tokens: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


class StreamFormat:
    """Byte templates for the SSE chunks of one streamed response."""

    __slots__ = ("_chunks", "_head", "chat")

    def __init__(self, chat: bool, rid: str, created: int, model: str) -> None:
        self.chat = chat
        kind = "chat.completion.chunk" if chat else "text_completion"
        self._head: dict[str, Any] = {
            "id": rid,
            "object": kind,
            "created": created,
            "model": model,
        }
        head = orjson.dumps(self._head)[:-1]
        if chat:
            pre = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":"'
            suf = b'"},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            pre = b"data: " + head + b',"choices":[{"index":0,"text":"'
            suf = b'","logprobs":null,"finish_reason":null}]}\n\n'
        self._chunks = [pre + w.encode() + suf for w in WORDS]

    def _event(self, obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def role(self) -> bytes:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}  # fmt: skip
        return self._event({**self._head, "choices": [choice]})

    def tokens(self, start: int, count: int) -> bytes:
        chunks, n = self._chunks, len(self._chunks)
        return b"".join([chunks[i % n] for i in range(start, start + count)])

    def finish(self, reason: str, use: dict[str, Any] | None) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {}, "logprobs": None}
        else:
            choice = {"index": 0, "text": "", "logprobs": None}
        choice["finish_reason"] = reason
        out = self._event({**self._head, "choices": [choice]})
        if use is not None:
            out += self._event({**self._head, "choices": [], "usage": use})
        return out + b"data: [DONE]\n\n"


def full_response(
    chat: bool, rid: str, created: int, model: str, text: str, reason: str, use: dict[str, Any]
) -> bytes:
    if chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": reason,
        }
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    obj = {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": use,
    }
    return orjson.dumps(obj)
