"""The lean gRPC server: a listening socket of `epp.grpcwire.connection`s on the event loop.

Serves a fixed table of methods (`/package.Service/Method` → handler) over cleartext HTTP/2 with
prior knowledge, as Envoy speaks to a gRPC cluster; SO_REUSEPORT, like grpc's server, so that
`epp serve --workers N` shares one port. `stop(grace)` says GOAWAY on every connection, waits up to
`grace` seconds for the calls in flight, then cancels what is left and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from epp.grpcwire.call import Handler
from epp.grpcwire.connection import Connection


class LeanServer:
    def __init__(
        self, routes: Mapping[str, Handler], max_message: int, max_streams: int = 1 << 16
    ) -> None:
        self._routes = dict(routes)
        self._max_message = max_message
        self._max_streams = max_streams
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._idle = asyncio.Event()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection, host, port, reuse_port=True, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    def _connection(self) -> Connection:
        conn = Connection(self._routes, self._max_message, self._max_streams, self._lost)
        self._connections.add(conn)
        self._idle.clear()
        return conn

    def _lost(self, conn: Connection) -> None:
        self._connections.discard(conn)
        if not self._connections:
            self._idle.set()

    async def stop(self, grace: float | None) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.goaway()
        if self._connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace or 0)
        for conn in list(self._connections):
            conn.close_now()
        if self._server is not None:
            await self._server.wait_closed()
