"""Two EPP replicas in Kubernetes mode find each other in their Service's EndpointSlices (read
from the API emulator over HTTP) and share in-flight counts over UDP."""

from __future__ import annotations

import asyncio

import pytest

from epp.kube.client import ClientConfig
from epp.kube.runtime import KubeModeConfig
from epp.kube.source import SourceConfig
from epp.kube.watch import WatchSettings
from epp.peers.sharing import PeerSettings
from epp.server import EppServer, ServeConfig
from epp.settings import ServerSettings, Settings
from tests.kube.apiserver import ApiServer
from tests.kube.objects import pod, seed_model, seed_pool
from tests.ports import free_ports

pytestmark = pytest.mark.integration


def slice_of(pod_name: str, ip: str, port: int) -> dict[str, object]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"epp-{pod_name}",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "epp"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "peers", "port": port, "protocol": "UDP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True}, "targetRef": {"name": pod_name}}
        ],
    }


def replica(server: ApiServer, name: str, port: int) -> EppServer:
    kube = KubeModeConfig(
        client=ClientConfig(host=server.url, request_timeout=5),
        source=SourceConfig(watch=WatchSettings(backoff_initial=0.05, backoff_max=0.2)),
        leader_elect=False,
        write_status=False,
        reconcile_deployments=False,
    )
    peers = PeerSettings(name=name, port=port, service="epp", discovery_interval=0.1)
    settings = Settings(server=ServerSettings("127.0.0.1", 0, 0, 0, drain_seconds=0))
    return EppServer(ServeConfig(settings, kube=kube, peers=peers))


async def test_replicas_find_each_other_in_endpoint_slices_and_share(server: ApiServer) -> None:
    server.put(seed_pool())
    server.put(seed_model("llama2-7b-chat"))
    server.put(pod("vllm-0", "10.0.0.1"))
    port_a, port_b = free_ports(2)
    server.put(slice_of("epp-a", "127.0.0.1", port_a))
    server.put(slice_of("epp-b", "127.0.0.1", port_b))
    a, b = replica(server, "epp-a", port_a), replica(server, "epp-b", port_b)
    await a.start()
    await b.start()
    try:
        assert a.peers is not None and b.peers is not None
        for _ in range(100):
            if a.peers.targets == [("127.0.0.1", port_b)] and b.peers.targets:
                break
            await asyncio.sleep(0.05)
        assert a.peers.targets == [("127.0.0.1", port_b)]  # itself left out by its pod name
        assert b.peers.targets == [("127.0.0.1", port_a)]
        for _ in range(100):
            if a.store.endpoints() and b.store.endpoints():
                break
            await asyncio.sleep(0.05)
        lease = a.store.lease("10.0.0.1:8000", 50)
        for _ in range(100):
            if b.store.candidates(b.store.pools()[0].key)[0].in_flight == 1:
                break
            await asyncio.sleep(0.02)
        assert b.store.candidates(b.store.pools()[0].key)[0].in_flight == 1
        lease.release()
    finally:
        await a.stop()
        await b.stop()
