"""The request value: an inference request's body read once, before anything decides on it.

`read_body` parses a complete body (OpenAI chat or completions today): the client's model, the
prompt text a prefix cache would see, a token estimate, the output limit and the stream flag.
`from_headers` is for proxies that route before the body arrives (the model comes from the
`x-model-name` header, nothing can be rewritten), and `NO_INFERENCE` for requests without a body
(GET /v1/models). Neighbours: `epp.routing` turns the model into a route, `epp.admission` reads
the size and output limit, `epp.director` hands the rest to the scheduler. Nothing here knows
the proxy or the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import orjson

from epp.errors import BadRequest, RequestTooLarge
from epp.types import CHARS_PER_TOKEN

API_CHAT = "chat"  # /v1/chat/completions: `messages`
API_COMPLETIONS = "completions"  # /v1/completions: `prompt`
API_OTHER = "other"  # a JSON body with a model, of a shape not read further
API_HEADERS = "headers"  # routed before its body: the model from the x-model-name header
API_NONE = "none"  # no body at all: nothing for a model to run (GET /v1/models)
MODEL_HEADER = "x-model-name"


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One request as the EPP understands it. `payload` is the decoded body (None without one)."""

    api: str
    model: str  # the model the client asked for
    body: bytes = b""
    payload: dict[str, object] | None = None
    prompt: bytes = b""  # the text a prefix cache would see
    prompt_tokens: int = 1  # estimate, for in-flight token accounting
    output_limit: int | None = None  # max_completion_tokens / max_tokens: a cap
    stream: bool = False

    @property
    def runs_inference(self) -> bool:
        """Whether a model server will run it (and so take a batch slot)."""
        return self.api != API_NONE

    @property
    def size(self) -> int:
        """Body bytes the request holds in memory while it waits."""
        return len(self.body)

    def body_for(self, served_model: str) -> bytes:
        """The body to send upstream: re-serialized only when the server needs another name."""
        if self.payload is None or served_model == self.model:
            return self.body
        return orjson.dumps({**self.payload, "model": served_model})


NO_INFERENCE = InferenceRequest(API_NONE, "")


class Body(Enum):
    """A request whose body the EPP does not get before it must decide."""

    FOLLOWS = "follows"  # the proxy routes first and streams the body on unchanged
    NONE = "none"  # the request has no body


def read(headers: Mapping[str, str], body: bytes | Body, max_bytes: int) -> InferenceRequest:
    """The request value from what the proxy has shown of it so far."""
    if body is Body.NONE:
        return NO_INFERENCE
    if body is Body.FOLLOWS:
        return from_headers(headers)
    return read_body(body, max_bytes)


def read_body(body: bytes, max_bytes: int) -> InferenceRequest:
    """Parse a complete request body; bad input raises `BadRequest` / `RequestTooLarge`."""
    if len(body) > max_bytes:
        raise RequestTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    model = payload.get("model")
    if model is None:
        raise BadRequest("model not found in request body")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string")
    if isinstance(payload.get("messages"), list):
        api = API_CHAT
    elif "prompt" in payload:
        api = API_COMPLETIONS
    else:
        api = API_OTHER
    prompt = prompt_text(payload)
    return InferenceRequest(
        api,
        model,
        body,
        payload,
        prompt,
        max(1, len(prompt) // CHARS_PER_TOKEN),
        output_limit(payload),
        payload.get("stream") is True,
    )


def from_headers(headers: Mapping[str, str]) -> InferenceRequest:
    """A request routed before its body: the model must come from the `x-model-name` header."""
    model = headers.get(MODEL_HEADER, "")
    if not model:
        raise BadRequest(
            "the x-model-name header is required when the proxy streams request bodies"
        )
    return InferenceRequest(API_HEADERS, model)


def prompt_text(payload: Mapping[str, object]) -> bytes:
    """The text a prefix cache would see: chat turns with role markers, or the completion prompt.

    Only string contents count (and the text parts of multi-part contents); the same
    conversation prefix always yields the same leading bytes.
    """
    messages = payload.get("messages")
    if isinstance(messages, list):
        parts: list[str] = []
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            if isinstance(content, str):
                parts.append(f"<|im_start|>{message.get('role', '')}\n{content}<|im_end|>\n")
        return "".join(parts).encode()
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt.encode()
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "".join(prompt).encode()
    return b""


def output_limit(payload: Mapping[str, object]) -> int | None:
    """The completion's token bound (`max_completion_tokens`, else `max_tokens`), if valid."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
