"""Follows one response body: token usage and the model-name back-rewrite.

Full-duplex mode (`feed`/`finish`): streaming (SSE) bodies pass through chunk by chunk; when the
model name must be restored, only complete lines are forwarded so a name split across chunks is
still rewritten; non-streaming bodies are held to the end, read whole and rewritten. STREAMED
mode (`feed_inline`/`finish`): every chunk is answered on its own, rewritten in place.
Usage comes from the SSE events that carry it, or the JSON body, in each API's own shape: OpenAI
chat and completions (`prompt_tokens`, `completion_tokens`), embeddings (`prompt_tokens` only),
Responses (`input_tokens`, `output_tokens`, under `response` in its stream's last event) and
Anthropic messages (`input_tokens` and cache reads in `message_start`, `output_tokens` in
`message_delta`). Without usage, output tokens are estimated by counting events.
"""

from __future__ import annotations

import orjson

_MAX_HELD = 4 << 20  # never hold more than this of one response in memory


class ResponseFollower:
    def __init__(self, streaming: bool, served_model: str, client_model: str) -> None:
        self.streaming = streaming
        self.prompt_tokens = 0
        self.output_tokens = 0
        self.cached_tokens = 0
        self.events = 0
        self.saw_usage = False
        self._rewrite: tuple[tuple[bytes, bytes], ...] = ()
        if served_model != client_model:
            old, new = orjson.dumps(served_model), orjson.dumps(client_model)
            self._rewrite = ((b'"model":' + old, b'"model":' + new),
                             (b'"model": ' + old, b'"model": ' + new))  # fmt: skip
        self._tail = b""  # an incomplete SSE line
        self._held: list[bytes] = []  # a non-streaming body
        self._held_size = 0

    def feed(self, chunk: bytes) -> bytes:
        """Full-duplex: take one chunk; return the bytes to forward now."""
        if not self.streaming:
            self._hold(chunk)
            return b""
        complete = self._lines(chunk)
        if self._rewrite:
            return self._apply_rewrite(complete)
        return chunk  # nothing to rewrite: forward as received, even mid-line

    def feed_inline(self, chunk: bytes) -> bytes:
        """STREAMED mode: return this chunk's replacement (nothing can be held back)."""
        if self.streaming:
            self._lines(chunk)
        else:
            self._hold(chunk)
        return self._apply_rewrite(chunk)

    def finish(self, inline: bool = False) -> bytes:
        """End of body: whatever is still held back (rewritten), and the usage read."""
        if not self.streaming:
            body = b"".join(self._held)
            self._held = []
            self._read_usage(body)
            return b"" if inline else self._apply_rewrite(body)
        rest, self._tail = self._tail, b""
        if rest:
            self._scan_events(rest)
        return self._apply_rewrite(rest) if self._rewrite and not inline else b""

    def _hold(self, chunk: bytes) -> None:
        self._held_size += len(chunk)
        if self._held_size <= _MAX_HELD:
            self._held.append(chunk)

    def _lines(self, chunk: bytes) -> bytes:
        """Complete lines so far (scanned for usage); the incomplete rest is kept."""
        data = self._tail + chunk
        cut = data.rfind(b"\n") + 1
        complete, self._tail = data[:cut], data[cut:]
        if len(self._tail) > _MAX_HELD:  # not SSE-shaped: stop holding bytes back
            complete, self._tail = data, b""
        if complete:
            self._scan_events(complete)
        return complete

    def _apply_rewrite(self, data: bytes) -> bytes:
        for old, new in self._rewrite:
            data = data.replace(old, new)
        return data

    def _scan_events(self, lines: bytes) -> None:
        for line in lines.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]" or not payload:
                continue
            self.events += 1
            if b'"usage"' in payload and b'"usage":null' not in payload:
                self._read_usage(payload)
        if not self.saw_usage:
            self.output_tokens = self.events

    def _read_usage(self, payload: bytes) -> None:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        usage = _usage_of(obj)
        if usage is None:
            return
        self.saw_usage = True
        # each count is taken where the event has it: an Anthropic stream tells the input at
        # its start and the output at its end
        prompt = _int(usage, "prompt_tokens", "input_tokens")
        if prompt is not None:
            extra = [
                _int(usage, k) for k in ("cache_read_input_tokens", "cache_creation_input_tokens")
            ]
            self.prompt_tokens = prompt + sum(e or 0 for e in extra)
        output = _int(usage, "completion_tokens", "output_tokens")
        if output is not None:
            self.output_tokens = output
        cached = _int(usage, "cache_read_input_tokens")
        for key in ("prompt_tokens_details", "input_tokens_details"):
            details = usage.get(key)
            if isinstance(details, dict):
                cached = _int(details, "cached_tokens")
        if cached is not None:
            self.cached_tokens = cached


def _usage_of(obj: object) -> dict[str, object] | None:
    """The usage object of an answer or event: at its top, or in the `message` (Anthropic's
    message_start) or `response` (Responses' last events) it carries."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    for key in ("message", "response"):
        if usage is None and isinstance(obj.get(key), dict):
            usage = obj[key].get("usage")
    return usage if isinstance(usage, dict) else None


def _int(usage: dict[str, object], *keys: str) -> int | None:
    """The first of `keys` that holds a count (None: none does)."""
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None
