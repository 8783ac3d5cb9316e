"""deploy/: every manifest passes a schema check and `kubectl apply --dry-run=client`.

kubectl needs API discovery even for a client-side dry run, so it talks to the API emulator
(tests/kube/apiserver.py) through a throwaway kubeconfig; nothing reaches a real cluster.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.kube.apiserver import ApiServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
MANIFESTS = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")

NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
ENVELOPE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata"],
    "properties": {
        "apiVersion": {"type": "string", "minLength": 1},
        "kind": {"type": "string", "pattern": "^[A-Z][A-Za-z]+$"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": NAME}},
    },
}
CONTAINER = {
    "type": "object",
    "required": ["name", "image", "resources", "securityContext"],
    "properties": {
        "resources": {
            "type": "object",
            "required": ["requests", "limits"],
            "properties": {"limits": {"required": ["memory"]}},
        },
        "securityContext": {
            "type": "object",
            "required": ["readOnlyRootFilesystem", "allowPrivilegeEscalation"],
            "properties": {
                "readOnlyRootFilesystem": {"const": True},
                "allowPrivilegeEscalation": {"const": False},
                "capabilities": {"properties": {"drop": {"contains": {"const": "ALL"}}}},
            },
        },
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "properties": {
                    "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "name": {"type": "string", "maxLength": 15},
                },
            },
        },
    },
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Deployment": {
        "required": ["spec"],
        "properties": {
            "apiVersion": {"const": "apps/v1"},
            "spec": {
                "type": "object",
                "required": ["selector", "template"],
                "properties": {
                    "replicas": {"type": "integer", "minimum": 1},
                    "template": {
                        "type": "object",
                        "required": ["metadata", "spec"],
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["containers", "securityContext"],
                                "properties": {
                                    "securityContext": {
                                        "required": ["runAsNonRoot"],
                                        "properties": {"runAsNonRoot": {"const": True}},
                                    },
                                    "containers": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": CONTAINER,
                                    },
                                },
                            }
                        },
                    },
                },
            },
        },
    },
    "Service": {
        "required": ["spec"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "spec": {
                "required": ["selector", "ports"],
                "properties": {
                    "ports": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "required": ["name", "port"],
                            "properties": {"port": {"type": "integer"}},
                        },
                    }
                },
            },
        },
    },
    "ServiceMonitor": {
        "required": ["spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "required": ["selector", "endpoints"],
                "properties": {
                    "endpoints": {"type": "array", "minItems": 1, "items": {"required": ["port"]}}
                },
            },
        },
    },
    "ClusterRole": {"required": ["rules"]},
    "Role": {"required": ["rules"]},
    "CustomResourceDefinition": {
        "required": ["spec"],
        "properties": {
            "spec": {
                "required": ["group", "names", "scope", "versions"],
                "properties": {
                    "versions": {
                        "type": "array",
                        "items": {
                            "required": ["name", "served", "storage", "schema", "subresources"],
                            "properties": {"schema": {"required": ["openAPIV3Schema"]}},
                        },
                    }
                },
            }
        },
    },
}
# What epp.kube does on the API server: (group, resource, verb); RBAC must allow each, no more.
NEEDED = {
    *((g, r, v) for g in ("gateway.networking.x-k8s.io", "inference.networking.x-k8s.io",
                          "inference.networking.k8s.io")
      for r in ("inferencepools", "inferencemodels") for v in ("list", "watch")),
    *((g, f"{r}/status", "update") for g in ("gateway.networking.x-k8s.io",
                                             "inference.networking.x-k8s.io",
                                             "inference.networking.k8s.io")
      for r in ("inferencepools", "inferencemodels")),
    ("", "pods", "list"), ("", "pods", "watch"), ("", "nodes", "list"), ("", "nodes", "watch"),
    *(("resource.k8s.io", r, v)
      for r in ("resourceclaims", "resourceslices", "resourceclasses", "devicetaintrules")
      for v in ("list", "watch")),
    ("apps", "deployments", "get"), ("apps", "deployments", "create"),
    ("apps", "deployments", "update"),
    ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
    ("discovery.k8s.io", "endpointslices", "list"),
}  # fmt: skip


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in documents() if doc["kind"] == kind]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_passes_its_schema(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs
    for doc in docs:
        jsonschema.validate(doc, ENVELOPE)
        jsonschema.validate(doc, {"type": "object", **SCHEMAS.get(doc["kind"], {})})


def test_crd_copies_match_the_source_of_truth() -> None:
    for copy in sorted((DEPLOY / "crds").glob("*.yaml")):
        assert copy.read_bytes() == (ROOT / "crds" / copy.name).read_bytes(), copy.name
    listed = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert {f"crds/{p.name}" for p in (ROOT / "crds").glob("*.yaml")} <= set(listed)
    assert {str(p.relative_to(DEPLOY)) for p in MANIFESTS} == set(listed)


def test_epp_deployment_probes_service_and_account() -> None:
    (epp,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "epp"]
    pod = epp["spec"]["template"]["spec"]
    (box,) = pod["containers"]
    assert box["readinessProbe"]["grpc"] == {"port": 9003, "service": "readiness"}
    assert box["livenessProbe"]["grpc"] == {"port": 9003, "service": "liveness"}
    assert "--kubernetes" in box["args"] and "--leader-elect" in box["args"]
    labels = epp["spec"]["template"]["metadata"]["labels"]
    assert epp["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "epp"]
    assert service["spec"]["selector"].items() <= labels.items()
    ext_proc = next(p for p in service["spec"]["ports"] if p["port"] == 9002)
    assert ext_proc["appProtocol"] == "http2"
    accounts = {s["metadata"]["name"] for s in by_kind("ServiceAccount")}
    assert pod["serviceAccountName"] in accounts
    for binding in by_kind("ClusterRoleBinding") + by_kind("RoleBinding"):
        assert {s["name"] for s in binding["subjects"]} <= accounts


def test_epp_runs_three_replicas_that_find_each_other_and_survive_disruptions() -> None:
    (epp,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "epp"]
    assert epp["spec"]["replicas"] == 3
    assert epp["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = epp["spec"]["template"]["spec"]
    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert {t["podAffinityTerm"]["topologyKey"] for t in terms} >= {"kubernetes.io/hostname"}
    (box,) = pod["containers"]
    args = dict(a.split("=", 1) for a in box["args"] if "=" in a)
    (service,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "epp"]
    assert service["spec"]["clusterIP"] == "None"  # DNS answers with every replica
    assert args["--peer-service"] == service["metadata"]["name"]
    (peers,) = [p for p in service["spec"]["ports"] if p["name"] == "peers"]
    assert peers["protocol"] == "UDP" and int(args["--peer-port"]) == peers["port"]
    assert any(p["name"] == peers["targetPort"] for p in box["ports"])
    drain = float(args["--drain-seconds"])
    assert drain > 1.0  # longer than Envoy's health-check interval
    assert pod["terminationGracePeriodSeconds"] > drain + 5
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        epp["spec"]["template"]["metadata"]["labels"].items()
    )
    assert 0 < pdb["spec"]["minAvailable"] < epp["spec"]["replicas"]


def _grants(roles: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    granted = set()
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            granted |= {
                (g, r, v)
                for g in rule["apiGroups"]
                for r in rule["resources"]
                for v in rule["verbs"]
            }
    return granted


def test_rbac_is_least_privilege_and_enough() -> None:
    roles = by_kind("ClusterRole") + by_kind("Role")
    granted = _grants(roles)
    assert not NEEDED - granted, NEEDED - granted
    assert not {v for _, _, v in granted} & {"delete", "deletecollection", "escalate", "bind"}
    assert not {r for _, r, _ in granted} & {"configmaps"}
    # only the control plane reads Secrets (HTTPS certificates for SDS), and only reads them
    epp_roles = [r for r in roles if "controlplane" not in r["metadata"]["name"]]
    assert not {r for _, r, _ in _grants(epp_roles)} & {"secrets"}
    assert {v for _, r, v in granted if r == "secrets"} == {"get", "list", "watch"}


def test_service_monitors_find_a_named_port() -> None:
    monitors = {m["metadata"]["name"]: m for m in by_kind("ServiceMonitor")}
    assert {"epp", "inference-gpu-metrics"} <= set(monitors)
    assert monitors["inference-gpu-metrics"]["spec"]["selector"]["matchLabels"] == {
        "app": "inference-model"
    }
    services = by_kind("Service")
    want = monitors["epp"]["spec"]["selector"]["matchLabels"]
    (service,) = [s for s in services if want.items() <= s["metadata"]["labels"].items()]
    assert monitors["epp"]["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in service["spec"]["ports"]
    }


@pytest.fixture
async def kubeconfig(tmp_path: Path) -> AsyncIterator[tuple[Path, ApiServer]]:
    server = ApiServer()
    await server.start()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server.url}}],
        "users": [{"name": "test", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
        "current-context": "emulator",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    yield path, server
    await server.stop()


async def kubectl(config: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(config), "--request-timeout=20s", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode()


@pytest.mark.integration
async def test_kubectl_apply_dry_run_client(kubeconfig: tuple[Path, ApiServer]) -> None:
    config, server = kubeconfig
    dry = ("apply", "--dry-run=client", "--validate=false")
    for path in MANIFESTS:
        code, out = await kubectl(config, *dry, "-f", str(path))
        assert code == 0, out
        assert out.count("(dry run)") == len(
            [d for d in yaml.safe_load_all(path.read_text()) if d]
        ), out
    code, out = await kubectl(config, *dry, "-k", str(DEPLOY))
    assert code == 0, out
    assert "deployment.apps/epp created (dry run)" in out
    assert all(m == "GET" for m, _ in server.requests)  # a dry run writes nothing
    assert all(not objs for objs in server.objects.values())
