"""The lean gRPC server (`epp.grpcwire`) against grpc's own C-core client over real sockets:
bidi streams, big messages both ways (flow control), statuses, cancels, limits, health, draining,
and the raw HTTP/2 frames it answers (SETTINGS, PING, a bad preface)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.grpcwire import frames as f
from epp.grpcwire.call import NOT_FOUND, Call, GrpcError
from epp.grpcwire.server import LeanServer
from epp.health import CHECK_METHOD, Health

pytestmark = pytest.mark.integration

ECHO, FAIL, CRASH, SLOW = "/t.T/Echo", "/t.T/Fail", "/t.T/Crash", "/t.T/Slow"
LIMIT = 8 << 20


class Handlers:
    def __init__(self) -> None:
        self.ended: Counter[str] = Counter()
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def echo(self, call: Call) -> None:
        try:
            while (message := await call.read()) is not None:
                call.write(message)
        finally:
            self.ended["echo"] += 1

    async def fail(self, call: Call) -> None:
        await call.read()
        raise GrpcError(NOT_FOUND, "no such thing: é 100%")

    async def crash(self, call: Call) -> None:
        raise RuntimeError("boom")

    async def slow(self, call: Call) -> None:
        try:
            self.started.set()
            await self.release.wait()
            call.write(b"done")
        finally:
            self.ended["slow"] += 1


@contextlib.asynccontextmanager
async def serving(
    handlers: Handlers,
) -> AsyncIterator[tuple[LeanServer, grpc.aio.Channel, str]]:
    routes = {ECHO: handlers.echo, FAIL: handlers.fail, CRASH: handlers.crash, SLOW: handlers.slow}
    server = LeanServer(routes, max_message=LIMIT)
    port = await server.start("127.0.0.1", 0)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    try:
        yield server, channel, f"127.0.0.1:{port}"
    finally:
        await channel.close()
        await server.stop(0)


async def echo_all(channel: grpc.aio.Channel, messages: list[bytes]) -> list[bytes]:
    call = channel.stream_stream(ECHO)(iter(messages))
    return [bytes(reply) async for reply in call]


async def test_bidi_streams_small_and_big_messages_and_many_at_once() -> None:
    handlers = Handlers()
    async with serving(handlers) as (_, channel, _target):
        assert await echo_all(channel, [b"a", b"", b"b" * 100]) == [b"a", b"", b"b" * 100]
        big = bytes(range(256)) * (6 << 12)  # 6 MiB: beyond every initial window, both ways
        assert await echo_all(channel, [big, b"after"]) == [big, b"after"]
        many = await asyncio.gather(*(echo_all(channel, [b"%d" % i] * 3) for i in range(50)))
        assert many == [[b"%d" % i] * 3 for i in range(50)]
    assert handlers.ended["echo"] == 52


async def test_statuses_unknown_method_errors_and_crashes() -> None:
    async with serving(Handlers()) as (_, channel, _target):
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await channel.unary_unary("/t.T/Nope")(b"x")
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "/t.T/Nope" in (unknown.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await channel.unary_unary(FAIL)(b"x")
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert failed.value.details() == "no such thing: é 100%"
        with pytest.raises(grpc.aio.AioRpcError) as crashed:
            await channel.unary_unary(CRASH)(b"x")
        assert crashed.value.code() == grpc.StatusCode.INTERNAL
        assert await channel.unary_unary(ECHO)(b"still fine") == b"still fine"


async def test_a_cancelled_call_ends_its_handler_once() -> None:
    handlers = Handlers()
    async with serving(handlers) as (_, channel, _target):
        call = channel.unary_unary(SLOW)(b"x")
        await asyncio.wait_for(handlers.started.wait(), 5)
        call.cancel()
        for _ in range(100):
            if handlers.ended["slow"]:
                break
            await asyncio.sleep(0.02)
        assert handlers.ended["slow"] == 1
        assert await channel.unary_unary(ECHO)(b"next") == b"next"
    assert handlers.ended["slow"] == 1


async def test_a_message_over_the_limit_is_refused_and_the_handler_ends() -> None:
    handlers = Handlers()
    async with serving(handlers) as (_, channel, target):
        options = [("grpc.max_send_message_length", 64 << 20)]
        async with grpc.aio.insecure_channel(target, options=options) as big:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo_all(big, [b"x" * (LIMIT + 1)])
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await channel.unary_unary(ECHO)(b"ok") == b"ok"
    assert handlers.ended["echo"] == 2


async def test_stop_lets_calls_in_flight_finish_within_the_grace_and_refuses_new_ones() -> None:
    handlers = Handlers()
    async with serving(handlers) as (server, channel, _target):
        call = channel.unary_unary(SLOW)(b"x")
        await asyncio.wait_for(handlers.started.wait(), 5)
        stopping = asyncio.create_task(server.stop(5))
        await asyncio.sleep(0.2)
        assert not stopping.done()
        handlers.release.set()
        assert await call == b"done"
        await asyncio.wait_for(stopping, 5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.unary_unary(ECHO)(b"x", timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_cancels_what_outlives_the_grace() -> None:
    handlers = Handlers()
    async with serving(handlers) as (server, channel, _target):
        call = channel.unary_unary(SLOW)(b"x")
        await asyncio.wait_for(handlers.started.wait(), 5)
        await server.stop(0.2)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        assert handlers.ended["slow"] == 1


async def test_health_check_on_the_lean_server() -> None:
    health = Health()
    await health.start()
    server = LeanServer({CHECK_METHOD: health.check}, max_message=1 << 16)
    port = await server.start("127.0.0.1", 0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def check(service: str) -> int:
                request = health_pb2.HealthCheckRequest(service=service)
                return int((await stub.Check(request, timeout=2)).status)

            assert await check("liveness") == health_pb2.HealthCheckResponse.SERVING
            assert await check("") == health_pb2.HealthCheckResponse.NOT_SERVING
            await health.set_ready(True)
            assert await check("") == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await check("nope")
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[tuple[int, int, bytes]]:
    out = []
    for _ in range(count):
        high, low, kind, flags, _stream = f.HEAD.unpack(await reader.readexactly(9))
        out.append((kind, flags, await reader.readexactly((high << 16) | low)))
    return out


async def test_raw_frames_settings_ping_and_a_bad_preface() -> None:
    server = LeanServer({}, max_message=1 << 16)
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for byte in f.PREFACE + f.settings({}) + f.frame(f.PING, 0, 0, b"12345678"):
            writer.write(bytes([byte]))  # one byte at a time: frames gathered across reads
            await writer.drain()
            await asyncio.sleep(0)
        frames = await asyncio.wait_for(read_frames(reader, 4), 5)
        assert [(k, fl) for k, fl, _ in frames] == [
            (f.SETTINGS, 0), (f.WINDOW_UPDATE, 0), (f.SETTINGS, f.ACK), (f.PING, f.ACK)
        ]  # fmt: skip
        assert frames[3][2] == b"12345678"
        # a stream with no method gets a trailers-only answer; a block on a stream that is over
        # is dropped; an even stream id ends the connection
        writer.write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, b"\x83\x86"))
        (answer,) = await asyncio.wait_for(read_frames(reader, 1), 5)
        assert answer[:2] == (f.HEADERS, f.END_HEADERS | f.END_STREAM)
        assert b"grpc-status" in answer[2] and b"12" in answer[2]
        writer.write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, b"\x83\x86"))
        writer.write(f.frame(f.PING, 0, 0, b"87654321"))
        (ping,) = await asyncio.wait_for(read_frames(reader, 1), 5)
        assert ping == (f.PING, f.ACK, b"87654321")
        writer.write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 2, b"\x83\x86"))
        (goaway,) = await asyncio.wait_for(read_frames(reader, 1), 5)
        assert goaway[0] == f.GOAWAY and struct.unpack(">L", goaway[2][4:8])[0] == f.PROTOCOL_ERROR
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        frames = await asyncio.wait_for(read_frames(reader, 3), 5)
        assert frames[2][0] == f.GOAWAY
        assert struct.unpack(">L", frames[2][2][4:8])[0] == f.PROTOCOL_ERROR
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and closed
        writer.close()
    finally:
        await server.stop(0)
