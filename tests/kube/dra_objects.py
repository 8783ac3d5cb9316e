"""DRA object builders for the Kubernetes-mode tests: slices, claims, taint rules, in the shapes
each API version serves (v1 and betas, v1alpha2 as real clusters had it, and the seed's)."""

from __future__ import annotations

from typing import Any

from tests.kube.objects import pod

DRIVER = "gpu.nvidia.com"
A100 = "NVIDIA A100-SXM4-40GB"


def gpu(name: str, product: str = A100, profile: str | None = None, **extra: Any) -> dict[str, Any]:
    """A device as v1 lists it (attributes under the driver's domain)."""
    attributes: dict[str, Any] = {
        f"{DRIVER}/productName": {"string": product},
        f"{DRIVER}/type": {"string": "mig" if profile else "gpu"},
    }
    if profile:
        attributes[f"{DRIVER}/profile"] = {"string": profile}
    return {"name": name, "attributes": attributes, **extra}


def slice_v1(node: str, devices: list[dict[str, Any]], version: str = "v1") -> dict[str, Any]:
    return {
        "apiVersion": f"resource.k8s.io/{version}",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{DRIVER}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": devices,
        },
    }


def claim_v1(
    name: str,
    devices: list[str],
    pool: str = "gpu-node-1",
    tolerations: list[dict[str, Any]] | None = None,
    ns: str = "default",
) -> dict[str, Any]:
    request: dict[str, Any] = {"deviceClassName": "gpu.nvidia.com"}
    if tolerations:
        request["tolerations"] = tolerations
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": request}]}},
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "gpu", "driver": DRIVER, "pool": pool, "device": d}
                        for d in devices
                    ]
                }
            }
        },
    }


def taint_rule(
    name: str, effect: str, device: str | None = None, version: str = "v1alpha3"
) -> dict[str, Any]:
    selector: dict[str, Any] = {"driver": DRIVER}
    if device:
        selector["device"] = device
    return {
        "apiVersion": f"resource.k8s.io/{version}",
        "kind": "DeviceTaintRule",
        "metadata": {"name": name},
        "spec": {
            "deviceSelector": selector,
            "taint": {"key": "maintenance", "value": "scheduled", "effect": effect},
        },
    }


def claiming_pod(
    name: str, ip: str, claim: str, new_style: bool = True, node: str = "gpu-node-1"
) -> dict[str, Any]:
    """A model-server pod of the seed pool that uses one ResourceClaim: named directly
    (`resourceClaimName`, Kubernetes 1.31+) or through `source` (the seed's, up to 1.30)."""
    obj = pod(name, ip, node=node)
    ref = {"resourceClaimName": claim} if new_style else {"source": {"resourceClaimName": claim}}
    obj["spec"]["resourceClaims"] = [{"name": "gpu", **ref}]
    obj["spec"]["containers"][0]["resources"] = {"claims": [{"name": "gpu"}]}
    return obj


# the seed's own DRA documents (resource.k8s.io/v1alpha2), as its YAML writes them
SEED_MAINTENANCE_SLICE: dict[str, Any] = {
    "apiVersion": "resource.k8s.io/v1alpha2",
    "kind": "ResourceSlice",
    "metadata": {"name": "gpu-node-maintenance"},
    "spec": {
        "driverName": "gpu.nvidia.com",
        "devices": [
            {
                "name": "gpu-0",
                "basic": {"capacity": {"memory": "16Gi"}},
                "taints": [
                    {"key": "maintenance", "value": "scheduled", "effect": "NoSchedule"},
                    {"key": "thermal-throttling", "value": "detected",
                     "effect": "PreferNoSchedule"},
                ],
            }
        ],
    },
}  # fmt: skip


def seed_class(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1alpha2",
        "kind": "ResourceClass",
        "metadata": {"name": name},
        "spec": {"driverName": DRIVER, "parameters": parameters},
    }


def seed_claim(name: str, resource_class: str, allocated: str | None = None) -> dict[str, Any]:
    """A v1alpha2 claim; `allocated`: the device its structured allocation names (the real
    v1alpha2 status shape)."""
    obj: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1alpha2",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"resourceClassName": resource_class, "allocationMode": "WaitForFirstConsumer"},
    }
    if allocated:
        obj["status"] = {
            "allocation": {
                "resourceHandles": [
                    {
                        "driverName": DRIVER,
                        "structuredData": {
                            "nodeName": "gpu-node-1",
                            "results": [{"namedResources": {"name": allocated}}],
                        },
                    }
                ]
            }
        }
    return obj
