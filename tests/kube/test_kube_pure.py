"""The pure parts of Kubernetes mode: paths, desired Deployments, status conditions."""

from __future__ import annotations

from typing import Any

from epp.api.parse import parse_documents
from epp.kube.client import NODES, PODS, SEED_POOLS, V1_POOLS
from epp.kube.deployments import HASH_ANNOTATION, desired_deployment
from epp.kube.source import KubeView, accelerator_of, label_of
from epp.kube.status import ParentRef, desired_status
from tests.kube.objects import POOL_LABEL, seed_model, seed_pool


def test_resource_paths() -> None:
    assert PODS.path() == "/api/v1/pods"
    assert PODS.path("ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert NODES.path("ignored", "n") == "/api/v1/nodes/n"
    assert SEED_POOLS.path("ns", "x", "status") == (
        "/apis/gateway.networking.x-k8s.io/v1alpha1/namespaces/ns/inferencepools/x/status"
    )


def test_accelerator_label_order() -> None:
    assert accelerator_of({"accelerator": "nvidia-tesla-v100"}) == "nvidia-tesla-v100"
    assert accelerator_of({"nvidia.com/gpu.product": "H100"}) == "H100"
    assert accelerator_of({"kubernetes.io/os": "linux"}) is None


def _view(*objs: tuple[Any, dict[str, Any]]) -> KubeView:
    resources = parse_documents([(label_of(kind, obj), obj) for kind, obj in objs])
    return KubeView(resources, tuple(objs), False)


def test_desired_deployment_matches_the_pool_selector_and_owner() -> None:
    raw = seed_pool(replicas=3)
    raw["metadata"]["uid"] = "u-1"
    view = _view((SEED_POOLS, raw))
    (pool,) = view.resources.pools
    dep = desired_deployment(pool, raw)
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {"app": "vllm", POOL_LABEL: "llama2-pool"} == dict(pool.selector)
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["spec"]["replicas"] == 3
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    changed = seed_pool(replicas=3)
    changed["spec"]["deployment"]["template"]["spec"]["containers"][0]["image"] = "other"
    (other,) = _view((SEED_POOLS, changed)).resources.pools
    hashes = {
        d["metadata"]["annotations"][HASH_ANNOTATION]
        for d in (dep, desired_deployment(other, changed))
    }
    assert len(hashes) == 2  # a template change changes the hash; replicas alone do not


def test_status_keeps_transition_time_and_other_parents() -> None:
    from epp.kube.client import SEED_MODELS

    pool = seed_pool()
    model = seed_model("m")
    view = _view((SEED_POOLS, pool), (SEED_MODELS, model))
    first = {path: status for path, _, status in desired_status(view, ParentRef(), "T1")}
    pool_status = next(s for p, s in first.items() if "inferencepools" in p)
    assert [c["lastTransitionTime"] for c in pool_status["conditions"]] == ["T1", "T1"]
    pool["status"] = pool_status
    model["status"] = next(s for p, s in first.items() if "inferencemodels" in p)
    assert desired_status(_view((SEED_POOLS, pool), (SEED_MODELS, model)), ParentRef(), "T2") == []
    upstream = {
        "apiVersion": "inference.networking.k8s.io/v1",
        "kind": "InferencePool",
        "metadata": {"name": "up", "namespace": "default", "generation": 4},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 8000}],
                 "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}},
        "status": {"parents": [{"parentRef": {"name": "theirs"}}]},
    }  # fmt: skip
    ((_, _, status),) = desired_status(_view((V1_POOLS, upstream)), ParentRef("ours"), "T3")
    names = [p["parentRef"]["name"] for p in status["parents"]]
    assert names == ["theirs", "ours"]
    ours = status["parents"][1]
    assert ours["controllerName"] and ours["conditions"][0]["observedGeneration"] == 4
