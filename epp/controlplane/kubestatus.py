"""Gateway API status written to the API server: GatewayClasses, Gateways, HTTPRoute parents.

The pure half turns a `status.StatusReport` into Gateway API v1 status objects: `Accepted` on
GatewayClasses naming our controller, a Gateway's `status.conditions` (Accepted, Programmed)
and `status.listeners[]` (name, attachedRoutes, supportedKinds, Accepted/ResolvedRefs/
Conflicted/Programmed), and an HTTPRoute's `status.parents[]` entries for parentRefs to our
Gateways, leaving other controllers' entries untouched. A condition whose status holds keeps
its lastTransitionTime. `GatewayStatusWriter` PUTs through the status subresource only what
changed and retries a 409 Conflict on a fresh read, like `epp.kube.status.StatusWriter` does
for pools. `kubemode` calls it when leading."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import Any

from epp.controlplane.kubesource import (
    CONTROLLER_NAME,
    GATEWAY_CLASSES,
    GATEWAY_GROUP,
    GATEWAYS,
    HTTP_ROUTES,
    GatewaySource,
)
from epp.controlplane.status import (
    Condition,
    GatewayStatus,
    ListenerStatus,
    RouteStatus,
    StatusReport,
)
from epp.kube.client import JsonObj, KubeApi, KubeError, Resource

log = logging.getLogger(__name__)

MAX_MESSAGE = 32768  # Gateway API's limit on a condition message
ROUTE_KINDS = [{"group": GATEWAY_GROUP, "kind": "HTTPRoute"}]


def now_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _generation(obj: Mapping[str, Any]) -> int:
    meta = obj.get("metadata")
    return int((meta or {}).get("generation") or 0) if isinstance(meta, dict) else 0


def merge_conditions(
    old: object, new: Collection[Condition], generation: int, now: str
) -> list[JsonObj]:
    """`new` as API conditions; one whose status is unchanged keeps its lastTransitionTime."""
    before = {c.get("type"): c for c in old if isinstance(c, dict)} if isinstance(old, list) else {}
    out = []
    for cond in new:
        prev = before.get(cond.type)
        same = prev is not None and prev.get("status") == cond.status
        stamp = prev.get("lastTransitionTime") if same and prev is not None else None
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": cond.message[:MAX_MESSAGE],
                "observedGeneration": generation,
                "lastTransitionTime": stamp or now,
            }
        )
    return out


def listener_conditions(listener: ListenerStatus, programmed: Condition) -> list[Condition]:
    """The four listener conditions from the one `resolve` reports (Accepted, a conflict, refs)."""
    found = {c.type: c for c in listener.conditions}
    conflict = found.get("Conflicted")
    accepted = found.get("Accepted", Condition("Accepted", "True", "Accepted"))
    if conflict is not None and conflict.status == "True":
        accepted = Condition("Accepted", "False", conflict.reason, conflict.message)
    refs = found.get("ResolvedRefs", Condition("ResolvedRefs", "True", "ResolvedRefs"))
    ok = accepted.status == "True" and refs.status == "True"
    return [
        accepted,
        refs,
        conflict or Condition("Conflicted", "False", "NoConflicts"),
        programmed if ok else Condition("Programmed", "False", "Invalid", "listener not served"),
    ]


def gateway_status(
    obj: Mapping[str, Any], applied: Mapping[str, Any], gw: GatewayStatus, now: str
) -> JsonObj:
    """The Gateway's new `status` (other fields kept); `applied` as in `route_status`."""
    old = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    old = old or {}
    generation = _generation(applied)
    programmed = next(
        (c for c in gw.conditions if c.type == "Programmed"),
        Condition("Programmed", "False", "Pending"),
    )
    old_listeners = {
        str(ls.get("name")): ls for ls in old.get("listeners") or [] if isinstance(ls, dict)
    }
    listeners = []
    for ls in gw.listeners:
        conditions = listener_conditions(ls, programmed)
        accepted = conditions[0].status == "True"
        previous = old_listeners.get(ls.name, {}).get("conditions")
        listeners.append(
            {
                "name": ls.name,
                "attachedRoutes": ls.attached_routes,
                "supportedKinds": ROUTE_KINDS if accepted else [],
                "conditions": merge_conditions(previous, conditions, generation, now),
            }
        )
    return {
        **old,
        "conditions": merge_conditions(old.get("conditions"), gw.conditions, generation, now),
        "listeners": listeners,
    }


def class_status(obj: Mapping[str, Any], now: str) -> JsonObj:
    """A GatewayClass naming our controller: Accepted (every field of its spec is supported)."""
    old = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    old = old or {}
    accepted = Condition("Accepted", "True", "Accepted", "handled by epp controlplane")
    return {**old, "conditions": merge_conditions(old.get("conditions"), [accepted],
                                                  _generation(obj), now)}  # fmt: skip


def _gateway_of(ref: Mapping[str, Any], namespace: str) -> str | None:
    """namespace/name of the Gateway a parentRef names; None for other parent kinds."""
    if ref.get("group", GATEWAY_GROUP) != GATEWAY_GROUP or ref.get("kind", "Gateway") != "Gateway":
        return None
    return f"{ref.get('namespace', namespace)}/{ref.get('name')}"


def route_status(
    obj: Mapping[str, Any],
    applied: Mapping[str, Any],
    route: RouteStatus,
    ours: Collection[str],
    now: str,
    controller: str = CONTROLLER_NAME,
) -> JsonObj:
    """The HTTPRoute's new `status`: one entry of ours per parentRef to one of `ours` Gateways.

    `applied` is the route as the control plane resolved it (its parentRefs line up with
    `route.parents`); `obj` is the live object whose other controllers' entries are kept.
    """
    old = obj.get("status") if isinstance(obj.get("status"), dict) else {}
    old = old or {}
    entries = [e for e in old.get("parents") or [] if isinstance(e, dict)]
    mine = {
        _ref_key(e.get("parentRef")): e for e in entries if e.get("controllerName") == controller
    }
    kept = [e for e in entries if e.get("controllerName") != controller]
    spec = applied.get("spec") if isinstance(applied.get("spec"), dict) else {}
    refs = [r for r in (spec or {}).get("parentRefs") or [] if isinstance(r, dict)]
    namespace = str((applied.get("metadata") or {}).get("namespace", ""))
    generation = _generation(applied)
    written = []
    for ref, parent in zip(refs, route.parents, strict=False):
        gateway = _gateway_of(ref, namespace)
        if gateway is None or gateway not in ours:
            continue
        previous = mine.get(_ref_key(ref), {}).get("conditions")
        written.append(
            {
                "parentRef": dict(ref),
                "controllerName": controller,
                "conditions": merge_conditions(previous, parent.conditions, generation, now),
            }
        )
    return {**old, "parents": [*kept, *written]}


def _ref_key(ref: object) -> tuple[str, ...]:
    if not isinstance(ref, dict):
        return ()
    return tuple(str(ref.get(k, "")) for k in ("group", "kind", "namespace", "name", "sectionName"))


Desired = Callable[[JsonObj, str], JsonObj]  # (live object, now) → its new status


class GatewayStatusWriter:
    """Writes a report's Gateway and HTTPRoute status; `write` returns how many were PUT."""

    def __init__(
        self,
        api: KubeApi,
        source: GatewaySource,
        controller: str = CONTROLLER_NAME,
        clock: Callable[[], str] = now_stamp,
    ) -> None:
        self._api = api
        self._source = source
        self.controller = controller
        self._clock = clock
        # path → (versions older than our last write, the server's answer): the watch lags
        self._answers: dict[str, tuple[set[str], JsonObj]] = {}
        self.writes = 0

    async def write(
        self, report: StatusReport, applied: Mapping[tuple[str, str], Mapping[str, Any]]
    ) -> int:
        """`applied`: (kind, namespace/name) → the document `report` was resolved from."""
        ours = {g.key for g in report.gateways}
        work: list[tuple[Resource, str, Desired]] = [
            (GATEWAYS, gw.key, partial(_gateway_desired, doc, gw))
            for gw in report.gateways
            if (doc := applied.get(("Gateway", gw.key))) is not None
        ]
        work += [
            (HTTP_ROUTES, route.key, partial(_route_desired, doc, route, ours, self.controller))
            for route in report.routes
            if (doc := applied.get(("HTTPRoute", route.key))) is not None
        ]
        work += [
            (GATEWAY_CLASSES, f"/{(obj.get('metadata') or {}).get('name', '')}", _class_desired)
            for obj in self._source.class_objects()
        ]
        written = 0
        for resource, key, desired in work:
            try:
                written += await self._write_one(resource, key, desired)
            except KubeError as exc:
                if exc.status not in (403, 422):
                    raise
                log.warning("cannot write the status of %s %s: %s", resource.kind, key, exc)
        self.writes += written
        return written

    def _live(self, resource: Resource, key: str) -> tuple[JsonObj | None, set[str]]:
        """The latest object we know of, and the versions known to be older than it."""
        obj = self._source.live(resource, key)
        if obj is None:
            return None, set()
        path = _status_path(resource, obj)
        answer = self._answers.get(path)
        if answer is not None and _version(obj) in answer[0]:
            return answer[1], answer[0]
        self._answers.pop(path, None)
        return obj, set()

    async def _write_one(self, resource: Resource, key: str, desired: Desired) -> int:
        obj, older = self._live(resource, key)
        for _attempt in range(3):
            if obj is None:
                return 0
            status = desired(obj, self._clock())
            if status == obj.get("status"):
                return 0
            path = _status_path(resource, obj)
            older.add(_version(obj))
            try:
                answer = await self._api.request("PUT", path, body={**obj, "status": status})
            except KubeError as exc:
                if exc.status == 404:
                    return 0  # deleted meanwhile
                if exc.status != 409:
                    raise
                obj = await self._fresh(path)
                continue
            self._answers[path] = (older, answer)
            return 1
        log.warning("status of %s %s: still conflicting after 3 tries", resource.kind, key)
        return 0

    async def _fresh(self, path: str) -> JsonObj | None:
        try:
            return await self._api.get(path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise


def _class_desired(obj: JsonObj, now: str) -> JsonObj:
    return class_status(obj, now)


def _gateway_desired(
    applied: Mapping[str, Any], gw: GatewayStatus, obj: JsonObj, now: str
) -> JsonObj:
    return gateway_status(obj, applied, gw, now)


def _route_desired(
    applied: Mapping[str, Any],
    route: RouteStatus,
    ours: Collection[str],
    controller: str,
    obj: JsonObj,
    now: str,
) -> JsonObj:
    return route_status(obj, applied, route, ours, now, controller)


def _version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _status_path(resource: Resource, obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return resource.path(meta.get("namespace"), str(meta.get("name", "")), "status")
