"""One gRPC call on one HTTP/2 stream, as a handler sees it: `read()` the client's messages (None
once it has half-closed), `write()` replies (sent as the peer's windows allow), and `GrpcError`
to end the call with a status. `epp.grpcwire.connection` owns the stream around it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from epp.grpcwire.connection import Connection

OK, CANCELLED, UNKNOWN, NOT_FOUND, RESOURCE_EXHAUSTED = 0, 1, 2, 5, 8
UNIMPLEMENTED, INTERNAL, UNAVAILABLE = 12, 13, 14


class GrpcError(Exception):
    """Ends a call with this gRPC status and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Call:
    __slots__ = (
        "_conn",
        "_inbox",
        "_waiter",
        "data",
        "done",
        "headers_sent",
        "need",
        "out",
        "recv_unacked",
        "remote_closed",
        "reset",
        "stream",
        "task",
        "trailers",
        "window",
    )

    def __init__(self, conn: Connection, stream: int, window: int) -> None:
        self._conn = conn
        self.stream = stream
        self.window = window  # what the peer lets us send on this stream
        self._inbox: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.data = bytearray()  # received bytes not yet a whole message
        self.need = 5  # the bytes the message begun in `data` needs, its prefix included
        self.out = bytearray()  # framed replies the windows hold back
        self.trailers: bytes | None = None  # the ending block, once the handler returned
        self.headers_sent = False
        self.done = False  # the handler's ending (trailers) is queued: nothing more is written
        self.remote_closed = False
        self.reset = False  # the stream is gone (reset by either side, or the connection lost)
        self.recv_unacked = 0
        self.task: asyncio.Task[None] | None = None

    async def read(self) -> bytes | None:
        """The next message, or None once the client has sent all of its messages."""
        inbox = self._inbox
        while not inbox:
            if self.remote_closed:
                return None
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return inbox.popleft()

    def write(self, message: bytes) -> None:
        self._conn.send_message(self, message)

    # ---- fed by the connection ---------------------------------------------------------------
    def deliver(self, message: bytes) -> None:
        self._inbox.append(message)
        self._wake()

    def end(self) -> None:
        self.remote_closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


Handler = Callable[[Call], Awaitable[None]]
