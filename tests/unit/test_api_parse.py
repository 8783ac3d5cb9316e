"""Every shape means the same thing inside: seed, upstream v1alpha2 and v1 into one model."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

from epp.api.load import load_paths
from epp.api.model import ExtensionRef, MetricCeiling, SplitTarget
from epp.api.parse import parse_documents, parse_one
from tests.unit.test_api_broken import A2_MODEL, A2_POOL, SEED_MODEL, SEED_POOL, V1_POOL, edit

ROOT = Path(__file__).resolve().parents[2]


def parse(*docs: dict[str, Any]) -> Any:
    return parse_documents((f"t#{i + 1}", d) for i, d in enumerate(docs))


def test_seed_example_means_what_the_design_says() -> None:
    result = load_paths([ROOT / "examples" / "seed"])
    (pool,) = result.pools
    assert pool.key == "default/llama2-gpu-pool"
    assert pool.selector == (("inference.networking.x-k8s.io/pool", "llama2-gpu-pool"),)
    assert pool.target_ports == (8000,)
    assert pool.failure_mode == "FailClose"
    assert pool.deployment is not None
    assert pool.deployment.replicas == 3
    assert pool.served_model == "meta-llama/Llama-2-7b-chat-hf"
    assert pool.deployment.gpu_memory_utilization == 0.9
    assert pool.deployment.accelerator == "nvidia-tesla-v100"
    assert pool.deployment.gpus_per_pod == 1
    assert pool.deployment.image == "vllm/vllm-openai:latest"
    (model,) = result.models
    assert (model.model_name, model.pool, model.priority) == (
        "llama2-7b-chat",
        "default/llama2-gpu-pool",
        1,
    )
    assert model.strategy == "gpu-aware"
    assert model.ceilings == (
        MetricCeiling("gpu_utilization", 80.0),
        MetricCeiling("memory_utilization", 85.0),
    )
    # the canary pool is missing: its entry is dropped and reported, the stable one stays
    assert model.splits == (SplitTarget(90, "default/llama2-gpu-pool", None, "stable"),)
    # and the seed's HTTPRoute names a PriorityFilter the seed never defines
    assert [(p.severity, p.reason, p.path) for p in result.problems] == [
        ("warning", "PoolNotFound", "spec.routing.trafficSplit[1].poolRef.name"),
        ("warning", "FilterNotFound", "spec.rules[0].filters[0].extensionRef.name"),
    ]
    assert {o["kind"] for o in result.other} == {"Gateway", "HTTPRoute", "ServiceMonitor"}


def test_canary_example_keeps_both_splits() -> None:
    result = load_paths([ROOT / "examples" / "canary"])
    assert not result.problems
    (model,) = result.models
    assert [(s.pool, s.weight) for s in model.splits] == [
        ("default/llama2-gpu-pool", 90),
        ("default/llama2-gpu-pool-canary", 10),
    ]
    canary = next(p for p in result.pools if p.name == "llama2-gpu-pool-canary")
    assert canary.deployment is not None and canary.deployment.replicas == 1
    assert ("version", "canary") in canary.selector


def test_seed_defaults() -> None:
    pool_doc = edit("seed-pool", "spec.deployment.replicas", 0)
    pool_doc["spec"]["deployment"]["template"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": 9000}
    ]
    model_doc = edit("seed-model", "spec.routing", {"priority": "low"})
    result = parse(pool_doc, model_doc, edit("seed-model", "metadata.name", "other"))
    assert result.pools[0].deployment.replicas == 0
    assert result.pools[0].target_ports == (9000,)
    low, plain = result.models
    assert (low.priority, low.strategy, low.splits) == (-1, "gpu-aware", ())
    assert plain.model_name == "other"
    without = parse(edit("seed-pool", "spec.deployment.replicas", None))
    assert without.pools[0].deployment.replicas == 1


def test_seed_model_name_and_medium_priority() -> None:
    doc = edit("seed-model", "spec.modelName", "served-name")
    doc["spec"]["routing"]["priority"] = "medium"
    (model,) = parse(SEED_POOL, doc).models
    assert (model.name, model.model_name, model.priority) == ("model-a", "served-name", 0)


def test_upstream_v1alpha2() -> None:
    result = parse(A2_POOL, A2_MODEL, SEED_POOL)
    pool = next(p for p in result.pools if p.name == "pool-b")
    assert pool.selector == (("app", "b"),)
    assert pool.target_ports == (8000,)
    assert pool.failure_mode == "FailOpen"
    assert pool.extension_ref == ExtensionRef("epp", 9002, "", "Service")
    assert pool.deployment is None
    (model,) = result.models
    assert (model.model_name, model.priority, model.pool) == ("food-review", 1, "default/pool-b")
    assert model.splits == (SplitTarget(1, None, "a"), SplitTarget(2, None, "b"))


def test_upstream_criticality_and_equal_weights() -> None:
    sheddable = edit("a2-model", "spec.criticality", "Sheddable")
    sheddable["spec"]["targetModels"] = [{"name": "a"}, {"name": "b"}]
    (model,) = parse(A2_POOL, sheddable).models
    assert model.priority == -1
    assert [s.weight for s in model.splits] == [1, 1]
    (plain,) = parse(A2_POOL, edit("a2-model", "spec.criticality", None)).models
    assert plain.priority == 0


def test_upstream_v1() -> None:
    doc = edit("v1-pool", "spec.targetPorts[1]", {"number": 8001})
    doc["spec"]["endpointPickerRef"]["failureMode"] = "FailOpen"
    doc["spec"]["appProtocol"] = "kubernetes.io/h2c"
    (pool,) = parse(doc).pools
    assert pool.target_ports == (8000, 8001)
    assert pool.selector == (("app", "c"),)
    assert pool.failure_mode == "FailOpen"
    assert pool.app_protocol == "kubernetes.io/h2c"
    assert pool.extension_ref == ExtensionRef("epp", 9002, "", "Service")
    (bare,) = parse(edit("v1-pool", "spec.endpointPickerRef", None)).pools
    assert (bare.extension_ref, bare.failure_mode) == (None, "FailClose")


def test_namespaces_and_timestamps() -> None:
    pool = edit("seed-pool", "metadata.namespace", "ml")
    model = edit("seed-model", "metadata.namespace", "ml")
    model["metadata"]["creationTimestamp"] = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    model["spec"]["routing"].pop("trafficSplit")
    result = parse(pool, model)
    assert result.pools[0].key == "ml/pool-a"
    assert result.models[0].pool == "ml/pool-a"
    assert result.models[0].created_at == "2025-01-02T03:04:05Z"
    # a pool in another namespace is not found
    assert not parse(SEED_POOL, model).models


def test_oldest_claim_wins_whatever_the_order() -> None:
    old = edit("a2-model", "metadata.creationTimestamp", "2024-01-01T00:00:00Z")
    new = edit("a2-model", "metadata.name", "newer")
    new["metadata"]["creationTimestamp"] = "2025-01-01T00:00:00Z"
    result = parse(A2_POOL, new, old)
    assert [m.name for m in result.models] == ["model-b"]
    (problem,) = result.problems
    assert (problem.name, problem.reason, problem.path) == (
        "newer",
        "ModelNameInUse",
        "spec.modelName",
    )
    # without timestamps the first one seen wins
    second = edit("a2-model", "metadata.name", "second")
    assert [m.name for m in parse(A2_POOL, A2_MODEL, second).models] == ["model-b"]


def test_pool_not_found_reason() -> None:
    result = parse(A2_MODEL)
    (problem,) = result.problems
    assert (problem.reason, problem.severity, problem.path) == (
        "PoolNotFound",
        "error",
        "spec.poolRef.name",
    )
    assert not result.models


def test_pods_and_lists() -> None:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p1",
            "labels": {"app": "b"},
            "deletionTimestamp": "2025-01-01T00:00:00Z",
        },
        "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    listing = {"apiVersion": "v1", "kind": "List", "items": [pod, A2_POOL]}
    result = parse(listing)
    (info,) = result.pods
    assert (info.key, info.ip, info.ready, info.node_name, info.deleting) == (
        "default/p1",
        "10.0.0.1",
        True,
        "n1",
        True,
    )
    assert info.labels == (("app", "b"),)
    assert [p.name for p in result.pools] == ["pool-b"]
    not_ready = copy.deepcopy(pod)
    not_ready["status"]["conditions"][0]["status"] = "False"
    assert parse_one("x", not_ready).problems == ()
    assert parse(not_ready).pods[0].ready is False


def test_a_pod_spec_tells_the_servers_batch_size() -> None:
    def pod_with(*containers: dict[str, Any]) -> Any:
        doc = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p1"},
            "spec": {"containers": list(containers)},
        }
        return parse(doc).pods[0].max_num_seqs

    assert pod_with({"name": "c", "args": ["--model", "m", "--max-num-seqs", "64"]}) == 64
    assert pod_with({"name": "c", "args": ["--max-num-seqs=32", "--port", "8000"]}) == 32
    shell = {"name": "c", "command": ["sh", "-c", "vllm serve m --max-num-seqs 16 --port 8000"]}
    assert pod_with({"name": "sidecar"}, shell) == 16
    assert pod_with({"name": "c", "args": ["--model", "m"]}) is None  # the server's default
    for broken in (["--max-num-seqs"], ["--max-num-seqs", "0"], ["--max-num-seqs", "many"]):
        assert pod_with({"name": "c", "args": broken}) is None  # learned instead, no error
    assert (
        pod_with({"name": "c", "command": ["sh", "-c", "vllm 'unbalanced --max-num-seqs 8"]}) == 8
    )


def test_other_kinds_are_kept_raw() -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"x": 1},
    }
    assert parse(route).other == (route,)
    broken = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {}}
    (problem,) = parse(broken).problems
    assert problem.path == "metadata.name"


def test_seed_model_mixed_with_upstream_pool() -> None:
    doc = copy.deepcopy(SEED_MODEL)
    doc["spec"] = {
        "poolRef": {"name": "pool-b"},
        "routing": {"loadBalancing": {"strategy": "prefix-cache-aware"}},
    }
    (model,) = parse(A2_POOL, doc, V1_POOL).models
    assert (model.pool, model.strategy) == ("default/pool-b", "prefix-cache-aware")


def test_http_route_references_are_checked() -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"kind": "InferenceModel", "name": "model-a"},
                        {"kind": "InferencePool", "name": "pool-x"},
                        {"kind": "Service", "name": "anything"},
                    ],
                    "filters": [
                        {
                            "type": "ExtensionRef",
                            "extensionRef": {"kind": "PriorityFilter", "name": "pf"},
                        }
                    ],
                }
            ]
        },
    }
    result = parse(SEED_POOL, SEED_MODEL, route)
    assert [(p.reason, p.path) for p in result.problems] == [
        ("BackendNotFound", "spec.rules[0].backendRefs[1].name"),
        ("FilterNotFound", "spec.rules[0].filters[0].extensionRef.name"),
    ]
    assert all(p.severity == "warning" for p in result.problems)
    assert result.other == (route,)
    priority = {
        "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
        "kind": "PriorityFilter",
        "metadata": {"name": "pf"},
        "spec": {"headerName": "x-priority", "defaultPriority": "low"},
    }
    assert len(parse(SEED_POOL, SEED_MODEL, route, priority).problems) == 1
