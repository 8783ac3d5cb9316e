"""Follows one response body: token usage and the model-name back-rewrite.

Full-duplex mode (`feed`/`finish`): streaming (SSE) bodies pass through chunk by chunk; when the
model name must be restored, only complete lines are forwarded so a name split across chunks is
still rewritten; non-streaming bodies are held to the end, read whole and rewritten. STREAMED
mode (`feed_inline`/`finish`): every chunk is answered on its own, rewritten in place.
Usage comes from the last SSE event that carries it, or the JSON body; without usage, output
tokens are estimated by counting events.
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
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict):
            return
        self.saw_usage = True
        self.prompt_tokens = _int(usage.get("prompt_tokens"))
        self.output_tokens = _int(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        if isinstance(details, dict):
            self.cached_tokens = _int(details.get("cached_tokens"))


def _int(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
