"""`epp serve --workers 2` vs one worker: non-streamed decisions per second behind one port.

The EPP serves a static pool of simulated pods (`epp sim`, idle) and is driven over ext_proc
directly, as Envoy drives it: one gRPC stream per request with the messages our Envoy sends
for a non-streamed chat completion (request headers with the BUFFERED protocol config, the
whole body, response headers), each answered before the next. Load comes from client
processes, each with its own HTTP/2 connections (SO_REUSEPORT spreads connections, not
streams, over the workers). Printed side by side: decisions/s, CPU per decision of each worker,
and the ratio. The acceptance goal (>= 1.7x with 2 workers on 2 cores) assumes the load is
generated elsewhere: on a 2-core machine the clients take a core's worth themselves, so the
ratio printed here is a floor; the per-worker CPU shows the workers scale.
Run: flock /tmp/bench.lock .venv/bin/pytest -m bench -s tests/bench/test_bench_workers.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.local.processes import ChildProcess, wait_until
from tests.bench.gateways import cpu_seconds, run_h2load
from tests.ports import free_ports

pytestmark = pytest.mark.bench

PODS = [f"127.0.93.{i}:8000" for i in range(2, 6)]
CLIENTS = 2  # processes
CONNECTIONS = 4  # per client process
STREAMS_PER_CONNECTION = 8  # at once, each a closed loop
SECONDS = 6.0


def stream_messages(i: int) -> list[pb.ProcessingRequest]:
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": f"question {i} " * 40}],
            "max_tokens": 16,
        }
    ).encode()
    headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders())
    for key, value in ((":method", "POST"), (":path", "/v1/chat/completions"),
                       ("content-type", "application/json"), (":authority", "gw"),
                       ("content-length", str(len(body))), ("x-request-id", f"r{i}")):  # fmt: skip
        headers.request_headers.headers.headers.add(key=key, raw_value=value.encode())
    headers.protocol_config.request_body_mode = mode_pb.ProcessingMode.BUFFERED
    headers.protocol_config.response_body_mode = mode_pb.ProcessingMode.STREAMED
    done = pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))
    answer = pb.ProcessingRequest(response_headers=pb.HttpHeaders())
    answer.response_headers.headers.headers.add(key=":status", raw_value=b"200")
    answer.response_headers.headers.headers.add(key="content-type", raw_value=b"application/json")
    return [headers, done, answer]


async def one_stream(
    stub: pb_grpc.ExternalProcessorStub, sequence: list[pb.ProcessingRequest]
) -> bool:
    """Like Envoy: a message, its reply, the next; then the stream closes."""
    call = stub.Process()
    for message in sequence:
        await call.write(message)
        reply = await call.read()
        if reply is grpc.aio.EOF or reply.HasField("immediate_response"):
            call.cancel()
            return False
    await call.done_writing()
    return True


async def streams(port: int, seconds: float) -> tuple[int, int]:
    deadline = time.monotonic() + seconds
    counts = [0, 0]  # ok, failed

    async def loop(stub: pb_grpc.ExternalProcessorStub, k: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            ok = await one_stream(stub, stream_messages(k * 1_000_000 + i))
            i += 1
            counts[0 if ok else 1] += 1

    channels = [
        # a channel of its own (no shared subchannel pool): its own connection
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1), ("k", k)]
        )
        for k in range(CONNECTIONS)
    ]
    stubs = [pb_grpc.ExternalProcessorStub(c) for c in channels]
    await asyncio.gather(
        *(loop(stubs[k % CONNECTIONS], k) for k in range(CONNECTIONS * STREAMS_PER_CONNECTION))
    )
    for channel in channels:
        await channel.close()
    return counts[0], counts[1]


def client(port: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(asyncio.run(streams(port, seconds)))


def drive(port: int, seconds: float) -> tuple[int, int]:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=client, args=(port, seconds, out)) for _ in range(CLIENTS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    return sum(r[0] for r in results), sum(r[1] for r in results)


def worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(c) for c in children]


@contextlib.asynccontextmanager
async def serving(
    tmp: Path, workers: int, extra: Sequence[str] = ()
) -> AsyncIterator[tuple[int, list[int], list[int]]]:
    """`epp serve --workers N` on the pods: its gRPC port, the workers' pids and metrics ports."""
    grpc_port, health, metrics, peer = free_ports(4)
    argv = [sys.executable, "-m", "epp", "serve", "--endpoints", ",".join(PODS),
            "--grpc-port", str(grpc_port), "--health-port", str(health),
            "--metrics-port", str(metrics), "--peer-port", str(peer),
            "--workers", str(workers), *extra]  # fmt: skip
    epp = ChildProcess(f"epp-{workers}", argv, tmp / f"epp-{workers}-{'-'.join(extra)}.log")
    await epp.start()
    try:
        for k in range(workers):
            url = f"http://127.0.0.1:{metrics + k}/healthz"
            await wait_until(lambda u=url: _ok(u), "the EPP workers", 60, epp)  # type: ignore[misc]
        assert epp.proc is not None
        pids = worker_pids(epp.proc.pid) if workers > 1 else [epp.proc.pid]
        yield grpc_port, pids, [metrics + k for k in range(workers)]
    finally:
        await epp.stop()


async def measure(tmp: Path, workers: int) -> tuple[float, list[float], int]:
    async with serving(tmp, workers) as (grpc_port, pids, _):
        drive(grpc_port, 1.0)  # warm up
        cpu0 = [cpu_seconds(p) for p in pids]
        t0 = time.perf_counter()
        ok, failed = drive(grpc_port, SECONDS)
        elapsed = time.perf_counter() - t0
        cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        assert failed == 0, f"{failed} streams failed"
        return ok / elapsed, [c / ok * 1e6 for c in cpu], ok


async def _ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as http:
        return (await http.get(url)).status_code == 200


async def test_bench_workers(tmp_path: Path) -> None:
    sim = ChildProcess(
        "sim",
        [sys.executable, "-m", "epp", "sim", "--pods", ",".join(PODS), "--model", "m"],
        tmp_path / "sim.log",
    )
    await sim.start()
    try:
        await wait_until(lambda: _ok(f"http://{PODS[-1]}/metrics"), "the simulator", 60, sim)
        results = {n: await measure(tmp_path, n) for n in (1, 2)}
    finally:
        await sim.stop()
    print(f"\nnon-streamed decisions, {CLIENTS} client processes x {CONNECTIONS} connections x "
          f"{STREAMS_PER_CONNECTION} streams, {SECONDS:.0f} s")  # fmt: skip
    for n, (rate, cpu, _) in results.items():
        per_worker = ", ".join(f"{c:.0f}" for c in cpu)
        print(f"  --workers {n}: {rate:7.0f} decisions/s   CPU µs per decision by worker: "
              f"{per_worker}")  # fmt: skip
    ratio = results[2][0] / results[1][0]
    print(f"  2 workers / 1 worker: {ratio:.2f}x")
    # both workers decided: the kernel spread the connections over them
    assert min(results[2][1]) > 0.2 * max(results[2][1])


# ---- the same with a load source that costs little CPU: h2load (nghttp2-client, C) --------------
H2LOAD_CONNECTIONS = 16  # the kernel spreads connections over the workers
H2LOAD_STREAMS = 4  # at once per connection
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


def grpc_body() -> bytes:
    """One stream's messages, gRPC-framed, as h2load sends them as one request body. Envoy waits
    for each reply before the next message; the EPP reads them in order either way, so it does
    the same work (no x-request-id: the EPP makes one per request)."""
    messages = stream_messages(0)
    headers = messages[0].request_headers.headers.headers
    kept = [h for h in headers if h.key != "x-request-id"]
    del headers[:]
    headers.extend(kept)
    wire = [m.SerializeToString() for m in messages]
    return b"".join(b"\x00" + len(w).to_bytes(4, "big") + w for w in wire)


def h2load(port: int, body: Path, seconds: float) -> tuple[int, float]:
    """h2load for `seconds`: streams that succeeded, and the CPU seconds h2load used."""
    argv = ["-D", str(round(seconds)), "-c", str(H2LOAD_CONNECTIONS),
            "-m", str(H2LOAD_STREAMS), "-d", str(body), "-H", "content-type: application/grpc",
            "-H", "te: trailers", f"http://127.0.0.1:{port}{PROCESS}"]  # fmt: skip
    (ok, failed, errored), cpu = run_h2load(argv, r"(\d+) succeeded, (\d+) failed, (\d+) errored")
    assert failed == errored == 0, (failed, errored)
    return ok, cpu


async def decisions(metrics_ports: list[int]) -> float:
    """Requests the workers decided so far (their request counters, added up)."""
    total = 0.0
    async with httpx.AsyncClient(timeout=5.0) as http:
        for port in metrics_ports:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            total += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                         if line.startswith("inference_objective_request_total{"))  # fmt: skip
    return total


@pytest.mark.parametrize("grpc_server", ["grpcio", "lean"])
async def test_bench_workers_h2load(tmp_path: Path, grpc_server: str) -> None:
    body = tmp_path / "stream.bin"
    body.write_bytes(grpc_body())
    sim = ChildProcess(
        "sim",
        [sys.executable, "-m", "epp", "sim", "--pods", ",".join(PODS), "--model", "m"],
        tmp_path / "sim.log",
    )
    await sim.start()
    rows: dict[int, tuple[float, list[float], float]] = {}
    try:
        await wait_until(lambda: _ok(f"http://{PODS[-1]}/metrics"), "the simulator", 60, sim)
        for workers in (1, 2):
            extra = ["--grpc-server", grpc_server]
            async with serving(tmp_path, workers, extra) as (port, pids, metrics):
                await asyncio.to_thread(h2load, port, body, 1.0)  # warm up
                decided0, cpu0 = await decisions(metrics), [cpu_seconds(p) for p in pids]
                t0 = time.perf_counter()
                ok, load_cpu = await asyncio.to_thread(h2load, port, body, SECONDS)
                elapsed = time.perf_counter() - t0
                cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
                decided = await decisions(metrics) - decided0
                # h2load counts the streams that ended in time; the last ones in flight were
                # decided too
                in_flight = H2LOAD_CONNECTIONS * H2LOAD_STREAMS
                assert ok <= decided <= ok + in_flight, f"h2load: {ok} streams, EPP: {decided}"
                rows[workers] = (ok / elapsed, [c / elapsed for c in cpu], load_cpu / elapsed)
    finally:
        await sim.stop()
    load = f"{H2LOAD_CONNECTIONS} connections x {H2LOAD_STREAMS} streams, {SECONDS:.0f} s"
    print(f"\n--grpc-server {grpc_server}: non-streamed decisions driven by h2load ({load})")
    for workers, (rate, shares, h2) in rows.items():
        per_worker = " + ".join(f"{s:.0%}" for s in shares)
        cost = sum(shares) / rate * 1e6
        print(f"  --workers {workers}: {rate:7.0f} decisions/s  workers' CPU {per_worker} of a "
              f"core, h2load {h2:.0%}; {cost:.0f} µs per decision")  # fmt: skip
    print(f"  2 workers / 1 worker: {rows[2][0] / rows[1][0]:.2f}x")
