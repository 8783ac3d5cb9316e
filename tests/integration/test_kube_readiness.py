"""gRPC readiness in Kubernetes mode: NOT_SERVING until the first full sync, kept in outages."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.datastore import Datastore
from epp.health import Health
from epp.kube.client import KubeApi
from epp.kube.serving import feed
from epp.kube.source import KubeSource, SourceConfig
from epp.kube.watch import WatchSettings
from tests.kube.apiserver import ApiServer
from tests.kube.objects import pod, seed_model, seed_pool, until

pytestmark = pytest.mark.integration

FAST = WatchSettings(watch_timeout=30, resync=60, backoff_initial=0.05, backoff_max=0.2)


async def readiness(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="readiness"), timeout=2)
        return int(reply.status)


async def test_not_serving_until_first_full_sync_and_serving_through_outage(
    server: ApiServer, api: KubeApi
) -> None:
    server.put(seed_pool())
    server.put(seed_model("llama2-7b-chat"))
    server.put(pod("vllm-0", "10.0.0.1"))
    server.hold_lists.clear()  # the API server is slow to answer lists
    health = Health()
    await health.start()
    grpc_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    store = Datastore()
    source = KubeSource(api, SourceConfig(watch=FAST))
    feeding = asyncio.create_task(feed(source, store.apply_resources, health.set_ready))
    try:
        await asyncio.sleep(0.3)
        assert await readiness(port) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert store.endpoints() == []
        server.hold_lists.set()
        await until(lambda: health.ready, what="ready after the first sync")
        assert await readiness(port) == health_pb2.HealthCheckResponse.SERVING
        assert [e.address for e in store.endpoints()] == ["10.0.0.1:8000"]
        # outage: every request fails and every watch drops; readiness and endpoints hold
        server.outage = True
        server.drop_watches()
        await until(lambda: source.stale, what="the outage noticed")
        await asyncio.sleep(0.3)
        assert await readiness(port) == health_pb2.HealthCheckResponse.SERVING
        assert [e.address for e in store.endpoints()] == ["10.0.0.1:8000"]
        server.outage = False
        await until(lambda: not source.stale, what="recovery")
        server.put(pod("vllm-1", "10.0.0.2"))
        await until(lambda: len(store.endpoints()) == 2, what="changes flow again")
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        await source.aclose()
        await grpc_server.stop(0)
