"""Requests that are what they say: encoded bodies decoded within a bound (a zip bomb is 413,
a mislabelled body 400, an encoding we do not decode 415) and model names that are names."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import orjson
import pytest

from epp.errors import BadRequest, RequestTooLarge, UnsupportedMediaType
from epp.extproc.messages import error_body
from epp.request import MAX_MODEL_NAME, Body, InferenceRequest, read

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello " * 50}]})


def parse(body: bytes, encoding: str | None = None, limit: int = 1 << 20) -> InferenceRequest:
    headers = {":path": "/v1/chat/completions"}
    if encoding is not None:
        headers["content-encoding"] = encoding
    return read(headers, body, limit)


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b, wbits=-15)),  # raw deflate, as some clients send
        ("identity", lambda b: b),
    ],
)
def test_encoded_bodies_are_read_decoded(encoding: str, encode: Callable[[bytes], bytes]) -> None:
    request = parse(encode(BODY), encoding)
    assert request.body == BODY and request.prompt.startswith(b"<|im_start|>user\nhello")
    assert request.decoded is (encoding != "identity")


def test_a_zip_bomb_is_refused_without_unfolding_it() -> None:
    bomb = gzip.compress(b'{"model": "m", "prompt": "' + b"a" * (64 << 20))
    assert len(bomb) < 100_000
    with pytest.raises(RequestTooLarge) as info:
        parse(bomb, "gzip", limit=1 << 20)
    assert info.value.status == 413 and "decoded from gzip exceeds" in info.value.message
    exact = gzip.compress(BODY)
    with pytest.raises(RequestTooLarge):
        parse(exact, "gzip", limit=len(BODY) - 1)
    assert parse(exact, "gzip", limit=len(BODY)).body == BODY


@pytest.mark.parametrize(
    ("body", "encoding", "message"),
    [
        (BODY, "gzip", "labelled gzip but is not gzip data"),
        (BODY, "deflate", "labelled deflate but is not deflate data"),
        (gzip.compress(BODY)[:-12], "gzip", "truncated gzip data"),
        (gzip.compress(BODY) + b"junk", "gzip", "4 bytes after its gzip data"),
    ],
)
def test_a_mislabelled_or_broken_body_is_a_bad_request(
    body: bytes, encoding: str, message: str
) -> None:
    with pytest.raises(BadRequest) as info:
        parse(body, encoding)
    assert info.value.status == 400 and message in info.value.message


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_an_encoding_not_decoded_is_415(encoding: str) -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        parse(b"\x28\xb5\x2f\xfd", encoding)
    assert info.value.status == 415 and repr(encoding) in info.value.message
    body = orjson.loads(error_body(info.value))["error"]
    assert body["type"] == "invalid_request_error" and body["code"] == 415


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("x" * 10_000, "model name is 10000 characters long; the limit is 256"),
        ("llama\nInjected: header", "control character '\\n' at position 5"),
        ("tab\there", "control character '\\t' at position 3"),
        ("nul\x00", "control character '\\x00' at position 3"),
        ("del\x7f", "control character '\\x7f' at position 3"),
    ],
)
def test_model_names_are_names(model: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(orjson.dumps({"model": model, "prompt": "x"}))
    assert info.value.status == 400 and message in info.value.message
    with pytest.raises(BadRequest):  # from the header too, when the body follows
        read({"x-model-name": model}, Body.FOLLOWS, 1 << 20)


def test_ordinary_names_pass() -> None:
    for model in ("meta-llama/Llama-2-7b-chat-hf", "qwen2.5:7b", "модель-ü", "m" * MAX_MODEL_NAME):
        assert parse(orjson.dumps({"model": model, "prompt": "x"})).model == model
