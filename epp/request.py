"""The request value: an inference request's body read once, before anything decides on it.

`read_body` parses a complete body of any API `epp.apis` knows (OpenAI chat, completions,
responses, embeddings; Anthropic messages), decoded first if it came with a content-encoding
(`epp.encoding`): the client's model (checked: a name, not a paragraph), the prompt text a
prefix cache would see, a token estimate, the output limit and the stream flag. `from_headers`
is for proxies that route before the body arrives (the model comes from the `x-model-name`
header, nothing can be rewritten), and `NO_INFERENCE` for requests without a body
(GET /v1/models). Neighbours: `epp.routing` turns the model into a route, `epp.admission` reads
the size and output limit, `epp.director` hands the rest to the scheduler. Nothing here knows
the proxy or the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import orjson

from epp import apis
from epp.apis import output_limit, prompt_text
from epp.encoding import ENCODING_HEADER, decode
from epp.errors import BadRequest, RequestTooLarge
from epp.types import CHARS_PER_TOKEN

__all__ = ["output_limit", "prompt_text"]  # part of this module's face, defined in epp.apis

API_CHAT = apis.CHAT
API_COMPLETIONS = apis.COMPLETIONS
API_RESPONSES = apis.RESPONSES
API_EMBEDDINGS = apis.EMBEDDINGS
API_MESSAGES = apis.MESSAGES
API_OTHER = apis.OTHER
API_HEADERS = "headers"  # routed before its body: the model from the x-model-name header
API_NONE = "none"  # no body at all: nothing for a model to run (GET /v1/models)
MODEL_HEADER = "x-model-name"
PATH_HEADER = ":path"
MAX_MODEL_NAME = 256  # characters; Kubernetes names stop at 253


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
    decoded: bool = False  # the body came with a content-encoding and is held decoded

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
    encoding = headers.get(ENCODING_HEADER, "")
    path = headers.get(PATH_HEADER, "")
    return read_body(body, max_bytes, path, encoding)


def read_body(body: bytes, max_bytes: int, path: str = "", encoding: str = "") -> InferenceRequest:
    """Parse a complete request body sent to `path` with content-encoding `encoding`; bad
    input raises `BadRequest` / `RequestTooLarge` / `UnsupportedMediaType`."""
    if len(body) > max_bytes:
        raise RequestTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    decoded = encoding not in ("", "identity")
    if decoded:
        body = decode(body, encoding, max_bytes)
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
    check_model_name(model)
    api = apis.api_of(path, payload)
    prompt = prompt_text(payload, api)
    return InferenceRequest(
        api,
        model,
        body,
        payload,
        prompt,
        max(1, len(prompt) // CHARS_PER_TOKEN),
        output_limit(payload, api),
        payload.get("stream") is True,
        decoded,
    )


def check_model_name(model: str) -> None:
    """A model name is a name: bounded, on one line, printable (else 400, naming the fault)."""
    if len(model) > MAX_MODEL_NAME:
        raise BadRequest(
            f"model name is {len(model)} characters long; the limit is {MAX_MODEL_NAME}"
        )
    if model.isprintable():
        return
    for i, char in enumerate(model):
        if char < " " or "\x7f" <= char <= "\x9f":
            raise BadRequest(f"model name contains the control character {char!r} at position {i}")


def from_headers(headers: Mapping[str, str]) -> InferenceRequest:
    """A request routed before its body: the model must come from the `x-model-name` header."""
    model = headers.get(MODEL_HEADER, "")
    if not model:
        raise BadRequest(
            "the x-model-name header is required when the proxy streams request bodies"
        )
    check_model_name(model)
    return InferenceRequest(API_HEADERS, model)
