"""One HTTP/2 connection of the lean gRPC server: frames in, calls out (RFC 9113, gRPC over HTTP/2).

An asyncio protocol that reads frames straight off the socket on the event loop (no poller thread,
no per-message hop between threads: that hop is most of grpc.aio's cost per message). Each new
stream whose `:path` names a known method becomes a `Call` run by its own task; DATA frames are
cut into gRPC messages (5-byte prefix) and handed to it. Replies and trailers go out as the
peer's flow-control windows allow; received bytes are given back with WINDOW_UPDATE. SETTINGS,
PING and GOAWAY are answered; RST_STREAM from the peer cancels its call's task (so a handler's
`finally` runs once); losing the connection cancels them all.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Mapping
from urllib.parse import quote

import hpack

from epp.grpcwire import frames as f
from epp.grpcwire.call import INTERNAL, RESOURCE_EXHAUSTED, UNIMPLEMENTED, Call, GrpcError, Handler
from epp.grpcwire.headers import PathDecoder

log = logging.getLogger("epp.grpcwire")
RECEIVE_WINDOW = 16 << 20  # per stream and for the connection: given back once half is read
MAX_FRAME = 1 << 20  # what we let the peer send in one frame
_HEAD = f.HEAD
_PREFIX = 5
_U32 = struct.Struct(">L")
_MESSAGE_SAFE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"  # grpc-message: printable ASCII but %


class ProtocolViolation(Exception):
    """An HTTP/2 connection error: GOAWAY with this code, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Connection(asyncio.Protocol):
    def __init__(
        self,
        routes: Mapping[str, Handler],
        max_message: int,
        max_streams: int,
        on_lost: Callable[[Connection], None],
    ) -> None:
        self._routes = routes
        self._max_message = max_message
        self._max_streams = max_streams
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._need = len(f.PREFACE)
        self._preface = False
        self._decoder = PathDecoder()
        self.calls: dict[int, Call] = {}
        self._last_stream = 0
        self._send_window = f.DEFAULT_WINDOW
        self._stream_window = f.DEFAULT_WINDOW  # the peer's initial window for new streams
        self._frame_size = f.DEFAULT_FRAME  # the most the peer takes in one frame
        self._recv_unacked = 0
        self._blocked: set[Call] = set()
        self._pending_headers: tuple[int, int, bytearray] | None = None  # awaiting CONTINUATION
        self._outbox: list[bytes] = []
        self.draining = False
        self.closed = False

    # ---- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport
        self._emit(
            f.settings(
                {
                    f.MAX_CONCURRENT_STREAMS: self._max_streams,
                    f.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW,
                    f.MAX_FRAME_SIZE: MAX_FRAME,
                    f.ENABLE_PUSH: 0,
                }
            )
        )
        self._emit(f.window_update(0, RECEIVE_WINDOW - f.DEFAULT_WINDOW))

    def data_received(self, data: bytes) -> None:
        # Frames are cut from the bytes as read, as views (no copy); only a frame split across
        # reads is gathered, once it is whole (`_need`: the bytes the next frame needs).
        buf = self._buf
        if buf or len(data) < self._need:
            buf += data
            if len(buf) < self._need:
                return
            data = bytes(buf)
            buf.clear()
        view = memoryview(data)
        pos, end = 0, len(data)
        try:
            if not self._preface:
                if data[: len(f.PREFACE)] != f.PREFACE:
                    raise ProtocolViolation(f.PROTOCOL_ERROR, "not an HTTP/2 client preface")
                self._preface, pos = True, len(f.PREFACE)
            need = 9
            while end - pos >= 9:
                high, low, kind, flags, stream = _HEAD.unpack_from(data, pos)
                length = (high << 16) | low
                if length > MAX_FRAME:
                    raise ProtocolViolation(f.FRAME_SIZE_ERROR, "frame larger than allowed")
                if end - pos - 9 < length:
                    need = 9 + length
                    break
                pos += 9 + length
                self._frame(kind, flags, stream & 0x7FFFFFFF, view[pos - length : pos])
            self._need = need
            if pos < end:
                buf += view[pos:]
        except ProtocolViolation as exc:
            self._abort(exc.code, str(exc))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for call in list(self.calls.values()):
            call.reset = True
            if call.task is not None:
                call.task.cancel()
        self.calls.clear()
        self._on_lost(self)

    # ---- frames in ---------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, stream: int, payload: memoryview) -> None:
        if self._pending_headers is not None and kind != f.CONTINUATION:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == f.DATA:
            self._data(flags, stream, payload)
        elif kind == f.HEADERS:
            self._headers(flags, stream, payload)
        elif kind == f.CONTINUATION:
            self._continuation(flags, stream, payload)
        elif kind == f.RST_STREAM:
            self._peer_reset(stream)
        elif kind == f.SETTINGS:
            if not flags & f.ACK:
                self._settings(payload)
        elif kind == f.PING:
            if not flags & f.ACK:
                self._emit(f.frame(f.PING, f.ACK, 0, bytes(payload)))
        elif kind == f.WINDOW_UPDATE:
            self._window_update(stream, payload)
        elif kind == f.GOAWAY:
            self.draining = True
            self._close_if_idle()
        elif kind == f.PUSH_PROMISE:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown frame types are ignored (RFC 9113 §5.5)

    def _settings(self, payload: memoryview) -> None:
        if len(payload) % 6:
            raise ProtocolViolation(f.FRAME_SIZE_ERROR, "bad SETTINGS length")
        values = f.parse_settings(payload)
        if f.INITIAL_WINDOW_SIZE in values:
            window = values[f.INITIAL_WINDOW_SIZE]
            if window > f.MAX_WINDOW:
                raise ProtocolViolation(f.FLOW_CONTROL_ERROR, "initial window too large")
            delta, self._stream_window = window - self._stream_window, window
            for call in self.calls.values():
                call.window += delta
        if f.MAX_FRAME_SIZE in values:
            self._frame_size = values[f.MAX_FRAME_SIZE]
        self._emit(f.frame(f.SETTINGS, f.ACK, 0))
        self._pump_blocked()

    def _window_update(self, stream: int, payload: memoryview) -> None:
        increment = f.u31(payload)
        if stream == 0:
            self._send_window += increment
            self._pump_blocked()
            return
        call = self.calls.get(stream)
        if call is not None:
            call.window += increment
            self._pump(call)

    def _peer_reset(self, stream: int) -> None:
        call = self.calls.pop(stream, None)
        if call is not None:
            call.reset = True
            self._blocked.discard(call)
            if call.task is not None:
                call.task.cancel()
        self._close_if_idle()

    def _headers(self, flags: int, stream: int, payload: memoryview) -> None:
        start, end = 0, len(payload)
        if flags & f.PADDED:
            start, end = 1, end - payload[0]
        if flags & f.PRIORITY_FLAG:
            start += 5
        if flags & f.END_HEADERS:
            self._header_block(flags, stream, bytes(payload[start:end]))
        else:
            self._pending_headers = (stream, flags, bytearray(payload[start:end]))

    def _continuation(self, flags: int, stream: int, payload: memoryview) -> None:
        pending = self._pending_headers
        if pending is None or pending[0] != stream:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "CONTINUATION out of place")
        pending[2].extend(payload)
        if flags & f.END_HEADERS:
            self._pending_headers = None
            self._header_block(pending[1], stream, bytes(pending[2]))

    def _header_block(self, flags: int, stream: int, block: bytes) -> None:
        try:  # always decoded: the block may change the decoder's table even if refused
            path = self._decoder.path(block)
        except hpack.HPACKError as exc:
            raise ProtocolViolation(f.COMPRESSION_ERROR, f"bad header block: {exc}") from None
        call = self.calls.get(stream)
        if call is not None:  # the client's trailers: they end its side
            call.end()
            return
        if stream % 2 == 0:
            raise ProtocolViolation(f.PROTOCOL_ERROR, "a client stream id must be odd")
        if stream <= self._last_stream:
            return  # trailers on a stream we already ended (or reset): too late, dropped
        self._last_stream = stream
        if self.draining or len(self.calls) >= self._max_streams:
            self._emit(f.rst_stream(stream, f.REFUSED_STREAM))
            return
        call = Call(self, stream, self._stream_window)
        if flags & f.END_STREAM:
            call.remote_closed = True
        self.calls[stream] = call
        handler = self._routes.get(path)
        if handler is None:
            self._finish(call, UNIMPLEMENTED, f"unknown method {path}")
            return
        call.task = asyncio.get_running_loop().create_task(self._run(call, handler))

    def _data(self, flags: int, stream: int, payload: memoryview) -> None:
        self._recv_unacked += len(payload)
        if self._recv_unacked >= RECEIVE_WINDOW // 2:
            self._emit(f.window_update(0, self._recv_unacked))
            self._recv_unacked = 0
        call = self.calls.get(stream)
        if call is None:
            if stream > self._last_stream:
                raise ProtocolViolation(f.PROTOCOL_ERROR, "DATA on an idle stream")
            return  # a stream we ended or the peer reset: its late frames are dropped
        if call.remote_closed:
            self._emit(f.rst_stream(stream, f.STREAM_CLOSED))
            return
        if call.done:
            return
        call.recv_unacked += len(payload)
        if call.recv_unacked >= RECEIVE_WINDOW // 2 and not flags & f.END_STREAM:
            self._emit(f.window_update(stream, call.recv_unacked))
            call.recv_unacked = 0
        if flags & f.PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        data = call.data
        if data:  # more of a message begun in an earlier frame: gathered until it is whole
            data += payload
            if len(data) < call.need:
                if flags & f.END_STREAM:
                    call.end()
                return None
            payload = memoryview(bytes(data))
            data.clear()
        pos, end = 0, len(payload)
        call.need = _PREFIX
        while end - pos >= _PREFIX:
            size = _U32.unpack_from(payload, pos + 1)[0]
            if payload[pos]:
                return self._fail(call, UNIMPLEMENTED, "compressed messages are not supported")
            if size > self._max_message:
                return self._fail(
                    call, RESOURCE_EXHAUSTED, f"message of {size} bytes, over {self._max_message}"
                )
            if end - pos < _PREFIX + size:
                call.need = _PREFIX + size
                break
            pos += _PREFIX + size
            call.deliver(bytes(payload[pos - size : pos]))
        if pos < end:
            data += payload[pos:]
        if flags & f.END_STREAM:
            call.end()
        return None

    # ---- calls -------------------------------------------------------------------------------
    async def _run(self, call: Call, handler: Handler) -> None:
        try:
            await handler(call)
        except asyncio.CancelledError:
            if call.reset or call.done:
                return  # the peer reset the stream, the connection went away, or we ended it
            raise
        except GrpcError as exc:
            self._finish(call, exc.code, exc.message)
            return
        except Exception:
            log.exception("gRPC handler failed")
            self._finish(call, INTERNAL, "internal error")
            return
        self._finish(call, 0, "")

    def _fail(self, call: Call, code: int, message: str) -> None:
        """End a call from the connection's side (a bad message): its handler is cancelled."""
        self._finish(call, code, message)
        if call.task is not None:
            call.task.cancel()

    def send_message(self, call: Call, message: bytes) -> None:
        if call.reset or call.done:
            return
        if not call.headers_sent:
            call.headers_sent = True
            self._emit(f.frame(f.HEADERS, f.END_HEADERS, call.stream, f.RESPONSE_HEADERS))
        call.out += len(message).to_bytes(_PREFIX, "big")  # flag 0, then the length
        call.out += message
        self._pump(call)

    def _finish(self, call: Call, code: int, message: str) -> None:
        if call.reset or call.done or self.closed:
            return
        call.done = True
        block = f.STATUS_OK if code == 0 else f.literal(b"grpc-status", str(code).encode())
        if message:
            block += f.literal(b"grpc-message", quote(message, safe=_MESSAGE_SAFE).encode())
        if not call.headers_sent:  # trailers-only
            block = f.RESPONSE_HEADERS + block
            call.headers_sent = True
        call.trailers = block
        self._pump(call)

    def _pump(self, call: Call) -> None:
        """Send what the windows allow of the call's replies, then its trailers."""
        out = call.out
        size = len(out)
        if size and size <= self._frame_size and size <= self._send_window and size <= call.window:
            self._emit(f.frame(f.DATA, 0, call.stream, bytes(out)))  # all of it, one frame
            out.clear()
            self._send_window -= size
            call.window -= size
        while out:
            n = min(len(out), self._send_window, call.window, self._frame_size)
            if n <= 0:
                self._blocked.add(call)
                return
            self._emit(f.frame(f.DATA, 0, call.stream, bytes(out[:n])))
            del out[:n]
            self._send_window -= n
            call.window -= n
        self._blocked.discard(call)
        if call.trailers is not None:
            self._emit(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, call.stream, call.trailers))
            if not call.remote_closed:  # we are done: the client need send nothing more
                self._emit(f.rst_stream(call.stream, f.NO_ERROR))
            call.trailers = None
            if self.calls.get(call.stream) is call:
                del self.calls[call.stream]
            self._close_if_idle()

    def _pump_blocked(self) -> None:
        for call in list(self._blocked):
            self._pump(call)

    # ---- frames out --------------------------------------------------------------------------
    def _emit(self, data: bytes) -> None:
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(data)

    def _flush(self) -> None:
        out, self._outbox = self._outbox, []
        if out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def goaway(self) -> None:
        """Take no new streams; the connection closes once its calls have ended."""
        self.draining = True
        self._emit(f.goaway(self._last_stream, f.NO_ERROR))
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.draining and not self.calls and self._transport is not None:
            asyncio.get_running_loop().call_soon(self._close)

    def close_now(self) -> None:
        """Stop at once: the calls still running are cancelled (as the peer going away would)."""
        self._close()

    def _close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _abort(self, code: int, message: str) -> None:
        log.warning("closing an HTTP/2 connection: %s", message)
        self._emit(f.goaway(self._last_stream, code, message.encode()[:200]))
        self.draining = True
        asyncio.get_running_loop().call_soon(self._close)
