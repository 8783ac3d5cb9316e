"""KubeSource over real HTTP against the API emulator: sync, churn, drops, 410, outages, scoping."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from epp.datastore import Datastore
from epp.kube.client import ClientConfig, KubeApi, connect
from epp.kube.source import KubeSource, SourceConfig
from epp.kube.watch import WatchSettings
from tests.kube.apiserver import ApiServer
from tests.kube.objects import node, pod, seed_model, seed_pool, until

pytestmark = pytest.mark.integration

FAST = WatchSettings(watch_timeout=30, resync=60, backoff_initial=0.05, backoff_max=0.2)


def addresses(store: Datastore) -> set[str]:
    return {e.address for e in store.endpoints()}


async def started(api: KubeApi, config: SourceConfig | None = None) -> KubeSource:
    source = KubeSource(api, config or SourceConfig(watch=FAST))
    source.start()
    return source


def seed_cluster(server: ApiServer) -> None:
    server.put(node("node-a", "nvidia-tesla-v100"))
    server.put(seed_pool())
    server.put(seed_model("llama2-7b-chat"))
    serving = pod("vllm-0", "10.0.0.1")
    serving["spec"]["containers"][0]["args"] = ["--model", "m", "--max-num-seqs", "64"]
    server.put(serving)
    server.put(pod("vllm-1", "10.0.0.2", ready=False))
    server.put(pod("other", "10.0.0.9", pool="elsewhere"))


async def test_initial_sync_gives_pools_models_ready_pods_and_accelerators(
    server: ApiServer, api: KubeApi
) -> None:
    seed_cluster(server)
    source = await started(api)
    try:
        resources = await source.synced()
        assert [p.key for p in resources.pools] == ["default/llama2-pool"]
        assert [m.model_name for m in resources.models] == ["llama2-7b-chat"]
        assert {p.name for p in resources.pods} == {"vllm-0", "vllm-1"}  # "other" unselected
        store = Datastore()
        store.apply_resources(resources)
        assert addresses(store) == {"10.0.0.1:8000"}
        (ready,) = [p for p in resources.pods if p.ready]
        assert source.accelerator(ready) == "nvidia-tesla-v100"
        assert ready.accelerator == "nvidia-tesla-v100"  # carried to the endpoint
        assert {e.accelerator for e in store.endpoints()} == {"nvidia-tesla-v100"}
        # the server's --max-num-seqs is its batch size until the EPP learns one
        assert [s.limit for s in store.candidates("default/llama2-pool")] == [64]
        assert not source.stale
        assert not [p for p in resources.problems if p.severity == "error"]
    finally:
        await source.aclose()


async def test_pod_readiness_churn_and_dropped_watch_lose_no_event(
    server: ApiServer, api: KubeApi
) -> None:
    seed_cluster(server)
    source = await started(api)
    store = Datastore()
    first = await source.synced()
    store.apply_resources(first)
    views = source.watch(since=first)
    try:
        for round_ in range(3):
            server.put(pod("vllm-1", "10.0.0.2", ready=True))
            store.apply_resources(await anext(views))
            assert addresses(store) == {"10.0.0.1:8000", "10.0.0.2:8000"}, round_
            server.put(pod("vllm-1", "10.0.0.2", ready=False))
            store.apply_resources(await anext(views))
            assert addresses(store) == {"10.0.0.1:8000"}, round_
        # the connection drops; an event lands while no watch is open; the resumed watch
        # (from the last seen resourceVersion, not a relist) still delivers it
        lists_before = sum(r.lists for r in source.reflectors)
        server.drop_watches()
        server.put(pod("vllm-2", "10.0.0.3"))
        store.apply_resources(await anext(views))
        assert "10.0.0.3:8000" in addresses(store)
        assert sum(r.lists for r in source.reflectors) == lists_before
        server.delete(server.kind("", "v1", "pods"), "default", "vllm-0")
        store.apply_resources(await anext(views))
        assert addresses(store) == {"10.0.0.3:8000"}
    finally:
        await views.aclose()
        await source.aclose()


async def test_a_change_between_the_first_set_and_the_watch_is_not_lost(
    server: ApiServer, api: KubeApi
) -> None:
    seed_cluster(server)
    source = await started(api)
    try:
        first = await source.synced()
        server.put(pod("vllm-2", "10.0.0.3"))
        await until(lambda: len(source.current().pods) == 3, what="the third pod")
        changes = source.watch(since=first)
        fresh = await asyncio.wait_for(anext(changes), 1.0)  # not only at the next change
        assert {p.name for p in fresh.pods} == {"vllm-0", "vllm-1", "vllm-2"}
        await changes.aclose()
    finally:
        await source.aclose()


async def test_gone_410_relists_and_keeps_state_consistent(server: ApiServer, api: KubeApi) -> None:
    seed_cluster(server)
    source = await started(api)
    try:
        await source.synced()
        pods = next(r for r in source.reflectors if r.resource.plural == "pods")
        lists_before = pods.lists
        server.drop_watches()
        server.put(pod("vllm-2", "10.0.0.3"))
        server.compact()  # the version the reflector holds is now too old → 410 → relist
        await until(lambda: pods.lists > lists_before, what="a relist after 410 Gone")
        await until(lambda: "default/vllm-2" in pods.objects, what="the relisted pod")
        assert any("watch=1" in q for _, q in server.requests)
        assert not source.stale
    finally:
        await source.aclose()


async def test_bookmarks_advance_the_resume_version(server: ApiServer, api: KubeApi) -> None:
    seed_cluster(server)
    source = await started(api)
    try:
        await source.synced()
        nodes = next(r for r in source.reflectors if r.resource.plural == "nodes")
        held = int(nodes.version)
        server.put(pod("vllm-5", "10.0.0.5"))  # a change elsewhere moves the global version
        await until(lambda: int(nodes.version) > held, what="a bookmark")
        assert "default/vllm-5" not in nodes.objects
    finally:
        await source.aclose()


async def test_watch_outage_never_empties_the_endpoint_set(server: ApiServer, api: KubeApi) -> None:
    seed_cluster(server)
    source = await started(api)
    store = Datastore()
    first = await source.synced()
    store.apply_resources(first)
    views = source.watch(since=first)
    try:
        server.outage = True
        server.drop_watches()
        stale = await anext(views)
        store.apply_resources(stale)
        assert source.stale
        assert any(p.reason == "Stale" for p in stale.problems)
        assert addresses(store) == {"10.0.0.1:8000"}  # last known state still served
        server.outage = False
        fresh = await anext(views)
        while source.stale:
            fresh = await anext(views)
        assert not any(p.reason == "Stale" for p in fresh.problems)
        store.apply_resources(fresh)
        assert addresses(store) == {"10.0.0.1:8000"}
    finally:
        await views.aclose()
        await source.aclose()


async def test_single_pool_mode_and_namespace_scoping(server: ApiServer, api: KubeApi) -> None:
    seed_cluster(server)
    server.put(seed_pool("second"))
    server.put(
        seed_model("second-model", pool="second")
        | {"spec": {"poolRef": {"name": "second"}, "modelName": "m2"}}
    )
    server.put(seed_pool("llama2-pool", ns="team-b"))
    server.put(pod("b-0", "10.1.0.1", ns="team-b"))
    one = await started(api, SourceConfig(pool_name="llama2-pool", watch=FAST))
    scoped = await started(api, SourceConfig(namespaces=("team-b",), watch=FAST))
    try:
        resources = await one.synced()
        assert [p.key for p in resources.pools] == ["default/llama2-pool"]
        assert [m.model_name for m in resources.models] == ["llama2-7b-chat"]
        team_b = await scoped.synced()
        assert [p.key for p in team_b.pools] == ["team-b/llama2-pool"]
        assert [p.key for p in team_b.pods] == ["team-b/b-0"]
        pools_lists = [q for _, q in server.requests if "inferencepools" in q and "watch" not in q]
        assert any("/namespaces/team-b/" in q for q in pools_lists)
    finally:
        await one.aclose()
        await scoped.aclose()


async def test_missing_crd_counts_as_synced_and_empty(api: KubeApi) -> None:
    only_core = ApiServer(
        kinds=[k for k in ApiServer().kinds.values() if "inference" not in k.plural]
    )
    await only_core.start()
    client = await connect(ClientConfig(host=only_core.url, request_timeout=5))
    source = KubeSource(client, SourceConfig(watch=FAST))
    try:
        resources = await source.synced()
        assert resources.pools == () and resources.models == ()
        assert not all(r.installed for r in source.reflectors)
    finally:
        await source.aclose()
        await client.close()
        await only_core.stop()


async def test_api_server_crash_keeps_state_and_resumes(server: ApiServer, api: KubeApi) -> None:
    seed_cluster(server)
    source = await started(api)
    store = Datastore()
    store.apply_resources(await source.synced())
    try:
        port = await server.crash()
        await until(lambda: source.stale, what="connection refused noticed")
        store.apply_resources(source.current())
        assert addresses(store) == {"10.0.0.1:8000"}
        server.put(pod("vllm-3", "10.0.0.4"))  # changed while the server was unreachable
        await server.recover(port)
        await until(lambda: not source.stale, timeout=5, what="recovery")
        await until(lambda: any(p.name == "vllm-3" for p in source.current().pods), what="vllm-3")
        store.apply_resources(source.current())
        assert addresses(store) == {"10.0.0.1:8000", "10.0.0.4:8000"}
    finally:
        await source.aclose()


async def test_two_consumers_of_one_source_each_see_every_change(
    server: ApiServer, api: KubeApi
) -> None:
    seed_cluster(server)
    source = await started(api)
    await source.synced()
    fast, slow = source.watch_views(), source.watch_views()
    try:
        primed = [asyncio.ensure_future(anext(gen)) for gen in (fast, slow)]
        await asyncio.sleep(0.1)  # both consumers are waiting for a change
        server.put(pod("extra-0", "10.0.1.0"))
        for view in await asyncio.wait_for(asyncio.gather(*primed), 2):
            assert "extra-0" in {p.name for p in view.resources.pods}
        # the slow consumer is busy; the fast one consumes (and clears) every wake-up meanwhile
        for i in range(1, 5):
            server.put(pod(f"extra-{i}", f"10.0.1.{i}"))
            names = {p.name for p in (await asyncio.wait_for(anext(fast), 2)).resources.pods}
            assert f"extra-{i}" in names
        # the slow consumer still gets everything, without another change arriving
        latest = await asyncio.wait_for(anext(slow), 2)
        assert {f"extra-{i}" for i in range(5)} <= {p.name for p in latest.resources.pods}
    finally:
        await fast.aclose()
        await slow.aclose()
        await source.aclose()


async def test_periodic_resync_relists_and_repairs_a_missed_change(
    server: ApiServer, api: KubeApi
) -> None:
    seed_cluster(server)
    every = WatchSettings(watch_timeout=30, resync=0.3, backoff_initial=0.05, backoff_max=0.2)
    source = await started(api, SourceConfig(watch=every, watch_nodes=False))
    try:
        await source.synced()
        pods = next(r for r in source.reflectors if r.resource.plural == "pods")
        # a change the watch never reports (as if an event were lost): only a relist finds it
        stored = server.objects[("", "v1", "pods")][("default", "vllm-0")]
        stored["status"]["podIP"] = "10.9.9.9"
        stored["metadata"]["resourceVersion"] = str(server.rv + 1)
        server.rv += 1
        before = pods.lists
        await until(lambda: pods.lists >= before + 2, what="two resyncs")
        await until(lambda: any(p.ip == "10.9.9.9" for p in source.current().pods))
    finally:
        await source.aclose()


async def test_connect_through_a_kubeconfig_sends_its_token(
    server: ApiServer, tmp_path: Path
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e", "cluster": {"server": server.url}}],
        "users": [{"name": "u", "user": {"token": "token-123"}}],
        "contexts": [{"name": "c", "context": {"cluster": "e", "user": "u"}}],
        "current-context": "c",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    seed_cluster(server)
    client = await connect(ClientConfig(kubeconfig=str(path)))
    source = KubeSource(client, SourceConfig(watch=FAST))
    try:
        resources = await source.synced()
        assert [p.key for p in resources.pools] == ["default/llama2-pool"]
        assert server.authorizations == {"Bearer token-123"}
    finally:
        await source.aclose()
        await client.close()


async def test_crd_installed_later_is_picked_up() -> None:
    inference = {k.plural for k in ApiServer().kinds.values() if "inference" in k.group}
    assert inference == {"inferencepools", "inferencemodels"}
    srv = ApiServer()
    served = dict(srv.kinds)
    seed_key = ("gateway.networking.x-k8s.io", "v1alpha1", "inferencepools")
    del srv.kinds[seed_key]  # the seed's pool CRD is not installed yet
    await srv.start()
    client = await connect(ClientConfig(host=srv.url, request_timeout=5))
    quick = WatchSettings(resync=60, backoff_initial=0.05, missing_retry=0.1)
    source = KubeSource(client, SourceConfig(watch=quick, watch_nodes=False))
    try:
        assert (await source.synced()).pools == ()
        srv.kinds[seed_key] = served[seed_key]  # kubectl apply -f crds/
        srv.put(seed_pool())
        await until(lambda: source.current().pools, what="the pool after the CRD appears")
    finally:
        await source.aclose()
        await client.close()
        await srv.stop()
