"""The upstream Gateway API Inference Extension shapes.

`inference.networking.x-k8s.io/v1alpha2` InferencePool (selector map, targetPortNumber, inline
extensionRef) and InferenceModel (modelName, criticality, targetModels, poolRef), and
`inference.networking.k8s.io/v1` InferencePool (selector.matchLabels, targetPorts,
endpointPickerRef, appProtocol). Limits follow reference/upstream-epp.md §2. Called by `parse`.
"""

from __future__ import annotations

import re

from epp.api.core import Meta
from epp.api.fields import DNS_SUBDOMAIN, Obj
from epp.api.model import (
    PRIORITY_CRITICAL,
    PRIORITY_SHEDDABLE,
    PRIORITY_STANDARD,
    ExtensionRef,
    FailureMode,
    ModelRoute,
    Pool,
    SplitTarget,
    key_of,
)
from epp.api.rollout import RolloutPolicy, check_entries, effective_splits, read_rollout
from epp.api.seed import MAX_WEIGHT, failure_mode, read_pool_ref

GROUP_V1 = "inference.networking.k8s.io"
GROUP_X = "inference.networking.x-k8s.io"
DEFAULT_EXTENSION_PORT = 9002
MAX_TARGET_PORTS = 8
MAX_TARGET_MODELS = 10
CRITICALITIES = {
    "Critical": PRIORITY_CRITICAL,
    "Standard": PRIORITY_STANDARD,
    "Sheddable": PRIORITY_SHEDDABLE,
}
APP_PROTOCOLS = ("http", "kubernetes.io/h2c")
GROUP = re.compile(r"^$|" + DNS_SUBDOMAIN.pattern)
KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")


def _ref_basics(ref: Obj) -> tuple[str, str, str]:
    group = ref.string("group", min_len=0, pattern=GROUP, pattern_desc="empty or a DNS subdomain")
    kind = ref.string("kind", max_len=63, pattern=KIND, pattern_desc="a Kind name")
    name = ref.string("name", required=True) or ""
    return group or "", kind or "Service", name


def read_pool_v1alpha2(doc: Obj, meta: Meta, api_version: str) -> Pool:
    doc.only("apiVersion", "kind", "metadata", "spec", "status")
    spec = doc.part("spec")
    spec.only("selector", "targetPortNumber", "extensionRef")
    selector = spec.str_map("selector", required=True, labels=True, max_props=64)
    if selector is not None and not selector:
        spec.error("selector", "must have at least 1 label")
    port = spec.integer("targetPortNumber", lo=1, hi=65535, required=True)
    mode: FailureMode = "FailClose"
    extension: ExtensionRef | None = None
    ref = spec.obj("extensionRef", required=True)
    if ref is not None:
        ref.only("group", "kind", "name", "portNumber", "failureMode")
        group, kind, name = _ref_basics(ref)
        number = ref.integer("portNumber", lo=1, hi=65535) or DEFAULT_EXTENSION_PORT
        mode = failure_mode(ref)
        extension = ExtensionRef(name=name, port=number, group=group, kind=kind)
    return Pool(
        namespace=meta.namespace,
        name=meta.name,
        selector=tuple(sorted((selector or {}).items())),
        target_ports=(port,) if port else (),
        failure_mode=mode,
        extension_ref=extension,
        api_version=api_version,
        created_at=meta.created_at,
    )


def read_pool_v1(doc: Obj, meta: Meta, api_version: str) -> Pool:
    doc.only("apiVersion", "kind", "metadata", "spec", "status")
    spec = doc.part("spec")
    spec.only("selector", "targetPorts", "appProtocol", "endpointPickerRef")
    labels: dict[str, str] | None = None
    sel = spec.obj("selector", required=True)
    if sel is not None:
        sel.only("matchLabels")
        labels = sel.str_map("matchLabels", required=True, labels=True, max_props=64)
        if labels is not None and not labels:
            sel.error("matchLabels", "must have at least 1 label")
    ports: list[int] = []
    for entry in spec.objs("targetPorts", required=True, min_items=1, max_items=MAX_TARGET_PORTS):
        entry.only("number")
        number = entry.integer("number", lo=1, hi=65535, required=True)
        if number is not None and number in ports:
            entry.error("number", f"duplicate port {number}")
        elif number is not None:
            ports.append(number)
    protocol = spec.enum("appProtocol", APP_PROTOCOLS) or "http"
    mode: FailureMode = "FailClose"
    extension: ExtensionRef | None = None
    ref = spec.obj("endpointPickerRef")
    if ref is not None:
        ref.only("group", "kind", "name", "port", "failureMode")
        group, kind, name = _ref_basics(ref)
        mode = failure_mode(ref)
        picker_port: int | None = None
        port = ref.obj("port", required=kind == "Service")
        if port is not None:
            port.only("number")
            picker_port = port.integer("number", lo=1, hi=65535, required=True)
        extension = ExtensionRef(
            name=name, port=picker_port or DEFAULT_EXTENSION_PORT, group=group, kind=kind
        )
    return Pool(
        namespace=meta.namespace,
        name=meta.name,
        selector=tuple(sorted((labels or {}).items())),
        target_ports=tuple(ports),
        failure_mode=mode,
        extension_ref=extension,
        app_protocol=protocol,
        api_version=api_version,
        created_at=meta.created_at,
    )


def read_model_v1alpha2(doc: Obj, meta: Meta, api_version: str) -> ModelRoute:
    doc.only("apiVersion", "kind", "metadata", "spec", "status")
    spec = doc.part("spec")
    spec.only("modelName", "criticality", "targetModels", "poolRef")
    model_name = spec.string("modelName", required=True, max_len=256) or ""
    priority = CRITICALITIES[spec.enum("criticality", tuple(CRITICALITIES)) or "Standard"]
    pool = read_pool_ref(spec, "poolRef", required=True) or ""
    targets = spec.objs("targetModels", max_items=MAX_TARGET_MODELS)
    splits: list[SplitTarget] = []
    rollout: RolloutPolicy | None = None
    names: list[str | None] = []
    canary_at: list[int] = []
    weighted = 0
    for i, target in enumerate(targets):
        target.only("name", "weight", "rollout")
        name = target.string("name", required=True)
        weight = target.integer("weight", lo=1, hi=MAX_WEIGHT)
        names.append(name)
        block = target.obj("rollout")
        if block is not None:
            canary_at.append(i)
            rollout = read_rollout(block, name) if len(canary_at) == 1 else rollout
        if target.has("weight"):
            weighted += 1
        if name is not None:
            splits.append(SplitTarget(weight or 1, None, name))
    if 0 < weighted < len(targets):
        spec.error("targetModels", "weights must be set on all targets or on none")
    check_entries(spec, "targetModels", names, canary_at)
    return ModelRoute(
        namespace=meta.namespace,
        name=meta.name,
        model_name=model_name,
        pool=key_of(meta.namespace, pool),
        priority=priority,
        splits=effective_splits(tuple(splits), rollout, doc.data),
        api_version=api_version,
        created_at=meta.created_at,
        rollout=rollout,
    )
