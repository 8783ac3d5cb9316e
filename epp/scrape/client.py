"""A keep-alive HTTP/1.1 client for /metrics pages: one open connection per endpoint.

The scraper fetches the same page from every pod many times a second; a general client's
per-request machinery (request and response objects, header multidicts, timers, tracing hooks)
costs several times what reading the page does. This one keeps a connection per endpoint, writes
a request built once per URL, and reads the answer with a small parser: the status line, the
few headers it acts on, a Content-Length, chunked or read-to-close body. Anything unexpected (a
status other than 200, HTML, an encoding it did not ask for, a page over the limit, a connection
closed mid-answer) raises and drops the connection; the next fetch opens a new one, and a fetch
that finds a kept connection closed by the server retries once on a fresh one. Used by
`epp.scrape.scraper`; nothing here knows what a metrics page says.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import cast
from urllib.parse import urlsplit

_END = b"\r\n\r\n"


class ScrapeError(Exception):
    """The endpoint answered, but not with a metrics page we accept (status, type, size)."""


class _Answer:
    """The response being read: headers first, then the body in one of three framings."""

    __slots__ = ("body", "chunked", "gzip", "keep", "length", "pos", "size")

    def __init__(self) -> None:
        self.length: int | None = None  # Content-Length; None with chunked or read-to-close
        self.chunked = False
        self.keep = True  # the connection may carry the next request
        self.gzip = False
        self.pos = -1  # where the body starts in the buffer (-1: headers not read yet)
        self.body: list[bytes] = []  # chunks read so far
        self.size = 0


class _Connection(asyncio.Protocol):
    def __init__(self, max_body: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.max_body = max_body
        self.buffer = bytearray()
        self.answer = _Answer()
        self.waiter: asyncio.Future[bytes] | None = None
        self.used = False  # a request went out on it before (it may have been closed since)
        self.open = False

    # -- asyncio callbacks -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport but have its methods
        self.transport, self.open = cast(asyncio.Transport, transport), True

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # nobody asked: not a server we understand
            return
        self.buffer += data
        try:
            body = self._read()
        except ScrapeError as exc:
            self._fail(exc)
            return
        if body is not None:
            waiter, self.waiter = self.waiter, None
            if not self.answer.keep:
                self.close()
            self.answer, self.buffer = _Answer(), bytearray()
            waiter.set_result(body)

    def eof_received(self) -> bool:
        answer, waiter = self.answer, self.waiter
        if waiter is not None and answer.pos >= 0 and answer.length is None and not answer.chunked:
            self.waiter = None  # read-to-close framing: the end of the stream ends the body
            try:
                waiter.set_result(self._finish(bytes(self.buffer[answer.pos :])))
            except ScrapeError as exc:
                waiter.set_exception(exc)
            self.close()
            return False
        self._fail(ConnectionResetError("connection closed by the endpoint"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self._fail(exc or ConnectionResetError("connection closed by the endpoint"))

    # -- requests --------------------------------------------------------------------------
    def send(self, data: bytes) -> asyncio.Future[bytes]:
        """Write one request; the future gets the body (or the failure). Cancelling it leaves
        the connection unusable: the answer still on its way cannot be told from the next."""
        assert self.transport is not None and self.waiter is None
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        self.used = True
        self.transport.write(data)
        return waiter

    async def request(self, data: bytes) -> bytes:
        return await self.send(data)

    @property
    def idle(self) -> bool:
        """Open, and no answer awaited (nor abandoned half-read)."""
        return self.open and self.waiter is None

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        self.close()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    # -- parsing ---------------------------------------------------------------------------
    def _read(self) -> bytes | None:
        """The body once it is complete, else None (more data to come)."""
        answer, buffer = self.answer, self.buffer
        if answer.pos < 0:
            end = buffer.find(_END)
            if end < 0:
                if len(buffer) > 65536:
                    raise ScrapeError("response headers over 64 KiB")
                return None
            self._headers(bytes(buffer[:end]))
            answer.pos = end + 4
        if answer.length is not None:
            if len(buffer) - answer.pos < answer.length:
                return None
            return self._finish(bytes(buffer[answer.pos : answer.pos + answer.length]))
        if answer.chunked:
            return self._chunks()
        if len(buffer) - answer.pos > self.max_body:
            raise ScrapeError(f"page over {self.max_body} bytes")
        return None  # read to close

    def _headers(self, block: bytes) -> None:
        answer = self.answer
        lines = block.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ScrapeError(f"not an HTTP/1 response: {lines[0][:80]!r}")
        if parts[1] != "200":
            raise ScrapeError(f"HTTP {parts[1]}")
        answer.keep = parts[0] != "HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                answer.length = int(value) if value.isdigit() else -1
                if answer.length < 0 or answer.length > self.max_body:
                    raise ScrapeError(f"page of {value} bytes is over {self.max_body}")
            elif name == "transfer-encoding":
                answer.chunked = value.endswith("chunked")
            elif name == "connection":
                answer.keep = value != "close" and (answer.keep or value == "keep-alive")
            elif name == "content-type" and value.startswith("text/html"):
                raise ScrapeError("content type text/html is not a metrics page")
            elif name == "content-encoding" and value not in ("", "identity"):
                if value != "gzip":
                    raise ScrapeError(f"unexpected content encoding {value!r}")
                answer.gzip = True
        if answer.chunked:
            answer.length = None

    def _chunks(self) -> bytes | None:
        answer, buffer = self.answer, self.buffer
        pos = answer.pos
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size_text = bytes(buffer[pos:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ScrapeError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                if buffer.find(_END, line_end - 2) < 0:  # trailers (usually none) end the body
                    return None
                return self._finish(b"".join(answer.body))
            if len(buffer) < line_end + 2 + size + 2:
                return None
            answer.body.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
            answer.size += size
            if answer.size > self.max_body:
                raise ScrapeError(f"page over {self.max_body} bytes")
            pos = answer.pos = line_end + 2 + size + 2

    def _finish(self, body: bytes) -> bytes:
        if self.answer.gzip:
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflate.decompress(body, self.max_body)
            except zlib.error as exc:
                raise ScrapeError(f"bad gzip page: {exc}") from None
            if inflate.unconsumed_tail:
                raise ScrapeError(f"page over {self.max_body} bytes")
        return body


class KeepAliveFetch:
    """`await fetch(url)` → the page's bytes; one kept connection per host and port."""

    def __init__(self, timeout: float, max_body: int, gzip: bool = False) -> None:
        self._timeout = timeout
        self._max_body = max_body
        self._accept = b"Accept-Encoding: gzip\r\n" if gzip else b"Accept-Encoding: identity\r\n"
        self._requests: dict[str, tuple[str, int, bytes]] = {}
        self._connections: dict[tuple[str, int], _Connection] = {}

    def begin(self, url: str) -> asyncio.Future[bytes] | None:
        """The fetch on a kept idle connection, without a task or a timer: the future gets the
        page (or the failure; a connection the endpoint had closed fails with ConnectionError,
        and `await fetch(url)` then retries on a fresh one). None when there is no such
        connection. The caller enforces its own deadline, by cancelling the future."""
        host, port, data = self._target_of(url)
        conn = self._connections.get((host, port))
        if conn is None or not conn.idle:
            return None
        return conn.send(data)

    async def __call__(self, url: str) -> bytes:
        host, port, data = self._target_of(url)
        async with asyncio.timeout(self._timeout):
            for attempt in (0, 1):
                conn = self._connections.get((host, port))
                if conn is not None and conn.open and not conn.idle:
                    conn.close()  # an answer abandoned half-read: the stream is unusable
                if conn is None or not conn.idle:
                    conn = await self._connect(host, port)
                reused = conn.used
                try:
                    return await conn.request(data)
                except (ConnectionError, OSError):
                    self._connections.pop((host, port), None)
                    if not reused or attempt:  # a kept connection the server had closed
                        raise
                except BaseException:
                    conn.close()  # timed out or cancelled mid-answer: the stream is unusable
                    self._connections.pop((host, port), None)
                    raise
        raise AssertionError("unreachable")

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Connection(self._max_body), host, port)
        self._connections[(host, port)] = conn
        return conn

    def _target_of(self, url: str) -> tuple[str, int, bytes]:
        """Host, port and the request bytes for a URL, built once."""
        target = self._requests.get(url)
        if target is None:
            target = self._requests[url] = self._target(url)
        return target

    def _target(self, url: str) -> tuple[str, int, bytes]:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ScrapeError(f"cannot scrape {url!r}: plain http://host:port/path only")
        port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        request = (
            (
                f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Accept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\n"
            ).encode()
            + self._accept
            + b"\r\n"
        )
        return parts.hostname, port, request

    async def close(self) -> None:
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()
