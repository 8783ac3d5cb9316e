"""Parsing OpenAI requests and building responses the way vLLM does."""

from __future__ import annotations

import orjson
import pytest

from epp.sim.openai import ApiError, StreamFormat, full_response, parse_request
from epp.sim.profiles import PROFILES, get_profile


def test_chat_prompt_tokens_are_deterministic() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 100}], "max_tokens": 5}
    a = parse_request(orjson.dumps(body), chat=True)
    assert a == parse_request(orjson.dumps(body), chat=True)
    assert a.prompt_tokens == -(-len(a.prompt) // 4) and a.max_tokens == 5
    parts = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 100}]}],
    }
    assert parse_request(orjson.dumps(parts), chat=True).prompt == a.prompt


def test_completion_prompt_forms() -> None:
    ids = parse_request(b'{"model": "m", "prompt": [1, 2, 3], "stream": true}', chat=False)
    assert ids.prompt_tokens == 3 and ids.stream and ids.max_tokens is None
    text = parse_request(b'{"model": "m", "prompt": ["abcdefgh"], "max_tokens": 2}', chat=False)
    assert text.prompt_tokens == 2
    opts = (
        b'{"model":"m","messages":[{"role":"user","content":"a"}],"max_completion_tokens":9,'
        b'"stream_options":{"include_usage":true},"ignore_eos":true}'
    )
    chat = parse_request(opts, chat=True)
    assert chat.max_tokens == 9 and chat.include_usage and chat.ignore_eos


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"[1]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": [{"content": "x"}]}', "messages"),
        (
            b'{"model": "m", "messages": [{"role": "u", "content": "x"}], "max_tokens": -1}',
            "max_tokens",
        ),
        (b'{"model": "m", "messages": [{"role": "u", "content": "x"}], "n": 2}', "n"),
        (b'{"model": "m", "messages": [{"role": "u", "content": 5}]}', "messages"),
    ],
)
def test_bad_bodies_are_400(raw: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as e:
        parse_request(raw, chat=True)
    assert e.value.status == 400 and e.value.param == param
    err = orjson.loads(e.value.body())["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400


def test_stream_chunks_are_valid_json() -> None:
    fmt = StreamFormat(True, "id-1", 7, 'm"x')
    raw = fmt.role() + fmt.tokens(0, 3) + fmt.finish("length", {"completion_tokens": 3})
    events = [e[6:] for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert [c["model"] for c in chunks] == ['m"x'] * 6
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:4])
        == " the quick brown"
    )
    assert chunks[-1]["usage"] == {"completion_tokens": 3}
    full = orjson.loads(full_response(False, "c", 1, "m", " a", "stop", {}))
    assert full["choices"][0]["text"] == " a" and full["object"] == "text_completion"


def test_profiles() -> None:
    assert get_profile("h100") is get_profile("H100") is get_profile("H100-80G")
    assert get_profile("1g.10gb").name == "MIG-1g.10gb"
    with pytest.raises(ValueError, match="known: H100"):
        get_profile("Z80")
    h100, l4 = get_profile("H100"), get_profile("L4")
    assert h100.step_time(0, 1, 100) < l4.step_time(0, 1, 100)
    assert len(PROFILES) >= 5
