"""The ADS server's protocol, driven by an in-memory Envoy: versions, nonces, ACK/NACK, order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from epp.controlplane.xds import CLUSTER, LISTENER, ROUTE, AdsServer, XdsCache


class FakeEnvoy:
    """Feeds requests to one ADS stream and collects its responses."""

    def __init__(self, server: AdsServer, node: str = "envoy-1") -> None:
        self.node = node
        self.requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self.task = asyncio.create_task(
            server.StreamAggregatedResources(self._iter(), self)  # type: ignore[arg-type]
        )

    async def _iter(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self.requests.get()) is not None:
            yield request

    async def write(self, response: discovery_pb2.DiscoveryResponse) -> None:
        await self.responses.put(response)

    def ask(
        self, type_url: str, names: tuple[str, ...] = (), nonce: str = "", version: str = ""
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version
        )
        request.node.id = self.node
        self.requests.put_nowait(request)

    def ack(self, response: discovery_pb2.DiscoveryResponse, names: tuple[str, ...] = ()) -> None:
        self.ask(response.type_url, names, response.nonce, response.version_info)

    def nack(self, response: discovery_pb2.DiscoveryResponse, message: str) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce, version_info=""
        )
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=message))
        self.requests.put_nowait(request)

    async def next(self, timeout: float = 1.0) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def nothing(self) -> None:
        await asyncio.sleep(0.05)
        assert self.responses.empty(), self.responses.get_nowait()

    async def close(self) -> None:
        self.requests.put_nowait(None)
        await asyncio.wait_for(self.task, 1.0)


def resources(clusters: tuple[str, ...], route_names: tuple[str, ...] = ("r1",)) -> dict:  # type: ignore[type-arg]
    return {
        CLUSTER: {n: cluster_pb2.Cluster(name=n) for n in clusters},
        LISTENER: {"l1": listener_pb2.Listener(name="l1")},
        ROUTE: {n: route_pb2.RouteConfiguration(name=n) for n in route_names},
    }


def names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for item in response.resources:
        message = (
            cluster_pb2.Cluster()
            if response.type_url == CLUSTER
            else route_pb2.RouteConfiguration()
        )
        if response.type_url == LISTENER:
            message = listener_pb2.Listener()
        item.Unpack(message)
        out.append(message.name)
    return out


async def test_clusters_go_first_and_listeners_wait_for_their_ack() -> None:
    cache = XdsCache()
    cache.set(resources(("a", "b")))
    server = AdsServer(cache)
    envoy = FakeEnvoy(server)
    envoy.ask(CLUSTER)
    envoy.ask(LISTENER)
    cds = await envoy.next()
    assert cds.type_url == CLUSTER and names(cds) == ["a", "b"] and cds.version_info == "1"
    await envoy.nothing()  # LDS waits while the clusters warm
    envoy.ack(cds)
    lds = await envoy.next()
    assert lds.type_url == LISTENER and names(lds) == ["l1"]
    envoy.ack(lds)
    envoy.ask(ROUTE, ("r1", "missing"))
    rds = await envoy.next()
    assert names(rds) == ["r1"]  # only what was asked for and exists
    envoy.ack(rds, ("r1", "missing"))
    await envoy.nothing()
    await server.wait_synced(timeout=1)
    assert server.acked_everywhere()
    await envoy.close()
    assert not server.streams


async def test_only_changed_types_are_pushed_with_a_new_version() -> None:
    cache = XdsCache()
    cache.set(resources(("a",)))
    server = AdsServer(cache)
    envoy = FakeEnvoy(server)
    envoy.ask(CLUSTER)
    envoy.ack(await envoy.next())
    envoy.ask(LISTENER)
    envoy.ack(await envoy.next())
    assert not cache.set(resources(("a",)))  # the same content: nothing to push
    await envoy.nothing()
    assert cache.set(resources(("a", "c")))
    cds = await envoy.next()
    assert names(cds) == ["a", "c"] and cds.version_info == "2"
    envoy.ack(cds)
    await envoy.nothing()  # the listener did not change
    assert cache.versions[LISTENER] == "1"
    await envoy.close()


async def test_a_nack_is_recorded_and_the_same_version_is_not_resent() -> None:
    cache = XdsCache()
    cache.set(resources(("a",)))
    server = AdsServer(cache)
    envoy = FakeEnvoy(server)
    envoy.ask(CLUSTER)
    first = await envoy.next()
    envoy.ack(first)
    cache.set(resources(("bad",)))
    second = await envoy.next()
    envoy.nack(second, "invalid cluster")
    await envoy.nothing()
    assert [(n.version, n.message) for n in server.nacks] == [("2", "invalid cluster")]
    assert server.synced() and not server.acked_everywhere()
    cache.set(resources(("good",)))
    third = await envoy.next()
    assert names(third) == ["good"] and third.version_info == "3"
    await envoy.close()


async def test_stale_nonces_are_ignored() -> None:
    cache = XdsCache()
    cache.set(resources(("a",)))
    server = AdsServer(cache)
    envoy = FakeEnvoy(server)
    envoy.ask(CLUSTER)
    first = await envoy.next()
    envoy.ask(CLUSTER, nonce="not-ours")
    await envoy.nothing()
    assert not server.synced()  # still waiting for the answer to `first`
    envoy.ack(first)
    await envoy.nothing()
    assert server.synced()
    await envoy.close()


async def test_many_envoys_each_get_the_update() -> None:
    cache = XdsCache()
    cache.set(resources(("a",)))
    server = AdsServer(cache)
    envoys = [FakeEnvoy(server, f"envoy-{i}") for i in range(5)]
    for envoy in envoys:
        envoy.ask(CLUSTER)
        envoy.ack(await envoy.next())
    cache.set(resources(("a", "b")))
    for envoy in envoys:
        response = await envoy.next()
        assert names(response) == ["a", "b"]
        envoy.ack(response)
    await server.wait_synced(timeout=1, envoys=5)
    assert len(server.streams) == 5
    for envoy in envoys:
        await envoy.close()


async def test_a_removed_cluster_stays_until_envoy_has_the_routes_without_it() -> None:
    cache = XdsCache()
    cache.set(resources(("a", "b")))
    server = AdsServer(cache)
    envoy = FakeEnvoy(server)
    envoy.ask(CLUSTER)
    envoy.ack(await envoy.next())
    envoy.ask(ROUTE, ("r1",))
    envoy.ack(await envoy.next(), ("r1",))
    cache.set(resources(("a",), ("r1", "r2")))  # b goes, and the routes change
    keep = await envoy.next()
    assert keep.type_url == CLUSTER and names(keep) == ["a", "b"] and keep.version_info == "2+kept"
    envoy.ack(keep)
    rds = await envoy.next()
    assert rds.type_url == ROUTE and rds.version_info == "2"
    assert not server.synced()
    envoy.ack(rds, ("r1",))
    final = await envoy.next()
    assert final.type_url == CLUSTER and names(final) == ["a"] and final.version_info == "2"
    envoy.ack(final)
    await server.wait_synced(timeout=1)
    await envoy.close()
