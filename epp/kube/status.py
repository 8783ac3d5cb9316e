"""Status conditions for InferencePools and InferenceModels, written through `/status`.

`desired_status` is pure: from one `source.KubeView` it derives, per watched object, the
conditions the parse found (pools: `Accepted`, `ResolvedRefs`; models: `Accepted` whose reason is
`Accepted`, `ModelNameInUse`, `PoolNotFound` or `Invalid`). Where they live follows the shape: the
seed's `status.conditions` (+ `readyReplicas`), upstream v1alpha2's `status.parent[]` and v1's
`status.parents[]` (one entry per parentRef; other parents' entries are kept). `StatusWriter`
PUTs only what changed, keeps `lastTransitionTime` while a condition's status holds, and retries
a 409 Conflict on a fresh read. Only the elected leader calls it (`controller.py`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from epp.api.model import ModelRoute, Pool, Problem, ResourceSet, key_of
from epp.kube.client import POOL_RESOURCES, SEED_POOLS, V1_POOLS, JsonObj, KubeApi, KubeError
from epp.kube.source import KubeView, label_of

log = logging.getLogger(__name__)

Condition = dict[str, Any]
MAX_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class ParentRef:
    """The parent (a Gateway) whose entry this controller owns in upstream `status.parents`."""

    name: str = "inference-gateway"
    namespace: str | None = None  # None = the pool's namespace
    group: str = "gateway.networking.k8s.io"
    kind: str = "Gateway"
    controller_name: str = "epp.inference-gateway.dev/endpoint-picker"

    def as_dict(self, pool_namespace: str) -> JsonObj:
        return {"group": self.group, "kind": self.kind, "name": self.name,
                "namespace": self.namespace or pool_namespace}  # fmt: skip


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> Condition:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason,
            "message": message[:MAX_MESSAGE], "observedGeneration": generation}  # fmt: skip


def _messages(problems: list[Problem]) -> str:
    return "; ".join(f"{p.path}: {p.message}" for p in problems[:4])


def _judged(
    obj: JsonObj, label: str, resources: ResourceSet, accepted_as: Iterable[Pool | ModelRoute]
) -> tuple[int, list[Problem], bool]:
    """(generation, the object's error problems, whether it made it into the resource set)."""
    meta = obj.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    errors = [p for p in resources.problems if p.source == label and p.severity == "error"]
    key = key_of(str(meta.get("namespace", "")), str(meta.get("name", "")))
    version = obj.get("apiVersion")
    accepted = not errors and any(r.key == key and r.api_version == version for r in accepted_as)
    return generation, errors, accepted


def pool_conditions(obj: JsonObj, label: str, resources: ResourceSet) -> list[Condition]:
    generation, errors, accepted = _judged(obj, label, resources, resources.pools)
    ref_errors = [p for p in errors if "extensionRef" in p.path or "endpointPickerRef" in p.path]
    resolved = "ResolvedRefs" if not ref_errors else "InvalidExtensionRef"
    return [
        _condition(
            "Accepted", accepted, "Accepted" if accepted else "Invalid",
            "the endpoint picker serves this pool" if accepted else _messages(errors), generation,
        ),
        _condition(
            "ResolvedRefs", not ref_errors, resolved,
            "" if not ref_errors else _messages(ref_errors), generation,
        ),
    ]  # fmt: skip


def model_conditions(obj: JsonObj, label: str, resources: ResourceSet) -> list[Condition]:
    generation, errors, accepted = _judged(obj, label, resources, resources.models)
    if accepted:
        return [_condition("Accepted", True, "Accepted", "", generation)]
    reasons = [p.reason for p in errors if p.reason in ("ModelNameInUse", "PoolNotFound")]
    reason = reasons[0] if reasons else "Invalid"
    return [_condition("Accepted", False, reason, _messages(errors), generation)]


def _merge(old: list[Condition], new: list[Condition], now: str) -> list[Condition]:
    """New conditions; an unchanged status keeps its lastTransitionTime."""
    by_type = {c.get("type"): c for c in old if isinstance(c, dict)}
    out = []
    for cond in new:
        prev = by_type.get(cond["type"])
        same = prev is not None and prev.get("status") == cond["status"]
        stamp = prev.get("lastTransitionTime") if same and prev is not None else None
        out.append({**cond, "lastTransitionTime": stamp or now})
    return out


def _ready_replicas(obj: JsonObj, resources: ResourceSet) -> int:
    meta = obj.get("metadata") or {}
    key = key_of(str(meta.get("namespace", "")), str(meta.get("name", "")))
    pool = next((p for p in resources.pools if p.key == key), None)
    if pool is None:
        return 0
    return sum(
        1
        for pod in resources.pods
        if pod.namespace == pool.namespace
        and pod.ready
        and not pod.deleting
        and all(dict(pod.labels).get(k) == v for k, v in pool.selector)
    )


def desired_status(
    view: KubeView, parent: ParentRef, now: str
) -> list[tuple[str, JsonObj, JsonObj]]:
    """(status path, object, new status) for every object whose status must change."""
    out = []
    for resource, obj in view.raw:
        label = label_of(resource, obj)
        old = obj.get("status") if isinstance(obj.get("status"), dict) else {}
        status = dict(old or {})
        if resource in POOL_RESOURCES:
            conditions = pool_conditions(obj, label, view.resources)
            if resource is SEED_POOLS:
                status["conditions"] = _merge(status.get("conditions") or [], conditions, now)
                status["readyReplicas"] = _ready_replicas(obj, view.resources)
            else:
                field = "parents" if resource is V1_POOLS else "parent"
                status[field] = _parents(status.get(field) or [], obj, conditions, parent, now)
        else:
            conditions = model_conditions(obj, label, view.resources)
            status["conditions"] = _merge(status.get("conditions") or [], conditions, now)
        if status != old:
            meta = obj.get("metadata") or {}
            path = resource.path(meta.get("namespace"), str(meta.get("name", "")), "status")
            out.append((path, obj, status))
    return out


def _parents(
    entries: list[JsonObj], obj: JsonObj, conditions: list[Condition], parent: ParentRef, now: str
) -> list[JsonObj]:
    ref = parent.as_dict(str((obj.get("metadata") or {}).get("namespace", "")))
    kept: list[JsonObj] = []
    old_conditions: list[Condition] = []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("parentRef") == ref:
            old_conditions = entry.get("conditions") or []
        else:
            kept.append(entry)
    mine = {"parentRef": ref, "conditions": _merge(old_conditions, conditions, now)}
    if obj.get("apiVersion") == f"{V1_POOLS.group}/{V1_POOLS.version}":
        mine["controllerName"] = parent.controller_name
    return [*kept, mine]


def _onto(fresh: JsonObj, status: JsonObj) -> JsonObj:
    """Our status fields onto a fresher object's: `status.rollout` is the rollout controller's
    (`epp.kube.rollouts`), and a stale copy of it must not undo a step written meanwhile."""
    current = fresh.get("status")
    mine = {k: v for k, v in status.items() if k != "rollout"}
    return {**(current if isinstance(current, dict) else {}), **mine}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    """Writes `desired_status` through the status subresource; returns how many were written."""

    def __init__(
        self, api: KubeApi, parent: ParentRef | None = None, clock: Callable[[], str] = _now
    ) -> None:
        self._api = api
        self.parent = parent or ParentRef()
        self._clock = clock

    async def write(self, view: KubeView) -> int:
        written = 0
        for path, obj, status in desired_status(view, self.parent, self._clock()):
            body = {**obj, "status": status}
            for _attempt in range(3):
                try:
                    await self._api.request("PUT", path, body=body)
                    written += 1
                    break
                except KubeError as exc:
                    if exc.status == 404:
                        break  # deleted meanwhile
                    if exc.status != 409:
                        raise
                    fresh = await self._api.get(path)
                    body = {**fresh, "status": _onto(fresh, status)}
        return written
