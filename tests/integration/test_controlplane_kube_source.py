"""GatewaySource and GatewayStatusWriter against the API emulator, without Envoy.

Covers what the end-to-end module does not: a watch outage keeps the last objects, a burst of
edits is coalesced, namespace scoping, our own status writes cause no new set, a 409 Conflict
is retried on a fresh read that keeps another controller's entry, and of two replicas only the
Lease holder writes until it hands the Lease over.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from epp.api.model import ResourceSet
from epp.controlplane.clusters import TranslateOptions
from epp.controlplane.kubemode import KubeControlPlaneConfig, KubeMode
from epp.controlplane.kubesource import CONTROLLER_NAME, GatewaySource, GatewaySourceConfig
from epp.controlplane.kubestatus import GatewayStatusWriter
from epp.controlplane.plane import ControlPlane
from epp.controlplane.resolve import resolve
from epp.controlplane.status import programmed
from epp.kube.client import ClientConfig, KubeApi
from epp.kube.leader import LeaderSettings
from epp.kube.watch import WatchSettings
from tests.kube.apiserver import ApiServer
from tests.kube.objects import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

GW = "gateway.networking.k8s.io/v1"
ROUTES = ("gateway.networking.k8s.io", "v1", "httproutes")
ROUTE_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes/{name}"


def gateway(ns: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": GW,
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": ns},
        "spec": {
            "gatewayClassName": "c",
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        },
    }


def route(name: str, ns: str = "default", path: str = "/") -> dict[str, Any]:
    return {
        "apiVersion": GW,
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": path}}],
                    "backendRefs": [{"name": "svc", "port": 80}],
                }
            ],
        },
    }


def name_of(doc: dict[str, object]) -> str:
    meta = doc.get("metadata")
    return f"{doc.get('kind')}/{meta.get('name') if isinstance(meta, dict) else ''}"


def kinds(resources: ResourceSet) -> list[str]:
    return sorted(name_of(d) for d in resources.other)


@pytest.fixture
async def source(server: ApiServer, api: KubeApi) -> AsyncIterator[GatewaySource]:
    config = GatewaySourceConfig(watch=WatchSettings(backoff_initial=0.05, backoff_max=0.2))
    src = GatewaySource(api, config)
    yield src
    await src.aclose()


async def next_set(sets: AsyncIterator[ResourceSet], timeout: float = 5.0) -> ResourceSet:
    return await asyncio.wait_for(anext(sets), timeout)


async def test_outage_keeps_the_last_objects_and_bursts_are_coalesced(
    server: ApiServer, source: GatewaySource
) -> None:
    server.put(gateway())
    first = await source.synced()
    assert kinds(first) == ["Gateway/gw"]
    sets = source.watch(since=first)
    server.outage = True
    server.drop_watches()
    stale = await next_set(sets)
    assert kinds(stale) == ["Gateway/gw"]  # kept through the outage
    assert any(p.reason == "Stale" for p in stale.problems)
    server.outage = False
    recovered = stale
    for _ in range(20):  # the watches recover one by one
        recovered = await next_set(sets)
        if not any(p.reason == "Stale" for p in recovered.problems):
            break
    assert not any(p.reason == "Stale" for p in recovered.problems)
    assert not source.stale
    for i in range(30):
        server.put(route(f"r{i}"))
    seen = 0
    while len([k for k in kinds(source.current()) if k.startswith("HTTPRoute")]) < 30 or seen == 0:
        await next_set(sets)
        seen += 1
    assert seen < 30  # one burst, a few sets
    await sets.aclose()


async def test_a_change_between_the_first_set_and_the_watch_is_not_lost(
    server: ApiServer, source: GatewaySource
) -> None:
    server.put(gateway())
    first = await source.synced()  # applied by the caller, who then awaits something else
    server.put(route("late"))
    await until(lambda: "HTTPRoute/late" in kinds(source.current()), what="the late route")
    sets = source.watch(since=first)
    assert "HTTPRoute/late" in kinds(await next_set(sets, timeout=1.0))  # not the next change
    await sets.aclose()


async def test_namespaces_scope_the_watch(server: ApiServer, api: KubeApi) -> None:
    server.put(gateway("a"))
    server.put(gateway("b"))
    for ns in ("a", "tls"):
        server.put({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                    "metadata": {"name": "cert", "namespace": ns},
                    "data": {"tls.crt": "", "tls.key": ""}})  # fmt: skip
    opaque = {"name": "password", "namespace": "tls"}
    server.put({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": opaque,
                "data": {"p": ""}})  # fmt: skip
    config = GatewaySourceConfig(namespaces=("a",), secret_namespaces=("tls",))
    src = GatewaySource(api, config)
    try:
        resources = await src.synced()
    finally:
        await src.aclose()
    found = sorted(
        f"{d['kind']}/{d['metadata']['namespace']}/{d['metadata']['name']}"  # type: ignore[index]
        for d in resources.other
    )
    assert found == ["Gateway/a/gw", "Secret/tls/cert"]  # not b's Gateway, a's or Opaque Secrets


async def test_conflict_is_retried_on_a_fresh_read_keeping_other_entries(
    server: ApiServer, api: KubeApi, source: GatewaySource
) -> None:
    server.put(gateway())
    server.put(route("r"))
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "svc", "namespace": "default"},
               "spec": {"clusterIP": "10.0.0.9", "ports": [{"port": 80}]}}  # fmt: skip
    server.put(service)
    resources = await source.synced()
    report = programmed(resolve(resources, set()).status, True, None, 1)
    applied = {(str(d["kind"]), f"default/{d['metadata']['name']}"): d for d in resources.other}  # type: ignore[index]
    # another controller writes its entry after our watch saw the route: our PUT conflicts
    theirs = {"parentRef": {"name": "x"}, "controllerName": "example.com/other", "conditions": []}
    live = await api.get(ROUTE_PATH.format(ns="default", name="r"))
    await api.request("PUT", ROUTE_PATH.format(ns="default", name="r") + "/status",
                      body={**live, "status": {"parents": [theirs]}})  # fmt: skip
    await source.aclose()  # freeze the cache: it still holds the old resourceVersion
    writer = GatewayStatusWriter(api, source)
    assert await writer.write(report, applied) == 2  # the Gateway and the route
    stored = server.get(ROUTES, "default", "r")
    assert stored is not None
    parents = stored["status"]["parents"]
    assert parents[0] == theirs
    assert parents[1]["controllerName"] == CONTROLLER_NAME
    assert {c["type"]: c["status"] for c in parents[1]["conditions"]} == {
        "Accepted": "True", "ResolvedRefs": "True",
    }  # fmt: skip
    assert await writer.write(report, applied) == 0  # nothing changed: nothing written
    puts = [p for m, p in server.requests if m == "PUT" and p.endswith("/r/status")]
    assert len(puts) == 3  # theirs, our conflicting try, our retry


async def test_our_status_writes_do_not_make_a_new_set(
    server: ApiServer, api: KubeApi, source: GatewaySource
) -> None:
    server.put(gateway())
    first = await source.synced()
    sets = source.watch(since=first)
    waiting = asyncio.ensure_future(anext(sets))
    path = "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/gw"
    live = await api.get(path)
    await api.request("PUT", path + "/status", body={**live, "status": {"conditions": []}})
    await asyncio.sleep(0.3)
    assert not waiting.done()
    server.put(route("r"))
    changed = await asyncio.wait_for(waiting, 5)
    assert "HTTPRoute/r" in kinds(changed)
    with contextlib.suppress(StopAsyncIteration):
        await sets.aclose()


async def test_only_the_lease_holder_writes_and_a_successor_takes_over(
    server: ApiServer, api: KubeApi
) -> None:
    server.put(gateway())
    server.put(route("r"))
    replicas: list[tuple[KubeMode, asyncio.Task[None]]] = []
    for name in ("a", "b"):
        config = KubeControlPlaneConfig(
            client=ClientConfig(host=server.url, request_timeout=5),
            leader=LeaderSettings(name="cp", identity=name, lease_duration=2, retry_period=0.1),
            status_poll=0.05,
        )
        mode = await KubeMode.open(ControlPlane(TranslateOptions()), config)
        await mode.start()
        replicas.append((mode, asyncio.create_task(mode.run())))
    try:
        for _ in range(100):
            stored = server.get(ROUTES, "default", "r")
            if (
                stored
                and "status" in stored
                and any(m.writer and m.writer.writes for m, _ in replicas)
            ):
                break
            await asyncio.sleep(0.05)
        (leader,) = [m for m, _ in replicas if m.elector is not None and m.elector.is_leader]
        (follower,) = [m for m, _ in replicas if m is not leader]
        assert leader.writer is not None and leader.writer.writes >= 2
        assert follower.writer is not None and follower.writer.writes == 0
        for mode, task in replicas:
            if mode is leader:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await mode.aclose()  # hands the Lease back
        path = ROUTE_PATH.format(ns="default", name="r")
        live = await api.get(path)  # a real update: status kept, generation bumped
        live["spec"]["rules"][0]["matches"][0]["path"]["value"] = "/v2"
        await api.request("PUT", path, body=live)

        def observed() -> int:
            stored = server.get(ROUTES, "default", "r")
            return int(stored["status"]["parents"][0]["conditions"][0]["observedGeneration"])  # type: ignore[index]

        for _ in range(100):
            if observed() == 2:
                break
            await asyncio.sleep(0.05)
        assert observed() == 2  # the new generation, written by the new leader
        assert follower.elector is not None and follower.elector.is_leader
        assert follower.writer.writes >= 1
    finally:
        for mode, task in replicas:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await mode.aclose()
