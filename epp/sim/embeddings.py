"""OpenAI's embeddings API (`/v1/embeddings`) as vLLM serves it: one vector per input.

The inputs (a string, strings, token ids or lists of them) pass through the engine as one
prefill with a single step after it, so embeddings take batch slots and KV blocks like any
request. Each vector is unit-length and drawn from a hash of its input, so the same text always
gets the same vector; `dimensions` sets its length (default 256) and `encoding_format: base64`
packs it as little-endian float32, as the `openai` client asks by default.
"""

from __future__ import annotations

import base64
import math
import random
from array import array
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

from epp.sim.openai import ApiError, CompletionRequest, json_object, opt_int
from epp.sim.tokenizer import SimTokenizer
from epp.sim.wire import Counts, Streamer

DEFAULT_DIMENSIONS = 256
MAX_DIMENSIONS = 8192


def _inputs(body: dict[str, Any]) -> list[tuple[bytes, str | None]]:
    """Each input's bytes for the engine, and its text (None: token ids)."""
    given = body.get("input")
    one_list = isinstance(given, list) and given and all(isinstance(t, int) for t in given)
    if isinstance(given, str) or one_list:
        given = [given]
    if not isinstance(given, list) or not given:
        raise ApiError(400, "'input' must be a non-empty string, list of strings or token ids",
                       "input")  # fmt: skip
    out: list[tuple[bytes, str | None]] = []
    for i, one in enumerate(given):
        if isinstance(one, str) and one:
            out.append((one.encode(), one))
        elif (
            isinstance(one, list)
            and one
            and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**32 for t in one)
        ):
            out.append((array("I", one).tobytes(), None))
        else:
            raise ApiError(400, f"input[{i}] must be a non-empty string or list of token ids",
                           "input")  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class EmbeddingRequest(CompletionRequest):
    inputs: tuple[bytes, ...] = ()
    texts: tuple[str | None, ...] = ()
    base64: bool = False
    dimensions: int = DEFAULT_DIMENSIONS


def parse(raw: bytes) -> EmbeddingRequest:
    body = json_object(raw)
    inputs = _inputs(body)
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64", None):
        raise ApiError(400, "'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dims = opt_int(body, "dimensions") or DEFAULT_DIMENSIONS
    if dims > MAX_DIMENSIONS:
        raise ApiError(400, f"'dimensions' must be at most {MAX_DIMENSIONS}", "dimensions")
    prompt = b"".join(one for one, _ in inputs)
    return EmbeddingRequest(
        chat=False,
        model=body["model"],
        prompt=prompt,
        prompt_tokens=sum(max(1, -(-len(one) // 4)) for one, _ in inputs),
        max_tokens=1,  # the pass over the input; nothing is generated
        stream=False,
        include_usage=True,
        ignore_eos=True,
        inputs=tuple(one for one, _ in inputs),
        texts=tuple(text for _, text in inputs),
        base64=fmt == "base64",
        dimensions=dims,
    )


def vector(text: bytes, dims: int) -> list[float]:
    """A unit vector drawn from the input's hash: the same text, the same vector."""
    rng = random.Random(xxhash.xxh64_intdigest(text))
    values = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class EmbeddingsWire:
    id_prefix = "embd-"

    def parse(self, raw: bytes) -> CompletionRequest:
        return parse(raw)

    def token_ids(
        self, tokenizer: SimTokenizer, raw: bytes, req: CompletionRequest
    ) -> tuple[int, ...] | None:
        if not isinstance(req, EmbeddingRequest):
            return None
        ids: list[int] = []
        for text in req.texts:
            if text is None:
                return None
            ids.extend(tokenizer.completion_ids(text))
        return tuple(ids)

    def streamer(self, rid: str, created: int, req: CompletionRequest) -> Streamer:
        raise ApiError(400, "embeddings are not streamed", "stream")

    def answer(self, rid: str, created: int, req: CompletionRequest, counts: Counts) -> bytes:
        assert isinstance(req, EmbeddingRequest)
        data = []
        for i, one in enumerate(req.inputs):
            values = vector(one, req.dimensions)
            embedding: object = values
            if req.base64:
                embedding = base64.b64encode(array("f", values).tobytes()).decode()
            data.append({"index": i, "object": "embedding", "embedding": embedding})
        return orjson.dumps(
            {
                "id": rid,
                "object": "list",
                "created": created,
                "model": req.model,
                "data": data,
                "usage": {
                    "prompt_tokens": counts.prompt_tokens,
                    "total_tokens": counts.prompt_tokens,
                    "completion_tokens": 0,
                    "prompt_tokens_details": None,
                },
            }
        )

    def error(self, error: ApiError) -> bytes:
        return error.body()
