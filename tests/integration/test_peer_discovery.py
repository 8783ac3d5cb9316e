"""Replicas find each other in their Service's EndpointSlices, read over HTTP from the API
emulator; a replica leaving (or turning unready) leaves the list, an outage keeps the last one."""

from __future__ import annotations

import asyncio

import pytest

from epp.kube.client import ClientConfig, connect
from epp.peers.kube import EndpointSliceDiscovery
from tests.kube.apiserver import ApiServer

pytestmark = pytest.mark.integration


def endpoint_slice(name: str, service: str, pods: dict[str, tuple[str, bool]]) -> dict[str, object]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "gw",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "peers", "port": 9004, "protocol": "UDP"}],
        "endpoints": [
            {
                "addresses": [ip],
                "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": "gw"},
            }
            for pod, (ip, ready) in pods.items()
        ],
    }


async def test_replicas_are_read_from_the_services_endpoint_slices() -> None:
    server = ApiServer()
    await server.start()
    api = await connect(ClientConfig(host=server.url))
    try:
        server.put(endpoint_slice("epp-x1", "epp", {"epp-a": ("10.1.0.1", True)}))
        server.put(endpoint_slice("epp-x2", "epp", {"epp-b": ("10.1.0.2", True)}))
        server.put(endpoint_slice("other-x", "other", {"o": ("10.9.0.1", True)}))
        discovery = EndpointSliceDiscovery(api, "gw", "epp", "epp-a", 9004, interval=0.05)
        assert await discovery.read() == ["10.1.0.2:9004"]
        found: list[list[str]] = []
        task = asyncio.create_task(discovery.run(found.append))
        await asyncio.sleep(0.1)
        server.put(
            endpoint_slice(
                "epp-x2", "epp", {"epp-b": ("10.1.0.2", False), "epp-c": ("10.1.0.3", True)}
            )
        )
        for _ in range(100):
            if found and found[-1] == ["10.1.0.3:9004"]:
                break
            await asyncio.sleep(0.02)
        assert found[-1] == ["10.1.0.3:9004"]
        server.outage = True  # reads fail: the loop goes on, nothing new is reported
        seen = len(found)
        await asyncio.sleep(0.2)
        assert len(found) == seen and not task.done()
        task.cancel()
    finally:
        await api.close()
        await server.stop()
