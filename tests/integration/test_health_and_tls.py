"""gRPC health transitions of the EPP, and ext_proc over TLS through a real Envoy."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import pytest
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
