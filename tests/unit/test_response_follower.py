from __future__ import annotations

import orjson

from epp.request import prompt_text
from epp.tracking.follower import ResponseFollower

SERVED, CLIENT = "meta-llama/Llama-2-7b-chat-hf", "llama2-7b-chat"


def sse(*events: dict[str, object]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_streaming_usage_and_rewrite_across_every_possible_split() -> None:
    body = sse(
        {"model": SERVED, "choices": [{"delta": {"content": "a"}}]},
        {"model": SERVED, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7,
                                                   "prompt_tokens_details": {"cached_tokens": 2}}},
    )  # fmt: skip
    for cut in range(1, len(body)):
        follower = ResponseFollower(True, SERVED, CLIENT)
        out = follower.feed(body[:cut]) + follower.feed(body[cut:]) + follower.finish()
        assert out == body.replace(SERVED.encode(), CLIENT.encode())
        assert (follower.prompt_tokens, follower.output_tokens, follower.cached_tokens) == (3, 7, 2)


def test_streaming_without_rewrite_passes_chunks_unchanged_and_counts_events() -> None:
    follower = ResponseFollower(True, CLIENT, CLIENT)
    body = sse(*({"model": CLIENT, "choices": [{"delta": {"content": "x"}}]} for _ in range(5)))
    chunks = [body[i : i + 13] for i in range(0, len(body), 13)]
    assert [follower.feed(c) for c in chunks] == chunks
    assert follower.finish() == b""
    assert follower.output_tokens == 5 and not follower.saw_usage


def test_non_streaming_body_is_held_then_rewritten_and_read() -> None:
    follower = ResponseFollower(False, SERVED, CLIENT)
    body = orjson.dumps({"model": SERVED, "usage": {"prompt_tokens": 4, "completion_tokens": 9}})
    assert follower.feed(body[:10]) == b""
    assert follower.feed(body[10:]) == b""
    assert orjson.loads(follower.finish())["model"] == CLIENT
    assert follower.output_tokens == 9


def test_inline_mode_rewrites_each_chunk_and_garbage_is_harmless() -> None:
    follower = ResponseFollower(False, SERVED, CLIENT)
    assert follower.feed_inline(b'{"model": "' + SERVED.encode() + b'"') == (
        b'{"model": "' + CLIENT.encode() + b'"'
    )
    assert follower.feed_inline(b"}not json") == b"}not json"
    assert follower.finish(inline=True) == b""
    assert not follower.saw_usage


def test_prompt_text_for_chat_parts_and_completions() -> None:
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url"}]
    chat = {
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": parts}, "x"]
    }
    assert prompt_text(chat) == b"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    assert prompt_text({"prompt": "abc"}) == b"abc"
    assert prompt_text({"prompt": ["a", "b"]}) == b"ab"
    assert prompt_text({"prompt": [1, 2]}) == b""
