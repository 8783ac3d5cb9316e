"""gRPC health transitions of the EPP, ext_proc over TLS through a real Envoy, and a buffered
body larger than gRPC's default message limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.local.stack import SEED_EXAMPLE, LocalStack
from epp.server import EppServer, ServeConfig
from epp.settings import ServerSettings, Settings
from tests.e2e.conftest import stack_config

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor")


async def status(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(reply.status)


async def test_not_serving_until_a_pool_is_known_then_serving_then_draining(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    settings = Settings(server=ServerSettings("127.0.0.1", 0, 0, 0, drain_seconds=0.5))
    server = EppServer(ServeConfig(settings, (str(folder),), reload_interval=0.05))
    await server.start()
    try:
        assert await status(server.health_port, "liveness") == SERVING
        for service in SERVICES:
            assert await status(server.health_port, service) == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await status(server.health_port, "no-such-service")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        (folder / "seed.yaml").write_text((SEED_EXAMPLE / "inference.yaml").read_text())
        for _ in range(100):
            if await status(server.health_port, "readiness") == SERVING:
                break
            await asyncio.sleep(0.05)
        for service in SERVICES:
            assert await status(server.health_port, service) == SERVING
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        for service in (*SERVICES, "liveness"):
            assert await status(server.health_port, service) == NOT_SERVING
        await stopping
    finally:
        if not server.health.ready:
            await server.stop()


async def test_ext_proc_over_tls_through_envoy(tmp_path: Path) -> None:
    config = stack_config(tmp_path, epp_tls=True, first_pod_ip=110)
    async with LocalStack(config) as stack:
        async with httpx.AsyncClient(base_url=stack.url, timeout=20) as client:
            body = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}]}
            r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        assert r.headers["x-inference-endpoint"] == r.headers["x-inference-pod-address"]
        # the port really speaks TLS: a plaintext gRPC client cannot use it
        with pytest.raises(grpc.aio.AioRpcError):
            async with grpc.aio.insecure_channel(f"127.0.0.1:{config.epp_port}") as channel:
                await channel.unary_unary("/envoy.service.ext_proc.v3.ExternalProcessor/Process")(
                    b"", timeout=1
                )


async def test_a_buffered_body_over_grpcs_default_4_mib_limit_is_taken() -> None:
    settings = Settings(server=ServerSettings("127.0.0.1", 0, 0, 0))
    server = EppServer(ServeConfig(settings, endpoints=("127.0.0.9:8000",)))
    await server.start()
    buffered = processing_mode_pb2.ProcessingMode.BUFFERED
    headers = pb.ProcessingRequest(request_headers=pb.HttpHeaders())
    headers.protocol_config.request_body_mode = buffered  # type: ignore[assignment]
    prompt = "x" * (6 << 20)  # a body Envoy buffers whole and sends in one message
    body = orjson.dumps({"model": "meta-llama/Llama-2-7b-chat-hf", "prompt": prompt})
    request = pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True))
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{server.grpc_port}", options=[("grpc.max_send_message_length", 8 << 20)]
        ) as channel:
            call = pb_grpc.ExternalProcessorStub(channel).Process()
            await call.write(headers)
            assert (await call.read()).HasField("request_headers")
            await call.write(request)
            reply = await call.read()
            await call.done_writing()
        assert reply.HasField("request_body"), reply  # decided (not refused for its size)
        assert not reply.request_body.response.HasField("body_mutation")  # and not echoed
    finally:
        await server.stop()
