"""Delta (incremental) ADS driven by an in-memory Envoy: diffs, removals, ACK/NACK, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from epp.controlplane.delta import DeltaTypeState
from epp.controlplane.xds import CLUSTER, LISTENER, ROUTE, AdsServer, XdsCache
from tests.unit.test_controlplane_xds import FakeEnvoy as SotwEnvoy

Response = discovery_pb2.DeltaDiscoveryResponse


class DeltaEnvoy:
    """Feeds delta requests to one stream and collects its responses."""

    def __init__(self, server: AdsServer, node: str = "envoy-1") -> None:
        self.node = node
        self.requests: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
        self.responses: asyncio.Queue[Response] = asyncio.Queue()
        self.task = asyncio.create_task(
            server.DeltaAggregatedResources(self._iter(), self)  # type: ignore[arg-type]
        )

    async def _iter(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (request := await self.requests.get()) is not None:
            yield request

    async def write(self, response: Response) -> None:
        await self.responses.put(response)

    def ask(
        self,
        type_url: str,
        subscribe: tuple[str, ...] = (),
        unsubscribe: tuple[str, ...] = (),
        nonce: str = "",
        initial: Mapping[str, str] | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe,
            resource_names_unsubscribe=unsubscribe,
            response_nonce=nonce,
            initial_resource_versions=dict(initial or {}),
        )
        request.node.id = self.node
        self.requests.put_nowait(request)

    def ack(self, response: Response) -> None:
        self.ask(response.type_url, nonce=response.nonce)

    def nack(self, response: Response, message: str) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=response.type_url, response_nonce=response.nonce
        )
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=message))
        self.requests.put_nowait(request)

    async def next(self, timeout: float = 1.0) -> Response:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def nothing(self) -> None:
        await asyncio.sleep(0.05)
        assert self.responses.empty(), self.responses.get_nowait()

    async def close(self) -> None:
        self.requests.put_nowait(None)
        await asyncio.wait_for(self.task, 1.0)


def config(
    clusters: tuple[str, ...], routes: Mapping[str, str] | None = None
) -> dict[str, dict[str, Message]]:
    """Clusters by name, one listener, and route configs name -> a virtual host's name."""
    return {
        CLUSTER: {n: cluster_pb2.Cluster(name=n) for n in clusters},
        LISTENER: {"l1": listener_pb2.Listener(name="l1")},
        ROUTE: {
            n: route_pb2.RouteConfiguration(
                name=n, virtual_hosts=[route_components_pb2.VirtualHost(name=host, domains=["*"])]
            )
            for n, host in (routes or {"r1": "v1"}).items()
        },
    }


def sent(response: Response) -> list[str]:
    return [r.name for r in response.resources]


async def connected(
    server: AdsServer, routes: tuple[str, ...] = ("r1",), node: str = "envoy-1"
) -> DeltaEnvoy:
    """An Envoy that subscribed to clusters, listeners and `routes` and ACKed all of it."""
    envoy = DeltaEnvoy(server, node)
    envoy.ask(CLUSTER)
    envoy.ask(LISTENER)
    envoy.ack(await envoy.next())
    envoy.ack(await envoy.next())
    envoy.ask(ROUTE, routes)
    envoy.ack(await envoy.next())
    await server.wait_synced(timeout=1)
    return envoy


async def test_clusters_go_first_then_listeners_then_routes() -> None:
    cache = XdsCache()
    cache.set(config(("a", "b")))
    server = AdsServer(cache)
    envoy = DeltaEnvoy(server)
    envoy.ask(CLUSTER)
    envoy.ask(LISTENER)
    cds = await envoy.next()
    assert cds.type_url == CLUSTER and sent(cds) == ["a", "b"] and not cds.removed_resources
    assert cds.system_version_info == "1" and cds.nonce
    assert all(r.version == cache.resource_versions(CLUSTER)[r.name] for r in cds.resources)
    await envoy.nothing()  # LDS waits while the clusters warm
    assert not server.synced()
    envoy.ack(cds)
    lds = await envoy.next()
    assert lds.type_url == LISTENER and sent(lds) == ["l1"] and lds.nonce != cds.nonce
    envoy.ack(lds)
    envoy.ask(ROUTE, ("r1",))
    rds = await envoy.next()
    assert rds.type_url == ROUTE and sent(rds) == ["r1"]
    envoy.ack(rds)
    await envoy.nothing()
    await server.wait_synced(timeout=1)
    assert server.acked_everywhere()
    assert [s.protocol for s in server.streams.values()] == ["delta"]
    await envoy.close()
    assert not server.streams


async def test_a_changed_route_sends_only_that_route() -> None:
    cache = XdsCache()
    cache.set(config(("a",), {"r1": "v1", "r2": "v1"}))
    server = AdsServer(cache)
    envoy = await connected(server, ("r1", "r2"))
    assert cache.set(config(("a",), {"r1": "v1", "r2": "v2"}))
    rds = await envoy.next()
    assert rds.type_url == ROUTE and sent(rds) == ["r2"] and not rds.removed_resources
    await envoy.nothing()  # clusters and listeners did not change: nothing for them
    assert not server.acked_everywhere()
    envoy.ack(rds)
    await server.wait_synced(timeout=1)
    assert server.acked_everywhere()
    await envoy.close()


async def test_a_change_to_a_route_envoy_does_not_watch_sends_nothing() -> None:
    cache = XdsCache()
    cache.set(config(("a",), {"r1": "v1", "r2": "v1"}))
    server = AdsServer(cache)
    envoy = await connected(server, ("r1",))
    cache.set(config(("a",), {"r1": "v1", "r2": "v2"}))
    await envoy.nothing()
    assert server.synced() and server.acked_everywhere()  # it holds the new version already
    await envoy.close()


async def test_a_deleted_cluster_is_removed_once_the_routes_are_current() -> None:
    cache = XdsCache()
    cache.set(config(("a", "b")))
    server = AdsServer(cache)
    envoy = await connected(server)
    cache.set(config(("a",)))  # only the clusters change: b goes at once
    cds = await envoy.next()
    assert cds.type_url == CLUSTER and not cds.resources and list(cds.removed_resources) == ["b"]
    envoy.ack(cds)
    await server.wait_synced(timeout=1)
    cache.set(config(("a", "c"), {"r1": "v2"}))
    cds = await envoy.next()
    assert sent(cds) == ["c"] and not cds.removed_resources
    envoy.ack(cds)
    envoy.ack(await envoy.next())  # the new route
    cache.set(config(("a",), {"r1": "v3"}))  # c goes and the route changes: route first
    rds = await envoy.next()
    assert rds.type_url == ROUTE and sent(rds) == ["r1"]
    assert not server.synced()  # the cluster removal is still owed
    envoy.ack(rds)
    cds = await envoy.next()
    assert cds.type_url == CLUSTER and list(cds.removed_resources) == ["c"]
    assert cds.system_version_info == cache.versions[CLUSTER]
    envoy.ack(cds)
    await server.wait_synced(timeout=1)
    assert server.acked_everywhere()
    await envoy.close()


async def test_a_nack_is_reported_and_the_last_accepted_state_kept() -> None:
    cache = XdsCache()
    cache.set(config(("a",), {"r1": "v1", "r2": "v1"}))
    server = AdsServer(cache)
    envoy = await connected(server, ("r1", "r2"))
    good = cache.resource_versions(ROUTE)["r1"]
    cache.set(config(("a",), {"r1": "bad", "r2": "v1"}))
    bad = await envoy.next()
    assert sent(bad) == ["r1"]
    envoy.nack(bad, "invalid route")
    await envoy.nothing()  # the refused resource is not resent
    version = cache.versions[ROUTE]
    assert [(n.type_url, n.version, n.message) for n in server.nacks] == [
        (ROUTE, version, "invalid route")
    ]
    state = next(iter(server.streams.values())).types[ROUTE]
    assert isinstance(state, DeltaTypeState)
    assert state.nacked_version == version and state.acked_version != version
    assert server.synced() and not server.acked_everywhere()
    assert state.have["r1"] == good  # what Envoy still runs
    envoy.ask(ROUTE, unsubscribe=("r2",))  # a subscription change does not resend it either
    await envoy.nothing()
    cache.set(config(("a",), {"r1": "fixed", "r2": "v1"}))
    fixed = await envoy.next()
    assert sent(fixed) == ["r1"] and fixed.resources[0].version != good
    envoy.ack(fixed)
    await server.wait_synced(timeout=1)
    assert server.acked_everywhere()
    await envoy.close()


async def test_reconnect_with_initial_versions_sends_only_what_differs() -> None:
    cache = XdsCache()
    cache.set(config(("a", "b"), {"r1": "v1", "r2": "v1"}))
    server = AdsServer(cache)
    first = await connected(server, ("r1", "r2"))
    await first.close()
    clusters = dict(cache.resource_versions(CLUSTER))
    listeners = dict(cache.resource_versions(LISTENER))
    routes = dict(cache.resource_versions(ROUTE))
    cache.set(config(("a", "c"), {"r1": "v1", "r2": "v2"}))  # while Envoy was away
    envoy = DeltaEnvoy(server)
    envoy.ask(CLUSTER, initial=clusters)
    envoy.ask(LISTENER, initial=listeners)
    envoy.ask(ROUTE, ("r1", "r2"), initial=routes)
    cds = await envoy.next()
    assert sent(cds) == ["c"] and not cds.removed_resources  # b waits: the old r2 may use it
    envoy.ack(cds)
    listed = [await envoy.next(), await envoy.next()]
    by_type = {r.type_url: r for r in listed}
    assert sent(by_type[LISTENER]) == [] and not by_type[LISTENER].removed_resources
    assert sent(by_type[ROUTE]) == ["r2"]
    for response in listed:
        envoy.ack(response)
    cds = await envoy.next()
    assert not cds.resources and list(cds.removed_resources) == ["b"]
    envoy.ack(cds)
    await server.wait_synced(timeout=1)
    assert server.acked_everywhere()
    await envoy.close()


async def test_subscriptions_to_missing_and_new_resources() -> None:
    cache = XdsCache()
    cache.set(config(("a",)))
    server = AdsServer(cache)
    envoy = await connected(server, ("r1", "later"))  # `later` does not exist yet
    state = next(iter(server.streams.values())).types[ROUTE]
    assert isinstance(state, DeltaTypeState) and state.absent == {"later"}
    cache.set(config(("a",), {"r1": "v1", "later": "v1"}))
    created = await envoy.next()
    assert sent(created) == ["later"]
    envoy.ack(created)
    envoy.ask(ROUTE, unsubscribe=("later",))
    await envoy.nothing()  # no answer owed for an unsubscription
    envoy.ask(ROUTE, ("r1",))  # asked again: sent again (Envoy may have dropped it)
    again = await envoy.next()
    assert sent(again) == ["r1"]
    envoy.ack(again)
    cache.set(config(("a",), {"later": "v2"}))  # r1 deleted, `later` no longer watched
    removed = await envoy.next()
    assert not removed.resources and list(removed.removed_resources) == ["r1"]
    await envoy.close()


async def test_stale_nonces_do_not_ack_but_subscriptions_apply() -> None:
    cache = XdsCache()
    cache.set(config(("a",), {"r1": "v1", "r2": "v1"}))
    server = AdsServer(cache)
    envoy = await connected(server, ("r1",))
    envoy.ask(ROUTE, ("r2",), nonce="not-ours")
    rds = await envoy.next()
    assert sent(rds) == ["r2"]
    envoy.ask(ROUTE, nonce="not-ours")
    await envoy.nothing()
    assert not server.synced()
    envoy.ack(rds)
    await server.wait_synced(timeout=1)
    await envoy.close()


async def test_delta_and_state_of_the_world_envoys_side_by_side() -> None:
    cache = XdsCache()
    cache.set(config(("a",)))
    server = AdsServer(cache)
    delta = await connected(server, node="delta")
    sotw = SotwEnvoy(server, "sotw")
    sotw.ask(CLUSTER)
    sotw.ack(await sotw.next())
    await server.wait_synced(timeout=1, envoys=2)
    assert server.acked_everywhere()
    cache.set(config(("a", "b")))
    full, only_new = await sotw.next(), await delta.next()
    assert len(full.resources) == 2 and sent(only_new) == ["b"]
    assert not server.acked_everywhere()
    sotw.ack(full)
    delta.ack(only_new)
    await server.wait_synced(timeout=1, envoys=2)
    assert server.acked_everywhere()
    assert sorted(s.protocol for s in server.streams.values()) == ["delta", "sotw"]
    await delta.close()
    await sotw.close()


async def test_an_explicit_name_dropped_under_a_wildcard_is_answered() -> None:
    cache = XdsCache()
    cache.set(config(("a",)))
    server = AdsServer(cache)
    envoy = DeltaEnvoy(server)
    envoy.ask(CLUSTER, ("*", "a", "gone"))
    first = await envoy.next()
    assert sent(first) == ["a"] and list(first.removed_resources) == ["gone"]
    envoy.ack(first)
    envoy.ask(CLUSTER, unsubscribe=("a", "gone"))
    # the protocol: Envoy cannot tell whether the wildcard still covers them, so it is told
    answer = await envoy.next()
    assert sent(answer) == ["a"] and list(answer.removed_resources) == ["gone"]
    envoy.ack(answer)
    envoy.ask(CLUSTER, unsubscribe=("*",))
    await envoy.nothing()
    cache.set(config(("a", "b")))
    await envoy.nothing()  # no longer subscribed to anything
    await server.wait_synced(timeout=1)
    await envoy.close()
