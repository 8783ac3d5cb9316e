"""The gRPC floor under the EPP: what grpc.aio costs per ext_proc stream and message.

A child process serves `ExternalProcessor/Process` with grpc.aio on uvloop and answers every
message with one small reply (nothing else: no parse, no decision); this process plays Envoy
with grpc's C core, opening one stream per request and sending the messages our Envoy
configuration sends for one request (request headers, the whole request body, response headers).
The server's CPU per stream is printed for each variant side by side: server options (HTTP/2
lookahead, frame size, optimization target), the poll strategy, and request bodies of 2 KB and
1 MiB; then the same at a low rate (10 streams/s) and under a closed loop, since a lone message
pays every wake-up of the poller thread and the event loop on its own. (Tried too, not kept:
grpclib, a pure-Python gRPC server on the event loop itself: no cheaper at 10 streams/s, 1.5x
dearer in the closed loop and 2x for 1 MiB bodies; see docs/benchmarks.md.)
Run: flock /tmp/bench.lock .venv/bin/pytest -m bench -s tests/bench/test_bench_grpc_floor.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from tests.bench.gateways import TICK, cpu_seconds
from tests.ports import free_ports

pytestmark = pytest.mark.bench

SERVER = r"""
import asyncio, json, os, sys
import grpc, uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
REPLY = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
class P(pb_grpc.ExternalProcessorServicer):
    async def Process(self, it, context):
        read, write = context.read, context.write
        while (request := await read()) is not grpc.aio.EOF:
            await write(REPLY)
async def main():
    server = grpc.aio.server(options=[tuple(o) for o in json.loads(sys.argv[2])])
    pb_grpc.add_ExternalProcessorServicer_to_server(P(), server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()
(asyncio.run if os.environ.get("FLOOR_LOOP") == "asyncio" else uvloop.run)(main())
"""
SYNC_SERVER = r"""
import json, sys
from concurrent import futures
import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
REPLY = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
class P(pb_grpc.ExternalProcessorServicer):
    def Process(self, it, context):
        for request in it:
            yield REPLY
server = grpc.server(futures.ThreadPoolExecutor(16),
                     options=[tuple(o) for o in json.loads(sys.argv[2])])
pb_grpc.add_ExternalProcessorServicer_to_server(P(), server)
server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
print("ready", flush=True)
server.wait_for_termination()
"""
LEAN_SERVER = r"""
import asyncio, json, sys
import uvloop
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from epp.grpcwire.server import LeanServer
REPLY = pb.ProcessingResponse(request_headers=pb.HeadersResponse()).SerializeToString()
async def process(call):
    read, write = call.read, call.write
    while (request := await read()) is not None:
        pb.ProcessingRequest.FromString(request)
        write(REPLY)
async def main():
    server = LeanServer({"/envoy.service.ext_proc.v3.ExternalProcessor/Process": process}, 64 << 20)
    await server.start("127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""
BIG = 64 << 20
Variant = tuple[str, str, list[tuple[str, object]], dict[str, str]]
VARIANTS: list[Variant] = [
    ("default options", SERVER, [], {}),
    ("lookahead 8 MiB", SERVER, [("grpc.http2.lookahead_bytes", 8 << 20)], {}),
    ("max frame 1 MiB", SERVER, [("grpc.http2.max_frame_size", 1 << 20)], {}),
    ("no BDP probe", SERVER, [("grpc.http2.bdp_probe", 0)], {}),
    ("optimize latency", SERVER, [("grpc.optimization_target", "latency")], {}),
    ("optimize throughput", SERVER, [("grpc.optimization_target", "throughput")], {}),
    ("max streams 100", SERVER, [("grpc.max_concurrent_streams", 100)], {}),
    ("so_reuseport off", SERVER, [("grpc.so_reuseport", 0)], {}),
    ("poll strategy poll", SERVER, [], {"GRPC_POLL_STRATEGY": "poll"}),
    ("asyncio event loop", SERVER, [], {"FLOOR_LOOP": "asyncio"}),
    ("sync grpc.server", SYNC_SERVER, [], {}),
    ("lean h2c (grpcwire)", LEAN_SERVER, [], {}),
]


def messages(body_bytes: int) -> list[pb.ProcessingRequest]:
    headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders())
    for key in (":method", ":path", "content-type", "x-request-id", "user-agent", "accept"):
        headers.request_headers.headers.headers.add(key=key, raw_value=b"value-" + key.encode())
    body = pb.HttpBody(body=b"x" * body_bytes, end_of_stream=True)
    return [headers, pb.ProcessingRequest(request_body=body), response_headers()]


def response_headers() -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_headers=pb.HttpHeaders())


def one_stream(stub: pb_grpc.ExternalProcessorStub, sequence: list[pb.ProcessingRequest]) -> None:
    """Like Envoy: send a message, wait for its reply, then the next; then close the stream."""
    outbox: list[pb.ProcessingRequest] = []
    ready = threading.Semaphore(0)

    def feed():  # type: ignore[no-untyped-def]
        for message in sequence:
            yield message
            ready.acquire()

    replies = stub.Process(feed())
    for _ in replies:
        ready.release()
        outbox.append(pb.ProcessingRequest())
    assert len(outbox) == len(sequence)


def run(stub: pb_grpc.ExternalProcessorStub, body: int, rate: float | None, seconds: float) -> int:
    """Streams at `rate` per second (None: as fast as 8 threads go) for `seconds`."""
    sequence = messages(body)
    done = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(period: float | None) -> None:
        nonlocal done
        next_at = time.monotonic()
        while time.monotonic() < deadline:
            one_stream(stub, sequence)
            with lock:
                done += 1
            if period is not None:
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=worker, args=(None if rate is None else 1 / rate,))
               for _ in range(1 if rate is not None else 8)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of each of the process's threads, added up by thread name."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def measure(variant: Variant) -> tuple[dict[str, float], dict[str, float]]:
    """µs of server CPU per stream for each load; and, in the closed loop, by server thread."""
    _, script, options, env = variant
    (port,) = free_ports(1)
    options = [("grpc.max_receive_message_length", BIG), *options]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(port), json.dumps(options)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **env},
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", BIG)]
        )
        stub = pb_grpc.ExternalProcessorStub(channel)
        out: dict[str, float] = {}
        threads: dict[str, float] = {}
        for label, body, rate, seconds in (
            ("2 KB, 10/s", 2048, 10.0, 4.0),
            ("2 KB, closed loop", 2048, None, 3.0),
            ("1 MiB, 5/s", 1 << 20, 5.0, 4.0),
        ):
            run(stub, body, rate, 0.5)  # warm up
            cpu0, by_thread0 = cpu_seconds(proc.pid), thread_cpu(proc.pid)
            n = run(stub, body, rate, seconds)
            out[label] = (cpu_seconds(proc.pid) - cpu0) / n * 1e6
            if rate is None:
                by_thread = thread_cpu(proc.pid)
                threads = {t: (c - by_thread0.get(t, 0.0)) / n * 1e6 for t, c in by_thread.items()}
        channel.close()
        return out, threads
    finally:
        proc.terminate()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_grpc_cost_per_stream_side_by_side(tmp_path: Path) -> None:
    rows = [(variant[0], *measure(variant)) for variant in VARIANTS]
    labels = list(rows[0][1])
    print("\nserver CPU per ext_proc stream (3 messages in, 3 replies out), µs:")
    print(f"  {'variant':22s}" + "".join(f"{label:>20s}" for label in labels))
    for name, row, _ in rows:
        print(f"  {name:22s}" + "".join(f"{row[label]:20.0f}" for label in labels))
    print("where it goes in the closed loop: µs per stream by server thread (name: µs)")
    for name, _, threads in rows:
        busy = sorted(threads.items(), key=lambda kv: -kv[1])
        print(f"  {name:22s} " + ", ".join(f"{t}: {us:.0f}" for t, us in busy if us >= 10))
