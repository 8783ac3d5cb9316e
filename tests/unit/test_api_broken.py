"""Broken manifests, one per row: each must be rejected with a problem naming the exact field."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from epp.api.load import MAX_FILE_BYTES, load_paths
from epp.api.parse import parse_documents

DELETE = object()

SEED_POOL: dict[str, Any] = {
    "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
    "kind": "InferencePool",
    "metadata": {"name": "pool-a"},
    "spec": {
        "deployment": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "image": "vllm/vllm-openai:latest",
                            "resources": {"limits": {"nvidia.com/gpu": 1, "memory": "16Gi"}},
                            "env": [
                                {"name": "MODEL_NAME", "value": "m"},
                                {"name": "GPU_MEMORY_UTILIZATION", "value": "0.9"},
                            ],
                        }
                    ]
                }
            },
        }
    },
}
SEED_MODEL: dict[str, Any] = {
    "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": "model-a"},
    "spec": {
        "poolRef": {"name": "pool-a"},
        "routing": {
            "priority": "high",
            "loadBalancing": {
                "strategy": "gpu-aware",
                "metrics": [{"name": "gpu_utilization", "target": 80}],
            },
            "trafficSplit": [
                {"weight": 90, "version": "stable", "poolRef": {"name": "pool-a"}},
                {"weight": 10, "version": "canary", "poolRef": {"name": "pool-a"}},
            ],
        },
    },
}
A2_POOL: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferencePool",
    "metadata": {"name": "pool-b"},
    "spec": {
        "selector": {"app": "b"},
        "targetPortNumber": 8000,
        "extensionRef": {"name": "epp", "failureMode": "FailOpen"},
    },
}
A2_MODEL: dict[str, Any] = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferenceModel",
    "metadata": {"name": "model-b"},
    "spec": {
        "modelName": "food-review",
        "criticality": "Critical",
        "poolRef": {"name": "pool-b"},
        "targetModels": [{"name": "a", "weight": 1}, {"name": "b", "weight": 2}],
    },
}
V1_POOL: dict[str, Any] = {
    "apiVersion": "inference.networking.k8s.io/v1",
    "kind": "InferencePool",
    "metadata": {"name": "pool-c"},
    "spec": {
        "selector": {"matchLabels": {"app": "c"}},
        "targetPorts": [{"number": 8000}],
        "endpointPickerRef": {"name": "epp", "port": {"number": 9002}},
    },
}
PRIORITY_FILTER: dict[str, Any] = {
    "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
    "kind": "PriorityFilter",
    "metadata": {"name": "inference-priority"},
    "spec": {"headerName": "x-request-priority", "defaultPriority": "medium"},
}
BASES = {"seed-pool": SEED_POOL, "seed-model": SEED_MODEL, "a2-pool": A2_POOL}
BASES |= {"a2-model": A2_MODEL, "v1-pool": V1_POOL, "filter": PRIORITY_FILTER}

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
CONTAINER = "spec.deployment.template.spec.containers[0]"


def edit(base: str, path: str, value: object) -> dict[str, Any]:
    doc = copy.deepcopy(BASES[base])
    steps: list[str | int] = [
        int(m.group(2)) if m.group(2) else m.group(1) for m in _STEP.finditer(path)
    ]
    target: Any = doc
    for step in steps[:-1]:
        target = target[step]
    if value is DELETE:
        del target[steps[-1]]
    elif isinstance(target, list) and steps[-1] == len(target):
        target.append(value)
    else:
        target[steps[-1]] = value
    return doc


def with_pools(*docs: dict[str, Any]) -> list[dict[str, Any]]:
    return [SEED_POOL, A2_POOL, *docs]


# (id, documents, exact path, fragment of the message)
CASES: list[tuple[str, list[dict[str, Any]], str, str]] = [
    (
        "weight too big",
        with_pools(edit("seed-model", "spec.routing.trafficSplit[1].weight", 2_000_000)),
        "spec.routing.trafficSplit[1].weight",
        "must be 0..1000000",
    ),
    (
        "weight negative",
        with_pools(edit("seed-model", "spec.routing.trafficSplit[0].weight", -1)),
        "spec.routing.trafficSplit[0].weight",
        "must be 0..1000000",
    ),
    (
        "weight string",
        with_pools(edit("seed-model", "spec.routing.trafficSplit[1].weight", "10")),
        "spec.routing.trafficSplit[1].weight",
        "must be an integer, got string",
    ),
    (
        "weight missing",
        with_pools(edit("seed-model", "spec.routing.trafficSplit[0].weight", DELETE)),
        "spec.routing.trafficSplit[0].weight",
        "required",
    ),
    (
        "all weights zero",
        with_pools(
            edit(
                "seed-model",
                "spec.routing.trafficSplit",
                [{"weight": 0, "poolRef": {"name": "pool-a"}}, {"weight": 0}],
            )
        ),
        "spec.routing.trafficSplit",
        "at least one weight",
    ),
    (
        "split unknown field",
        with_pools(edit("seed-model", "spec.routing.trafficSplit[1].wieght", 1)),
        "spec.routing.trafficSplit[1].wieght",
        "unknown field",
    ),
    (
        "split version number",
        with_pools(edit("seed-model", "spec.routing.trafficSplit[0].version", 1.0)),
        "spec.routing.trafficSplit[0].version",
        "must be a string, got number",
    ),
    (
        "too many splits",
        with_pools(edit("seed-model", "spec.routing.trafficSplit", [{"weight": 1}] * 17)),
        "spec.routing.trafficSplit",
        "at most 16",
    ),
    (
        "bad priority",
        with_pools(edit("seed-model", "spec.routing.priority", "urgent")),
        "spec.routing.priority",
        "must be one of high, medium, low",
    ),
    (
        "bad strategy",
        with_pools(edit("seed-model", "spec.routing.loadBalancing.strategy", "fastest")),
        "spec.routing.loadBalancing.strategy",
        "must be one of gpu-aware",
    ),
    (
        "bad metric name",
        with_pools(edit("seed-model", "spec.routing.loadBalancing.metrics[0].name", "cpu")),
        "spec.routing.loadBalancing.metrics[0].name",
        "gpu_utilization, memory_utilization",
    ),
    (
        "metric target over 100",
        with_pools(edit("seed-model", "spec.routing.loadBalancing.metrics[0].target", 120)),
        "spec.routing.loadBalancing.metrics[0].target",
        "must be 0..100",
    ),
    (
        "duplicate metric",
        with_pools(
            edit(
                "seed-model",
                "spec.routing.loadBalancing.metrics[1]",
                {"name": "gpu_utilization", "target": 5},
            )
        ),
        "spec.routing.loadBalancing.metrics[1].name",
        "duplicate metric",
    ),
    (
        "routing typo",
        with_pools(edit("seed-model", "spec.routing.loadbalancing", {})),
        "spec.routing.loadbalancing",
        "unknown field",
    ),
    (
        "pool ref missing",
        [edit("seed-model", "spec.poolRef.name", "nope")],
        "spec.poolRef.name",
        "default/nope not found",
    ),
    (
        "poolRef not an object",
        with_pools(edit("seed-model", "spec.poolRef", "pool-a")),
        "spec.poolRef",
        "must be an object, got string",
    ),
    (
        "poolRef wrong kind",
        with_pools(edit("seed-model", "spec.poolRef.kind", "Service")),
        "spec.poolRef.kind",
        "must be one of InferencePool",
    ),
    (
        "every split pool missing",
        with_pools(
            edit(
                "seed-model",
                "spec.routing.trafficSplit",
                [{"weight": 5, "poolRef": {"name": "x"}}, {"weight": 5, "poolRef": {"name": "y"}}],
            )
        ),
        "spec.routing.trafficSplit",
        "no split entry points at an existing pool",
    ),
    (
        "duplicate model name",
        with_pools(
            edit("seed-model", "metadata.creationTimestamp", "2025-01-02T00:00:00Z"),
            edit("a2-model", "spec.modelName", "model-a"),
        ),
        "spec.modelName",
        "already claimed by InferenceModel default/model-a",
    ),
    (
        "replicas negative",
        [edit("seed-pool", "spec.deployment.replicas", -1)],
        "spec.deployment.replicas",
        "must be 0..1024",
    ),
    (
        "replicas boolean",
        [edit("seed-pool", "spec.deployment.replicas", True)],
        "spec.deployment.replicas",
        "must be an integer, got boolean",
    ),
    (
        "no template",
        [edit("seed-pool", "spec.deployment.template", DELETE)],
        "spec.deployment.template",
        "required",
    ),
    (
        "no containers",
        [edit("seed-pool", "spec.deployment.template.spec.containers", [])],
        "spec.deployment.template.spec.containers",
        "at least 1",
    ),
    (
        "gpu fraction",
        [edit("seed-pool", f"{CONTAINER}.resources.limits", {"nvidia.com/gpu": "0.5"})],
        f'{CONTAINER}.resources.limits["nvidia.com/gpu"]',
        "whole number of GPUs",
    ),
    (
        "bad quantity",
        [edit("seed-pool", f"{CONTAINER}.resources.limits.memory", "lots")],
        f"{CONTAINER}.resources.limits.memory",
        "must be a quantity",
    ),
    (
        "gpu memory utilization",
        [edit("seed-pool", f"{CONTAINER}.env[1].value", "1.5")],
        f"{CONTAINER}.env[1].value",
        "GPU_MEMORY_UTILIZATION must be in (0, 1]",
    ),
    (
        "env value not string",
        [edit("seed-pool", f"{CONTAINER}.env[1].value", 0.9)],
        f"{CONTAINER}.env[1].value",
        "must be a string, got number",
    ),
    (
        "container typo",
        [edit("seed-pool", f"{CONTAINER}.resource", {})],
        f"{CONTAINER}.resource",
        "unknown field",
    ),
    (
        "pod spec typo",
        [edit("seed-pool", "spec.deployment.template.spec.nodeSelecter", {})],
        "spec.deployment.template.spec.nodeSelecter",
        "unknown field",
    ),
    (
        "container port range",
        [edit("seed-pool", f"{CONTAINER}.ports", [{"containerPort": 70000}])],
        f"{CONTAINER}.ports[0].containerPort",
        "must be 1..65535",
    ),
    (
        "seed pool bad failureMode",
        [edit("seed-pool", "spec.failureMode", "Open")],
        "spec.failureMode",
        "must be one of FailOpen, FailClose",
    ),
    (
        "pool name invalid",
        [edit("seed-pool", "metadata.name", "Pool_A")],
        "metadata.name",
        "DNS subdomain",
    ),
    ("metadata missing", [edit("seed-pool", "metadata", DELETE)], "metadata", "required"),
    (
        "metadata typo",
        [edit("seed-pool", "metadata.lables", {})],
        "metadata.lables",
        "unknown field",
    ),
    (
        "bad label value",
        [edit("seed-pool", "spec.deployment.template.metadata", {"labels": {"a": "b c"}})],
        "spec.deployment.template.metadata.labels.a",
        "at most 63 alphanumerics",
    ),
    (
        "bad timestamp",
        [edit("seed-pool", "metadata.creationTimestamp", "yesterday")],
        "metadata.creationTimestamp",
        "RFC 3339",
    ),
    ("spec missing", [edit("seed-pool", "spec", DELETE)], "spec", "required"),
    ("top-level typo", [edit("seed-pool", "sepc", {})], "sepc", "unknown field"),
    ("kind missing", [edit("seed-pool", "kind", DELETE)], "kind", "required"),
    (
        "unsupported version",
        [edit("seed-pool", "apiVersion", "inference.networking.k8s.io/v2")],
        "apiVersion",
        "InferencePool is served as",
    ),
    (
        "a2 criticality",
        [*with_pools(), edit("a2-model", "spec.criticality", "critical")],
        "spec.criticality",
        "Critical, Standard, Sheddable",
    ),
    (
        "a2 weights on some",
        [*with_pools(), edit("a2-model", "spec.targetModels[1].weight", DELETE)],
        "spec.targetModels",
        "on all targets or on none",
    ),
    (
        "a2 weight zero",
        [*with_pools(), edit("a2-model", "spec.targetModels[0].weight", 0)],
        "spec.targetModels[0].weight",
        "must be 1..1000000",
    ),
    (
        "a2 modelName missing",
        [*with_pools(), edit("a2-model", "spec.modelName", DELETE)],
        "spec.modelName",
        "required",
    ),
    (
        "a2 modelName too long",
        [*with_pools(), edit("a2-model", "spec.modelName", "m" * 257)],
        "spec.modelName",
        "length must be 1..256",
    ),
    (
        "a2 too many targets",
        [*with_pools(), edit("a2-model", "spec.targetModels", [{"name": "x"}] * 11)],
        "spec.targetModels",
        "at most 10",
    ),
    (
        "a2 pool port",
        [edit("a2-pool", "spec.targetPortNumber", 0)],
        "spec.targetPortNumber",
        "1..65535",
    ),
    (
        "a2 pool selector empty",
        [edit("a2-pool", "spec.selector", {})],
        "spec.selector",
        "at least 1",
    ),
    (
        "a2 pool failureMode",
        [edit("a2-pool", "spec.extensionRef.failureMode", "open")],
        "spec.extensionRef.failureMode",
        "FailOpen, FailClose",
    ),
    (
        "a2 pool no extensionRef",
        [edit("a2-pool", "spec.extensionRef", DELETE)],
        "spec.extensionRef",
        "required",
    ),
    (
        "v1 duplicate ports",
        [edit("v1-pool", "spec.targetPorts[1]", {"number": 8000})],
        "spec.targetPorts[1].number",
        "duplicate port 8000",
    ),
    (
        "v1 too many ports",
        [edit("v1-pool", "spec.targetPorts", [{"number": n} for n in range(1, 10)])],
        "spec.targetPorts",
        "at most 8",
    ),
    ("v1 no ports", [edit("v1-pool", "spec.targetPorts", [])], "spec.targetPorts", "at least 1"),
    (
        "v1 selector flat",
        [edit("v1-pool", "spec.selector", {"app": "c"})],
        "spec.selector.app",
        "unknown field",
    ),
    (
        "v1 picker port missing",
        [edit("v1-pool", "spec.endpointPickerRef.port", DELETE)],
        "spec.endpointPickerRef.port",
        "required",
    ),
    (
        "v1 bad appProtocol",
        [edit("v1-pool", "spec.appProtocol", "h2")],
        "spec.appProtocol",
        "http, kubernetes.io/h2c",
    ),
    (
        "v1 bad label key",
        [edit("v1-pool", "spec.selector.matchLabels", {"bad key!": "x"})],
        'spec.selector.matchLabels["bad key!"]',
        "key name must be",
    ),
    ("duplicate pool", [SEED_POOL, SEED_POOL], "metadata.name", "duplicate of"),
    (
        "seed pool name too long for its label",
        [edit("seed-pool", "metadata.name", "p" * 64)],
        "metadata.name",
        "at most 63 characters",
    ),
    (
        "template claims another pool",
        [
            edit(
                "seed-pool",
                "spec.deployment.template.metadata",
                {"labels": {"inference.networking.x-k8s.io/pool": "other"}},
            )
        ],
        'spec.deployment.template.metadata.labels["inference.networking.x-k8s.io/pool"]',
        "must be 'pool-a' or absent",
    ),
    (
        "filter bad priority",
        [edit("filter", "spec.defaultPriority", "urgent")],
        "spec.defaultPriority",
        "must be one of high, medium, low",
    ),
    (
        "filter bad header",
        [edit("filter", "spec.headerName", "x priority")],
        "spec.headerName",
        "an HTTP header name",
    ),
    (
        "filter override not boolean",
        [edit("filter", "spec.allowClientOverride", "yes")],
        "spec.allowClientOverride",
        "must be a boolean, got string",
    ),
]


@pytest.mark.parametrize(
    ("docs", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_broken_manifest_names_the_field(
    docs: list[dict[str, Any]], path: str, fragment: str
) -> None:
    result = parse_documents((f"case.yaml#{i + 1}", doc) for i, doc in enumerate(docs))
    errors = [p for p in result.problems if p.severity == "error"]
    assert errors, "the manifest was accepted"
    assert errors[0].path == path, [str(p) for p in errors]
    assert fragment in errors[0].message
    assert str(errors[0]).startswith("case.yaml#")


def test_rejected_resources_are_left_out() -> None:
    bad = edit("seed-model", "spec.routing.priority", "urgent")
    result = parse_documents([("a#1", SEED_POOL), ("a#2", bad)])
    assert [p.name for p in result.pools] == ["pool-a"]
    assert result.models == ()


ALIAS_BOMB = "\n".join(
    ["a0: &a0 [x, x]"]
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 20)]
).encode()

FILE_CASES: list[tuple[str, bytes, str, str, str]] = [
    ("alias bomb", ALIAS_BOMB, "error", "line 13, column 18", "more than 100 aliases"),
    (
        "syntax error",
        b"kind: InferencePool\nspec: [unclosed\n",
        "error",
        "line 3, column 1",
        "YAML syntax error",
    ),
    ("bad indentation", b"a:\n  b: 1\n c: 2\n", "error", "line 3, column 2", "YAML syntax error"),
    ("tab indentation", b"a:\n\tb: 1\n", "error", "line 2, column 1", "YAML syntax error"),
    (
        "duplicate key",
        b"apiVersion: v1\nkind: Pod\nkind: Pod\n",
        "error",
        "line 3, column 1",
        "duplicate key",
    ),
    ("empty file", b"", "warning", "(file)", "no documents"),
    ("only comments", b"# nothing\n---\n", "warning", "(file)", "no documents"),
    ("not utf-8", b"kind: \xff\xfe\n", "error", "(file)", "not UTF-8"),
    ("scalar document", b"just a string\n", "error", "(document)", "must be an object, got string"),
    ("list document", b"- a\n- b\n", "error", "(document)", "must be an object, got array"),
]


@pytest.mark.parametrize(
    ("data", "severity", "path", "fragment"),
    [c[1:] for c in FILE_CASES],
    ids=[c[0] for c in FILE_CASES],
)
def test_broken_file_names_the_place(
    tmp_path: Path, data: bytes, severity: str, path: str, fragment: str
) -> None:
    target = tmp_path / "broken.yaml"
    target.write_bytes(data)
    problems = load_paths([tmp_path]).problems
    assert [(p.severity, p.path) for p in problems] == [(severity, path)], [
        str(p) for p in problems
    ]
    assert fragment in problems[0].message
    assert problems[0].source.startswith(str(target))


def test_json_syntax_error(tmp_path: Path) -> None:
    (tmp_path / "pool.json").write_text('{"apiVersion": "v1",\n "kind": }')
    (problem,) = load_paths([tmp_path]).problems
    assert (problem.path, problem.severity) == ("line 2, column 10", "error")
    assert "JSON syntax error" in problem.message


def test_huge_file_is_refused_unread(tmp_path: Path) -> None:
    target = tmp_path / "huge.yaml"
    with target.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    (problem,) = load_paths([target]).problems
    assert problem.path == "(file)"
    assert f"the limit is {MAX_FILE_BYTES}" in problem.message


def test_missing_path(tmp_path: Path) -> None:
    (problem,) = load_paths([tmp_path / "nope"]).problems
    assert (problem.path, problem.message) == ("(file)", "no such file or folder")


def test_unknown_kind_is_a_warning() -> None:
    doc = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}}
    (problem,) = parse_documents([("a#1", doc)]).problems
    assert (problem.severity, problem.path, problem.reason) == ("warning", "kind", "UnknownKind")


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    (tmp_path / "pools.yaml").write_text(
        "apiVersion: v1\n"
        "kind: List\n"
        "items:\n"
        "- apiVersion: inference.networking.x-k8s.io/v1alpha2\n"
        "  kind: InferencePool\n"
        "  metadata: {name: p1}\n"
        "  spec: &spec\n"
        "    selector: {app: x}\n"
        "    targetPortNumber: 8000\n"
        "    extensionRef: {name: epp}\n"
        "- apiVersion: inference.networking.x-k8s.io/v1alpha2\n"
        "  kind: InferencePool\n"
        "  metadata: {name: p2}\n"
        "  spec:\n"
        "    <<: *spec\n"
        "    targetPortNumber: 8001\n"
    )
    result = load_paths([tmp_path])
    assert result.problems == ()
    assert [(p.name, p.target_ports) for p in result.pools] == [("p1", (8000,)), ("p2", (8001,))]
