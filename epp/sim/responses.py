"""OpenAI's Responses API (`/v1/responses`) as vLLM serves it: requests, answers, events.

`instructions` and `input` (a string, or message items and tool outputs) become the same
conversation bytes a chat request would (`render_turns`). An answer is one `message` output
item with one `output_text` part; usage is `input_tokens` (with `input_tokens_details.
cached_tokens`) and `output_tokens`. A stream is the API's named events, each with its
`sequence_number`: response.created, response.in_progress, output_item.added,
content_part.added, one output_text.delta per token, output_text.done, content_part.done,
output_item.done and response.completed (response.incomplete when the output limit cut it).
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


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{where} must be a string or a list of parts", "input")
    texts = [p.get("text") for p in content if isinstance(p, dict)]
    return "".join(t for t in texts if isinstance(t, str))


def _turns(body: dict[str, Any]) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise ApiError(400, "'instructions' must be a string", "instructions")
        turns.append(("system", instructions))
    given = body.get("input")
    if isinstance(given, str) and given:
        return [*turns, ("user", given)]
    if not isinstance(given, list) or not given:
        raise ApiError(400, "'input' must be a non-empty string or list of items", "input")
    for i, item in enumerate(given):
        if not isinstance(item, dict):
            raise ApiError(400, f"input[{i}] must be an object", "input")
        if isinstance(item.get("role"), str):
            turns.append((item["role"], _text(item.get("content"), f"input[{i}].content")))
        elif item.get("type") == "function_call_output":
            turns.append(("tool", _text(item.get("output", ""), f"input[{i}].output")))
        elif item.get("type") == "function_call":
            turns.append(("assistant", str(item.get("arguments", ""))))
    return turns


def parse(raw: bytes) -> CompletionRequest:
    body = json_object(raw)
    return conversation_request(body, _turns(body), opt_int(body, "max_output_tokens"))


def _usage(counts: Counts) -> dict[str, Any]:
    return {
        "input_tokens": counts.prompt_tokens,
        "input_tokens_details": {"cached_tokens": counts.cached},
        "output_tokens": counts.generated,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": counts.prompt_tokens + counts.generated,
    }


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _item(rid: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": f"msg_{rid}", "type": "message", "status": status, "role": "assistant",
            "content": content}  # fmt: skip


def _response(
    rid: str, created: int, req: CompletionRequest, counts: Counts | None
) -> dict[str, Any]:
    """The response object; `counts` None: still in progress."""
    status, incomplete, output, use = "in_progress", None, [], None
    if counts is not None:
        cut = counts.reason == "length"
        status = "incomplete" if cut else "completed"
        incomplete = {"reason": "max_output_tokens"} if cut else None
        output = [_item(rid, status, [_part(output_text(0, counts.generated))])]
        use = _usage(counts)
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "model": req.model,
        "output": output,
        "max_output_tokens": req.max_tokens,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": use,
    }


class ResponsesStream:
    __slots__ = ("_created", "_pre", "_req", "_rid", "_seq", "_sufs")

    def __init__(self, rid: str, created: int, req: CompletionRequest) -> None:
        self._rid, self._created, self._req = rid, created, req
        self._seq = 0
        kind = b"response.output_text.delta"
        self._pre = (b"event: " + kind + b'\ndata: {"type":"' + kind + b'","item_id":"msg_'
                     + rid.encode() + b'","output_index":0,"content_index":0,"logprobs":[],'
                     b'"delta":')  # fmt: skip
        self._sufs = [orjson.dumps(w) + b',"sequence_number":' for w in WORDS]

    def _event(self, kind: str, obj: dict[str, Any]) -> bytes:
        data = orjson.dumps({"type": kind, **obj, "sequence_number": self._seq})
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def start(self, counts: Counts) -> bytes:
        response = _response(self._rid, self._created, self._req, None)
        item = {"output_index": 0, "item_id": f"msg_{self._rid}", "content_index": 0}
        return (
            self._event("response.created", {"response": response})
            + self._event("response.in_progress", {"response": response})
            + self._event(
                "response.output_item.added",
                {"output_index": 0, "item": _item(self._rid, "in_progress", [])},
            )
            + self._event("response.content_part.added", {**item, "part": _part("")})
        )

    def tokens(self, start: int, count: int) -> bytes:
        pre, sufs, n = self._pre, self._sufs, len(self._sufs)
        out = []
        for i in range(start, start + count):
            out.append(pre + sufs[i % n] + str(self._seq).encode() + b"}\n\n")
            self._seq += 1
        return b"".join(out)

    def finish(self, counts: Counts) -> bytes:
        text = output_text(0, counts.generated)
        item = {"output_index": 0, "item_id": f"msg_{self._rid}", "content_index": 0}
        done = _response(self._rid, self._created, self._req, counts)
        last = "response.completed" if done["status"] == "completed" else "response.incomplete"
        return (
            self._event("response.output_text.done", {**item, "text": text, "logprobs": []})
            + self._event("response.content_part.done", {**item, "part": _part(text)})
            + self._event(
                "response.output_item.done", {"output_index": 0, "item": done["output"][0]}
            )
            + self._event(last, {"response": done})
        )


class ResponsesWire(ConversationIds):
    id_prefix = ""  # the ids say resp_ and msg_ themselves

    def parse(self, raw: bytes) -> CompletionRequest:
        return parse(raw)

    def streamer(self, rid: str, created: int, req: CompletionRequest) -> Streamer:
        return ResponsesStream(rid, created, req)

    def answer(self, rid: str, created: int, req: CompletionRequest, counts: Counts) -> bytes:
        return orjson.dumps(_response(rid, created, req, counts))

    def error(self, error: ApiError) -> bytes:
        return error.body()
