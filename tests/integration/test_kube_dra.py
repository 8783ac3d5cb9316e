"""The pod → claim → device → taint chain over real HTTP against the API emulator.

KubeSource reads ResourceSlices, ResourceClaims, ResourceClasses and DeviceTaintRules in every
served version; each pod of a pool gets the capacity prior of the devices its claims hold and the
health class of their taints; the datastore drains a pod whose device is tainted NoSchedule or
NoExecute and slows one whose device is PreferNoSchedule.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from epp import top
from epp.api.model import PodInfo, ResourceSet
from epp.datastore import Datastore
from epp.hardware import HEALTH_DEGRADED, HEALTH_DRAIN, HEALTH_OK
from epp.kube.client import ClientConfig, KubeApi
from epp.kube.runtime import KubeModeConfig
from epp.kube.source import KubeSource, SourceConfig
from epp.kube.watch import WatchSettings
from epp.server import EppServer, ServeConfig
from epp.settings import ServerSettings, Settings
from tests.kube.apiserver import ApiServer
from tests.kube.dra_objects import (
    SEED_MAINTENANCE_SLICE,
    claim_v1,
    claiming_pod,
    gpu,
    seed_claim,
    seed_class,
    slice_v1,
    taint_rule,
)
from tests.kube.objects import node, pod, seed_model, seed_pool, until

pytestmark = pytest.mark.integration

FAST = WatchSettings(watch_timeout=30, resync=60, backoff_initial=0.05, backoff_max=0.2)
POOL = "default/llama2-pool"


@pytest.fixture
async def source(api: KubeApi) -> AsyncIterator[KubeSource]:
    src = KubeSource(api, SourceConfig(watch=FAST))
    src.start()
    yield src
    await src.aclose()


def by_name(resources: ResourceSet) -> dict[str, PodInfo]:
    return {p.name: p for p in resources.pods}


async def next_set(source: KubeSource, since: ResourceSet, timeout: float = 3.0) -> ResourceSet:
    """The first set after `since` that differs from it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = source.current()
        if current != since:
            return current
        await asyncio.sleep(0.005)
    raise AssertionError("no new resource set")


def remove(server: ApiServer, version: str, plural: str, name: str) -> None:
    server.delete(server.kind("resource.k8s.io", version, plural), "", name)


def health_of(source: KubeSource) -> dict[str, str]:
    return {p.name: p.device_health for p in source.current().pods}


def v1_cluster(server: ApiServer) -> None:
    server.put(node("gpu-node-1", "nvidia-tesla-a100"))
    server.put(seed_pool())
    server.put(seed_model("llama2-7b-chat"))
    devices = [
        gpu("gpu-0"),
        gpu("gpu-1-mig-0", profile="1g.5gb"),
        gpu("gpu-1-mig-1", profile="1g.5gb"),
    ]
    server.put(slice_v1("gpu-node-1", devices))
    server.put(claim_v1("claim-0", ["gpu-0"]))
    server.put(claim_v1("claim-1", ["gpu-1-mig-0"]))
    server.put(claiming_pod("vllm-0", "10.0.0.1", "claim-0"))
    server.put(claiming_pod("vllm-1", "10.0.0.2", "claim-1", new_style=False))
    # a claim made from a template: the pod names it in its status
    server.put(claim_v1("vllm-2-gpu-x7k2p", ["gpu-1-mig-1"]))
    templated = pod("vllm-2", "10.0.0.3", node="gpu-node-1")
    templated["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "mig"}]
    templated["status"]["resourceClaimStatuses"] = [
        {"name": "gpu", "resourceClaimName": "vllm-2-gpu-x7k2p"}
    ]
    server.put(templated)


async def test_capacity_follows_the_devices_each_pod_claims(
    server: ApiServer, source: KubeSource
) -> None:
    v1_cluster(server)
    pods = by_name(await source.synced())
    assert pods["vllm-0"].capacity == pytest.approx(1.0)
    assert pods["vllm-1"].capacity == pytest.approx(1 / 7)
    assert pods["vllm-2"].capacity == pytest.approx(1 / 7)
    assert {p.device_health for p in pods.values()} == {HEALTH_OK}
    store = Datastore()
    store.apply_resources(source.current())
    caps = {s.endpoint.pod: s.endpoint.capacity for s in store.candidates(POOL)}
    assert caps == pytest.approx({"default/vllm-0": 1.0, "default/vllm-1": 1 / 7,
                                  "default/vllm-2": 1 / 7})  # fmt: skip


async def test_a_slice_taint_drains_its_pod_within_a_second_and_clearing_it_brings_it_back(
    server: ApiServer, source: KubeSource
) -> None:
    v1_cluster(server)
    first = await source.synced()
    store = Datastore()
    store.apply_resources(first)
    lease = store.lease("10.0.0.1:8000", 100)  # a request in flight on vllm-0
    tainted = [
        gpu("gpu-0", taints=[{"key": "maintenance", "value": "scheduled", "effect": "NoSchedule"}]),
        gpu("gpu-1-mig-0", profile="1g.5gb"),
        gpu("gpu-1-mig-1", profile="1g.5gb"),
    ]
    started = time.monotonic()
    server.put(slice_v1("gpu-node-1", tainted))
    changed = await next_set(source, first)
    store.apply_resources(changed)
    took = time.monotonic() - started
    assert by_name(changed)["vllm-0"].device_health == HEALTH_DRAIN
    assert "10.0.0.1:8000" not in {s.address for s in store.ready(POOL)}
    assert took < 1.0, took
    assert store.in_flight("10.0.0.1:8000") == 1  # its request finishes where it runs
    lease.release()
    assert store.in_flight("10.0.0.1:8000") == 0
    server.put(slice_v1("gpu-node-1", [gpu("gpu-0"), *tainted[1:]]))
    back = await next_set(source, changed)
    store.apply_resources(back)
    assert "10.0.0.1:8000" in {s.address for s in store.ready(POOL)}


async def test_device_taint_rules_tolerations_and_prefer_no_schedule(
    server: ApiServer, source: KubeSource
) -> None:
    v1_cluster(server)
    first = await source.synced()
    server.put(taint_rule("mig-maintenance", "NoExecute", device="gpu-1-mig-0"))
    after_rule = await next_set(source, first)
    health = {n: p.device_health for n, p in by_name(after_rule).items()}
    assert health == {"vllm-0": HEALTH_OK, "vllm-1": HEALTH_DRAIN, "vllm-2": HEALTH_OK}
    # a claim that tolerates the taint keeps its pod serving
    tolerant = [{"key": "maintenance", "operator": "Exists", "effect": "NoExecute"}]
    server.put(claim_v1("claim-1", ["gpu-1-mig-0"], tolerations=tolerant))
    tolerated = await next_set(source, after_rule)
    assert by_name(tolerated)["vllm-1"].device_health == HEALTH_OK
    # a rule in a newer version, for every device of the driver: every pod; deleted: none
    remove(server, "v1alpha3", "devicetaintrules", "mig-maintenance")
    server.put(taint_rule("all-throttled", "PreferNoSchedule", version="v1beta2"))
    every = {"vllm-0": HEALTH_DEGRADED, "vllm-1": HEALTH_DEGRADED, "vllm-2": HEALTH_DEGRADED}
    await until(lambda: health_of(source) == every, what="every pod degraded")
    remove(server, "v1beta2", "devicetaintrules", "all-throttled")
    await until(lambda: set(health_of(source).values()) == {HEALTH_OK}, what="rule deleted")


async def test_an_object_served_in_two_versions_is_read_from_the_newest(
    server: ApiServer, source: KubeSource
) -> None:
    v1_cluster(server)
    # the same slice as an older server version lists it, with a taint the v1 copy lacks
    devices = [gpu("gpu-0", taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}])]
    old = slice_v1("gpu-node-1", [{"name": d["name"], "basic": {"attributes": d["attributes"],
                   "taints": d["taints"]}} for d in devices], version="v1beta1")  # fmt: skip
    server.put(old)
    pods = by_name(await source.synced())
    assert pods["vllm-0"].device_health == HEALTH_OK
    server.delete(
        server.kind("resource.k8s.io", "v1", "resourceslices"), "", "gpu-node-1-gpu.nvidia.com"
    )
    fallen_back = await next_set(source, source.current())
    assert by_name(fallen_back)["vllm-0"].device_health == HEALTH_DRAIN


async def test_the_seeds_v1alpha2_documents(server: ApiServer, source: KubeSource) -> None:
    server.put(node("gpu-node-1", "nvidia-tesla-a100"))
    server.put(seed_pool())
    server.put(SEED_MAINTENANCE_SLICE)
    server.put(seed_class("mig-gpu-class", {"migEnabled": True, "migProfile": "1g.5gb"}))
    server.put(seed_class("shared-gpu-class", {"shared": True, "maxUsers": 4, "timeSlicing": True}))
    server.put(seed_claim("mig-gpu-claim", "mig-gpu-class"))
    server.put(seed_claim("shared-gpu-claim", "shared-gpu-class"))
    server.put(seed_claim("maintenance-gpu-claim", "nvidia-gpu-class", allocated="gpu-0"))
    server.put(claiming_pod("mig", "10.0.0.1", "mig-gpu-claim", new_style=False))
    server.put(claiming_pod("shared", "10.0.0.2", "shared-gpu-claim", new_style=False))
    server.put(claiming_pod("maintenance", "10.0.0.3", "maintenance-gpu-claim", new_style=False))
    pods = by_name(await source.synced())
    assert pods["mig"].capacity == pytest.approx(1 / 7)  # the class's migProfile on an A100
    assert pods["shared"].capacity == pytest.approx(1 / 4)  # maxUsers: 4
    # NoSchedule and PreferNoSchedule on its one device: the worse, drain
    assert pods["maintenance"].device_health == HEALTH_DRAIN
    assert pods["mig"].device_health == HEALTH_OK


async def test_device_plugin_resources_without_dra(server: ApiServer, source: KubeSource) -> None:
    server.put(seed_pool())
    shared = node("ts-node", "nvidia-tesla-t4")
    shared["metadata"]["labels"]["nvidia.com/gpu.replicas"] = "4"
    server.put(shared)
    server.put(node("mig-node", "NVIDIA-A100-SXM4-40GB"))
    sliced = pod("sliced", "10.0.0.1", node="mig-node")
    sliced["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/mig-3g.20gb": "1"}}
    server.put(sliced)
    timeshared = pod("timeshared", "10.0.0.2", node="ts-node")
    timeshared["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    server.put(timeshared)
    server.put(pod("plain", "10.0.0.3", node="mig-node"))
    pods = by_name(await source.synced())
    assert pods["sliced"].capacity == pytest.approx(3 / 7)
    assert pods["timeshared"].capacity == pytest.approx(0.21 / 4)
    assert pods["plain"].capacity is None  # the datastore takes its node's model alone


async def test_debug_endpoints_and_epp_top_show_capacity_and_health(server: ApiServer) -> None:
    """A real EppServer in Kubernetes mode: /debug/endpoints and `epp top` show each pod's
    capacity prior and its GPU's health, and follow a taint."""
    v1_cluster(server)
    kube = KubeModeConfig(
        client=ClientConfig(host=server.url, request_timeout=5),
        source=SourceConfig(watch=FAST),
        leader_elect=False,
        write_status=False,
        reconcile_deployments=False,
    )
    settings = Settings(server=ServerSettings("127.0.0.1", 0, 0, 0, drain_seconds=0))
    picker = EppServer(ServeConfig(settings, kube=kube))
    await picker.start()
    url = f"http://127.0.0.1:{picker.metrics_port}"

    async def rows() -> dict[str, dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            got = (await client.get(f"{url}/debug/endpoints")).raise_for_status().json()
        return {r["pod"]: r for r in got["endpoints"]}

    try:
        await until(lambda: len(picker.store.endpoints()) == 3, what="three endpoints")
        first = await rows()
        assert first["default/vllm-0"]["capacity"] == 1.0
        assert first["default/vllm-1"]["capacity"] == pytest.approx(1 / 7, abs=1e-4)
        assert {r["gpu_health"] for r in first.values()} == {HEALTH_OK}
        server.put(taint_rule("drain-mig", "NoExecute", device="gpu-1-mig-0"))
        await until(
            lambda: HEALTH_DRAIN in {s.gpu_health for s in picker.store.candidates(POOL)},
            what="the taint",
        )
        assert (await rows())["default/vllm-1"]["gpu_health"] == HEALTH_DRAIN
        out = io.StringIO()
        assert await asyncio.to_thread(top.run, url, 1.0, True, out) == 0
        line = next(x for x in out.getvalue().splitlines() if "10.0.0.2:8000" in x)
        assert line.split()[2:4] == ["drain", "0.14"]
    finally:
        await picker.stop()


async def test_rbac_without_dra_still_syncs_and_serves(
    server: ApiServer, source: KubeSource, caplog: pytest.LogCaptureFixture
) -> None:
    """A deployment whose RBAC predates DRA: the DRA lists answer 403, the EPP goes on."""
    server.forbidden = {"resourceslices", "resourceclaims", "resourceclasses", "devicetaintrules"}
    v1_cluster(server)
    resources = await asyncio.wait_for(source.synced(), 5)
    assert {p.name for p in resources.pods} == {"vllm-0", "vllm-1", "vllm-2"}
    assert {p.capacity for p in resources.pods} == {None}  # nothing known of their devices
    assert not source.stale
    assert any("forbidden" in r.getMessage() for r in caplog.records)
