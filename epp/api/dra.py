"""What the seed's DRA documents should be written as: notes on fields the real API never had.

The users' document writes Dynamic Resource Allocation in `resource.k8s.io/v1alpha2` with fields
of its own: free-form `parameters` on classes and claims, `resourceClassNames`, device taints
tolerated by Pod tolerations, a ResourceClass (now DeviceClass). `notes(doc)` returns (field
path, message) pairs saying what Kubernetes serves instead; `epp.api.parse` accepts the
documents and reports each note as a warning (`DraShape`), so `epp validate` passes the seed
and tells how to port it. What the EPP reads of DRA at run time is `epp.api.devices`.
"""

from __future__ import annotations

from typing import Any

GROUP = "resource.k8s.io"
KINDS = frozenset(
    {"ResourceClass", "DeviceClass", "ResourceClaim", "ResourceClaimTemplate", "ResourceSlice",
     "DeviceTaintRule"}
)  # fmt: skip
REASON = "DraShape"
ADMIN_LABEL = "resource.kubernetes.io/admin-access"
DEVICE_TOLERATION = "resource.kubernetes.io/device."
VALID_EFFECTS = ("NoSchedule", "NoExecute", "None")
OLD = (
    "resource.k8s.io/v1alpha2 was served by Kubernetes 1.26 to 1.30 only; "
    "write resource.k8s.io/v1 (Kubernetes 1.34+)"
)

Note = tuple[str, str]


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def notes(doc: dict[str, Any]) -> list[Note]:
    """Notes for one document: a DRA kind, a Pod using claims, or an admin-access Namespace."""
    kind = doc.get("kind")
    api_version = str(doc.get("apiVersion", ""))
    if api_version.startswith(GROUP + "/"):
        found = [("apiVersion", OLD)] if api_version == f"{GROUP}/v1alpha2" else []
        if kind == "ResourceClass":
            return _resource_class(doc)
        if kind == "ResourceClaim":
            return found + _claim(doc)
        if kind == "ResourceSlice":
            return found + _slice(doc)
        return found
    if api_version == "v1" and kind == "Pod":
        return _pod(doc)
    if api_version == "v1" and kind == "Namespace":
        labels = _dict(_dict(doc.get("metadata")).get("labels"))
        value = labels.get(ADMIN_LABEL)
        if value is not None and value != "true":
            message = f'admin access takes the value "true"; got {value!r}'
            return [(f"metadata.labels[{ADMIN_LABEL}]", message)]
    return []


def _resource_class(doc: dict[str, Any]) -> list[Note]:
    name = _dict(doc.get("metadata")).get("name", "gpu")
    spec = _dict(doc.get("spec"))
    driver = spec.get("driverName") or doc.get("driverName") or "gpu.nvidia.com"
    out = [
        (
            "kind",
            "ResourceClass was removed in Kubernetes 1.31: write a DeviceClass "
            f"(resource.k8s.io/v1) named {name} whose spec.selectors[].cel.expression picks the "
            f'devices, e.g. device.driver == "{driver}"',
        )
    ]
    if "driverName" in spec:
        out.append(
            (
                "spec.driverName",
                "not a field: v1alpha2 had driverName at the top level, without spec; a "
                f'DeviceClass names the driver in its CEL selector (device.driver == "{driver}")',
            )
        )
    params = spec.get("parameters")
    if isinstance(params, dict):
        out.append(
            (
                "spec.parameters",
                "ResourceClass never had free-form parameters (v1alpha2 had parametersRef to "
                "another object): write driver settings in a DeviceClass's "
                "spec.config[].opaque {driver, parameters}, and device properties as CEL "
                "selectors on the device's attributes and capacity",
            )
        )
        if "migProfile" in params:
            profile = params["migProfile"]
            out.append(
                (
                    "spec.parameters.migProfile",
                    "a MIG slice is a device of its own: select it with "
                    f'device.attributes["{driver}"].profile == "{profile}"; the EPP takes the '
                    "allocated device's profile as the pod's share of its GPU",
                )
            )
        if "maxUsers" in params:
            users = params["maxUsers"]
            out.append(
                (
                    "spec.parameters.maxUsers",
                    "time-slicing is the driver's sharing config (spec.config[].opaque.parameters"
                    ": {kind: GpuConfig, sharing: {strategy: TimeSlicing}}), with no user count; "
                    f"the EPP reads maxUsers: {users} here as each pod's share 1/{users}, and "
                    "counts the pods whose claims hold the same device",
                )
            )
    return out


def _claim(doc: dict[str, Any]) -> list[Note]:
    spec = _dict(doc.get("spec"))
    out: list[Note] = []
    if isinstance(spec.get("resourceClassName"), str):
        cls = spec["resourceClassName"]
        out.append(
            (
                "spec.resourceClassName",
                "v1 requests devices by class: spec.devices.requests"
                f"[{{name: gpu, exactly: {{deviceClassName: {cls}}}}}]",
            )
        )
    names = _list(spec.get("resourceClassNames"))
    if names:
        options = ", ".join(
            f"{{name: option{i}, deviceClassName: {n}}}" for i, n in enumerate(names)
        )
        out.append(
            (
                "spec.resourceClassNames",
                "not a field of any version: a list of classes in order of preference is "
                f"spec.devices.requests[{{name: gpu, firstAvailable: [{options}]}}]",
            )
        )
    if "allocationMode" in spec:
        out.append(
            (
                "spec.allocationMode",
                "gone after v1alpha2: a claim is allocated when the first pod using it is "
                "scheduled (WaitForFirstConsumer is the only behaviour); v1's allocationMode "
                "(ExactCount, All) is per request and counts devices",
            )
        )
    if isinstance(spec.get("parameters"), dict):
        out.append(
            (
                "spec.parameters",
                "ResourceClaim never had free-form parameters: admin access is "
                "spec.devices.requests[].exactly.adminAccess: true in a namespace labelled "
                f'{ADMIN_LABEL}: "true"; where a device may run follows from its slice\'s node, '
                "and class or attribute preferences are CEL selectors",
            )
        )
    return out


def _slice(doc: dict[str, Any]) -> list[Note]:
    spec = _dict(doc.get("spec"))
    out: list[Note] = []
    if "driverName" in spec:
        out.append(("spec.driverName", "write spec.driver (v1alpha2 had driverName at the top "
                    "level, without spec)"))  # fmt: skip
    if spec and "pool" not in spec:
        out.append(
            (
                "spec.pool",
                "required in v1: {name, generation, resourceSliceCount}, with one of "
                "spec.nodeName, spec.nodeSelector, spec.allNodes; without them the EPP matches "
                "a claim's device by driver and device name alone",
            )
        )
    for i, device in enumerate(_list(spec.get("devices"))):
        if not isinstance(device, dict):
            continue
        if "basic" in device:
            out.append((f"spec.devices[{i}].basic", "v1 lists attributes, capacity and taints "
                        "on the device itself (basic was v1beta1's wrapper)"))  # fmt: skip
        for j, taint in enumerate(_list(device.get("taints"))):
            effect = _dict(taint).get("effect")
            if effect not in VALID_EFFECTS:
                out.append(
                    (
                        f"spec.devices[{i}].taints[{j}].effect",
                        f"device taints take {', '.join(VALID_EFFECTS)}; the API server "
                        f"rejects {effect!r}. The EPP reads PreferNoSchedule as 'de-prioritise' "
                        "(degraded); write None for a taint that only informs, NoSchedule to "
                        "drain the pods using the device",
                    )
                )
    return out


def _pod(doc: dict[str, Any]) -> list[Note]:
    spec = _dict(doc.get("spec"))
    out: list[Note] = []
    for i, ref in enumerate(_list(spec.get("resourceClaims"))):
        source = _dict(_dict(ref).get("source"))
        if source:
            field, value = next(iter(source.items()))
            out.append(
                (
                    f"spec.resourceClaims[{i}].source",
                    "Kubernetes 1.31 moved it up: spec.resourceClaims"
                    f"[{{name: {_dict(ref).get('name')}, {field}: {value}}}]",
                )
            )
    for i, toleration in enumerate(_list(spec.get("tolerations"))):
        key = str(_dict(toleration).get("key", ""))
        if key.startswith(DEVICE_TOLERATION):
            t = _dict(toleration)
            fields = [f"key: {key[len(DEVICE_TOLERATION) :]}"]
            fields += [f"{f}: {t[f]}" for f in ("operator", "value", "effect") if f in t]
            out.append(
                (
                    f"spec.tolerations[{i}]",
                    "Pod tolerations do not apply to device taints: tolerate it in the "
                    "ResourceClaim, spec.devices.requests[].exactly.tolerations"
                    f"[{{{', '.join(fields)}}}]",
                )
            )
    return out
