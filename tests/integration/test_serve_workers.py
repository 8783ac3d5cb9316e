"""`epp serve --workers 2`: two processes behind one ext_proc port, each a replica with its own
metrics and peer port, sharing with each other; connections spread over both; a worker that
dies is started again; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2 as mode_pb
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.local.processes import ChildProcess, wait_until
from tests.ports import free_ports

pytestmark = pytest.mark.integration

POD = "127.0.94.2"


async def ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as http:
        return (await http.get(url)).status_code == 200


async def json_of(url: str) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=2.0) as http:
        answer: dict[str, object] = (await http.get(url)).json()
        return answer


async def messages_seen(url: str) -> float:
    async with httpx.AsyncClient(timeout=2.0) as http:
        text = (await http.get(url)).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("epp_ext_proc_messages_total{")
    )


async def one_stream(port: int, k: int) -> pb.ProcessingResponse:
    """A non-streamed chat request's first two messages, on a connection of its own."""
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.channel_id", k)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders())
        for key, value in ((":method", "POST"), (":path", "/v1/chat/completions"),
                           ("content-type", "application/json")):  # fmt: skip
            headers.request_headers.headers.headers.add(key=key, raw_value=value.encode())
        headers.protocol_config.request_body_mode = mode_pb.ProcessingMode.BUFFERED
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        stream = pb_grpc.ExternalProcessorStub(channel).Process()
        await stream.write(headers)
        await stream.read()
        await stream.write(
            pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))
        )
        reply: pb.ProcessingResponse = await stream.read()
        await stream.done_writing()
        return reply


async def test_two_workers_share_one_port(tmp_path: Path) -> None:
    grpc_port, health, metrics, peer, pod_port = free_ports(5)
    pod = f"{POD}:{pod_port}"
    sim = ChildProcess(
        "sim",
        [sys.executable, "-m", "epp", "sim", "--pods", pod, "--model", "m"],
        tmp_path / "sim.log",
    )
    await sim.start()
    await wait_until(lambda: ok(f"http://{pod}/metrics"), "the simulated pod", 60, sim)
    argv = [sys.executable, "-m", "epp", "serve", "--endpoints", f"{POD}:{pod_port}",
            "--grpc-port", str(grpc_port), "--health-port", str(health),
            "--metrics-port", str(metrics), "--peer-port", str(peer),
            "--workers", "2", "--replica-name", "box"]  # fmt: skip
    epp = ChildProcess("epp-workers", argv, tmp_path / "epp.log")
    await epp.start()
    try:
        urls = [f"http://127.0.0.1:{metrics + k}" for k in range(2)]
        for url in urls:
            await wait_until(lambda u=url: ok(f"{u}/healthz"), "both workers", 60, epp)  # type: ignore[misc]
        for url, other in zip(urls, ("box-w1", "box-w0"), strict=True):
            await wait_until(
                lambda u=url, o=other: _heard(u, o),
                "the workers to hear each other",
                10,
                epp,  # type: ignore[misc]
            )
        replies = await asyncio.gather(*(one_stream(grpc_port, k) for k in range(16)))
        assert all(r.HasField("request_body") for r in replies), replies[0]
        seen = [await messages_seen(f"{u}/metrics") for u in urls]
        assert all(s > 0 for s in seen), seen  # the kernel gave both workers connections
        # a worker that dies is started again, on the same ports
        assert epp.proc is not None
        children = Path(f"/proc/{epp.proc.pid}/task/{epp.proc.pid}/children").read_text().split()
        assert len(children) == 2
        os.kill(int(children[1]), signal.SIGKILL)
        await asyncio.sleep(0.5)
        await wait_until(lambda: ok(f"{urls[1]}/healthz"), "the worker to come back", 60, epp)
        # SIGTERM to the supervisor stops every worker
        started = time.monotonic()
        await epp.stop(grace=30)
        assert time.monotonic() - started < 30
        assert epp.proc.returncode == 0
        for child in children[:1]:
            assert not Path(f"/proc/{child}").exists()
    finally:
        await epp.stop()
        await sim.stop()


async def _heard(url: str, other: str) -> bool:
    peers = await json_of(f"{url}/debug/peers")
    heard = peers.get("peers")
    return isinstance(heard, dict) and other in heard
