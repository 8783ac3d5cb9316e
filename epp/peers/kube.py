"""Peers from Kubernetes: the ready endpoints of the EPP's own Service, read from its
EndpointSlices (`discovery.k8s.io/v1`, label `kubernetes.io/service-name`), every few seconds.
Each endpoint is a replica; this one is left out by its pod name. A read that fails keeps the
last list (the replicas keep sharing with the peers they knew). Neighbours: `epp.peers.sharing`
sends to what this finds; `epp.kube.client` speaks to the API server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from epp.kube.client import KubeApi, KubeError

log = logging.getLogger("epp.peers")
SERVICE_LABEL = "kubernetes.io/service-name"


def peers_of(
    slices: Sequence[dict[str, Any]], own_pod: str, port_name: str, default_port: int
) -> list[str]:
    """host:port of every ready endpoint in the slices but this pod."""
    found: set[str] = set()
    for item in slices:
        port = default_port
        for p in item.get("ports") or ():
            if (
                isinstance(p, dict)
                and p.get("name") == port_name
                and isinstance(p.get("port"), int)
            ):
                port = p["port"]
        for ep in item.get("endpoints") or ():
            if not isinstance(ep, dict):
                continue
            conditions = ep.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            ref = ep.get("targetRef") or {}
            if own_pod and ref.get("name") == own_pod:
                continue
            addresses = ep.get("addresses") or []
            if addresses and isinstance(addresses[0], str):
                address = addresses[0]
                found.add(f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    return sorted(found)


class EndpointSliceDiscovery:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        service: str,
        own_pod: str,
        port: int,
        interval: float,
        port_name: str = "peers",
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.service = service
        self.own_pod = own_pod
        self.port = port
        self.interval = interval
        self.port_name = port_name

    @property
    def path(self) -> str:
        return f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"

    async def read(self) -> list[str]:
        doc = await self.api.get(self.path, {"labelSelector": f"{SERVICE_LABEL}={self.service}"})
        items = doc.get("items")
        return peers_of(
            items if isinstance(items, list) else [], self.own_pod, self.port_name, self.port
        )

    async def run(self, found: Callable[[list[str]], None]) -> None:
        while True:
            try:
                found(await self.read())
            except (TimeoutError, KubeError, OSError, aiohttp.ClientError) as exc:
                log.warning("reading the EPP Service's EndpointSlices failed: %s", exc)
            await asyncio.sleep(self.interval)
