"""Leader election, status conditions and the seed pool's Deployment against the API emulator."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from epp.kube.client import SEED_MODELS, SEED_POOLS, V1_POOLS, KubeApi
from epp.kube.controller import KubeController
from epp.kube.deployments import DeploymentReconciler
from epp.kube.leader import LeaderElector, LeaderSettings
from epp.kube.source import KubeSource, SourceConfig
from epp.kube.status import ParentRef, StatusWriter
from epp.kube.watch import WatchSettings
from tests.kube.apiserver import ApiServer
from tests.kube.objects import pod, seed_model, seed_pool, until

pytestmark = pytest.mark.integration

FAST = WatchSettings(watch_timeout=30, resync=60, backoff_initial=0.05, backoff_max=0.2)
QUICK_LEASE = LeaderSettings(name="epp", lease_duration=1.0, renew_deadline=0.6, retry_period=0.1)


def conditions(obj: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    assert obj is not None
    found = (obj.get("status") or {}).get("conditions") or []
    return {c["type"]: (c["status"], c["reason"]) for c in found}


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_leader_failover_between_two_electors(api: KubeApi, server: ApiServer) -> None:
    a = LeaderElector(api, LeaderSettings(**{**_fields(QUICK_LEASE), "identity": "a"}))
    b = LeaderElector(api, LeaderSettings(**{**_fields(QUICK_LEASE), "identity": "b"}))
    run_a = asyncio.create_task(a.run())
    await until(lambda: a.is_leader, what="a leads")
    run_b = asyncio.create_task(b.run())
    try:
        await asyncio.sleep(0.5)
        assert a.is_leader and not b.is_leader  # exactly one leader while a renews
        await stop(run_a)  # a crashes: no release; b must wait for the lease to expire
        lease = server.get(server.kind("coordination.k8s.io", "v1", "leases"), "default", "epp")
        assert lease is not None and lease["spec"]["holderIdentity"] == "a"
        await until(lambda: b.is_leader, timeout=5, what="b takes over after expiry")
        lease = server.get(server.kind("coordination.k8s.io", "v1", "leases"), "default", "epp")
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "b"
        assert lease["spec"]["leaseTransitions"] == 1
        # a graceful release hands over at once to a waiting peer
        run_a = asyncio.create_task(a.run())
        await asyncio.sleep(0.3)
        assert not a.is_leader
        await stop(run_b)  # shutdown: stop campaigning, then hand the lease back
        await b.release()
        await until(lambda: a.is_leader, timeout=0.6, what="a takes the released lease")
    finally:
        await stop(run_a)
        await stop(run_b)


def _fields(settings: LeaderSettings) -> dict[str, Any]:
    return {f: getattr(settings, f) for f in settings.__slots__}


async def test_status_conditions_written_by_the_leader_only(
    api: KubeApi, server: ApiServer
) -> None:
    server.put(seed_pool())
    server.put(pod("vllm-0", "10.0.0.1"))
    server.put(seed_model("llama2-7b-chat"))
    server.put(seed_model("llama2-copy"))  # same modelName, younger: ModelNameInUse
    server.put(seed_model("orphan", pool="missing") | {"spec": {"poolRef": {"name": "missing"}}})
    server.put(
        {
            "apiVersion": "inference.networking.k8s.io/v1",
            "kind": "InferencePool",
            "metadata": {"name": "upstream", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "up"}},
                "targetPorts": [{"number": 8000}],
                "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
            },
            "status": {"parents": [{"parentRef": {"name": "other-gw"}, "conditions": []}]},
        }
    )
    source = KubeSource(api, SourceConfig(watch=FAST))
    follower = LeaderElector(api, QUICK_LEASE)
    # someone else holds the lease: this replica must not write
    server.put({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "epp", "namespace": "default"},
                "spec": {"holderIdentity": "someone", "leaseDurationSeconds": 1}})  # fmt: skip
    controller = KubeController(source, follower, StatusWriter(api, ParentRef("gw")), None, 5)
    running = asyncio.create_task(controller.run())
    try:
        await asyncio.sleep(0.4)
        pool = server.get(SEED_POOLS_KEY, "default", "llama2-pool")
        assert pool is not None and "status" not in pool
        # the holder stops renewing; this replica takes over and writes
        await until(lambda: follower.is_leader, timeout=5, what="leadership")
        await until(lambda: controller.passes > 0, what="a leader pass")
        await until(lambda: conditions(server.get(SEED_POOLS_KEY, "default", "llama2-pool")))
        pool = server.get(SEED_POOLS_KEY, "default", "llama2-pool")
        assert conditions(pool) == {"Accepted": ("True", "Accepted"),
                                    "ResolvedRefs": ("True", "ResolvedRefs")}  # fmt: skip
        assert pool is not None and pool["status"]["readyReplicas"] == 1
        models = {n: conditions(server.get(SEED_MODELS_KEY, "default", n))
                  for n in ("llama2-7b-chat", "llama2-copy", "orphan")}  # fmt: skip
        assert models == {
            "llama2-7b-chat": {"Accepted": ("True", "Accepted")},
            "llama2-copy": {"Accepted": ("False", "ModelNameInUse")},
            "orphan": {"Accepted": ("False", "PoolNotFound")},
        }
        up = server.get(V1_POOLS_KEY, "default", "upstream")
        assert up is not None
        parents = {p["parentRef"]["name"]: p for p in up["status"]["parents"]}
        assert set(parents) == {"other-gw", "gw"}  # another parent's entry is kept
        assert {c["type"]: c["status"] for c in parents["gw"]["conditions"]} == {
            "Accepted": "True", "ResolvedRefs": "True"}  # fmt: skip
        # the status of a spec edit follows; an unchanged condition keeps its transition time
        stamp = pool["status"]["conditions"][0]["lastTransitionTime"]
        server.delete(server.kind(*SEED_MODELS_KEY), "default", "llama2-7b-chat")
        await until(
            lambda: (
                conditions(server.get(SEED_MODELS_KEY, "default", "llama2-copy"))["Accepted"]
                == ("True", "Accepted")
            ),
            what="the copy wins the name once the original is gone",
        )
        pool = server.get(SEED_POOLS_KEY, "default", "llama2-pool")
        assert pool is not None and pool["status"]["conditions"][0]["lastTransitionTime"] == stamp
        # status writes go through the subresource only
        writes = [q for m, q in server.requests if m == "PUT" and "inference" in q]
        assert writes and all(q.endswith("/status") for q in writes)
    finally:
        await stop(running)
        await source.aclose()


SEED_POOLS_KEY = (SEED_POOLS.group, SEED_POOLS.version, SEED_POOLS.plural)
SEED_MODELS_KEY = (SEED_MODELS.group, SEED_MODELS.version, SEED_MODELS.plural)
V1_POOLS_KEY = (V1_POOLS.group, V1_POOLS.version, V1_POOLS.plural)
DEPLOY_KEY = ("apps", "v1", "deployments")


async def test_seed_pool_deployment_created_scaled_updated_deleted(
    api: KubeApi, server: ApiServer
) -> None:
    pool = server.put(seed_pool(replicas=2))
    source = KubeSource(api, SourceConfig(watch=FAST, watch_nodes=False))
    controller = KubeController(source, None, None, DeploymentReconciler(api), period=0.3)
    running = asyncio.create_task(controller.run())
    try:
        await until(lambda: server.get(DEPLOY_KEY, "default", "llama2-pool"), what="created")
        dep = server.get(DEPLOY_KEY, "default", "llama2-pool")
        assert dep is not None
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector == {"app": "vllm", "inference.networking.x-k8s.io/pool": "llama2-pool"}
        assert dep["spec"]["replicas"] == 2
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in selector.items())
        (owner,) = dep["metadata"]["ownerReferences"]
        assert owner["uid"] == pool["metadata"]["uid"] and owner["controller"] is True
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert container["env"][0]["value"] == "meta-llama/Llama-2-7b-chat-hf"
        # scale
        scaled = seed_pool(replicas=4)
        server.put(scaled)
        await until(lambda: _replicas(server) == 4, what="scaled to 4")
        # template change (new image) rolls the Deployment
        changed = seed_pool(replicas=4)
        changed["spec"]["deployment"]["template"]["spec"]["containers"][0]["image"] = "vllm:v2"
        server.put(changed)
        await until(lambda: _image(server) == "vllm:v2", what="template updated")
        generation = server.get(DEPLOY_KEY, "default", "llama2-pool")["metadata"]["generation"]  # type: ignore[index]
        assert generation >= 3
        # drift made behind the reconciler's back is undone on the next pass
        dep = server.get(DEPLOY_KEY, "default", "llama2-pool")
        assert dep is not None
        server.put({**dep, "spec": {**dep["spec"], "replicas": 9}})
        assert _replicas(server) == 9
        await until(lambda: _replicas(server) == 4, what="drift undone by the periodic pass")
        # a pod of the Deployment is selected by the pool (labels line up)
        server.put(pod("llama2-pool-abc", "10.0.0.7") | {"metadata": {
            "name": "llama2-pool-abc", "namespace": "default", "labels": labels,
            "ownerReferences": [{"uid": dep["metadata"]["uid"], "kind": "Deployment",
                                 "name": "llama2-pool", "apiVersion": "apps/v1"}]}})  # fmt: skip
        await until(lambda: any(p.name == "llama2-pool-abc" for p in source.current().pods))
        # delete the pool: the Deployment (and its pods) go by ownerReference cascade
        server.delete(server.kind(*SEED_POOLS_KEY), "default", "llama2-pool")
        assert server.get(DEPLOY_KEY, "default", "llama2-pool") is None
        assert server.get(("", "v1", "pods"), "default", "llama2-pool-abc") is None
        await asyncio.sleep(0.3)
        assert server.get(DEPLOY_KEY, "default", "llama2-pool") is None  # not recreated
    finally:
        await stop(running)
        await source.aclose()


async def test_unowned_deployment_is_left_alone(api: KubeApi, server: ApiServer) -> None:
    server.put({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "llama2-pool", "namespace": "default"},
                "spec": {"replicas": 7}})  # fmt: skip
    server.put(seed_pool())
    source = KubeSource(api, SourceConfig(watch=FAST, watch_nodes=False))
    try:
        await source.synced()
        result = await DeploymentReconciler(api).reconcile(source.view())
        assert result.skipped == ("default/llama2-pool",)
        assert _replicas(server) == 7
    finally:
        await source.aclose()


def _replicas(server: ApiServer) -> int | None:
    dep = server.get(DEPLOY_KEY, "default", "llama2-pool")
    return None if dep is None else dep["spec"]["replicas"]


def _image(server: ApiServer) -> str | None:
    dep = server.get(DEPLOY_KEY, "default", "llama2-pool")
    return None if dep is None else dep["spec"]["template"]["spec"]["containers"][0]["image"]


async def test_operator_program_runs_leads_writes_and_releases(server: ApiServer) -> None:
    from epp.kube.flags import config_from_args
    from epp.kube.main import operate, parser

    server.put(seed_pool(replicas=1))
    args = parser().parse_args(
        ["--kube-api", server.url, "--lease-name", "ops", "--status-parent", "gw", "--no-nodes"]
    )
    stop_event = asyncio.Event()
    running = asyncio.create_task(operate(config_from_args(args), stop_event))
    try:
        await until(lambda: server.get(DEPLOY_KEY, "default", "llama2-pool"), what="deployment")
        await until(
            lambda: conditions(server.get(SEED_POOLS_KEY, "default", "llama2-pool")),
            what="pool status",
        )
        lease = server.get(("coordination.k8s.io", "v1", "leases"), "default", "ops")
        assert lease is not None and lease["spec"]["holderIdentity"]
    finally:
        stop_event.set()
        await asyncio.wait_for(running, 5)
    lease = server.get(("coordination.k8s.io", "v1", "leases"), "default", "ops")
    assert lease is not None and lease["spec"]["holderIdentity"] == ""  # handed back
