"""A small, faithful Kubernetes API server emulator (aiohttp) for the Kubernetes-mode tests.

In-memory objects per group/version/resource/namespace with one resourceVersion counter; list;
`?watch=1&resourceVersion=N` streaming JSON lines (history replay from N, live events,
`allowWatchBookmarks`, `timeoutSeconds`); 410 Gone (as an ERROR event, like the real server) when N
is older than the bounded event history; POST/PUT/merge-PATCH/DELETE with the status subresource
split, optimistic concurrency (409 Conflict on a stale resourceVersion), generation bumps on spec
changes, and ownerReference cascade on delete (the garbage collector's job). Discovery (`/api`,
`/apis`, `/apis/g/v`) is served so `kubectl` can talk to it. Test hooks: `drop_watches()`,
`compact()`, `outage`, `forbidden`, `hold_lists`. Real HTTP only: the client under test is not
patched.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    has_status: bool = True


CORE = [
    Kind("", "v1", "pods", "Pod"),
    Kind("", "v1", "nodes", "Node", namespaced=False),
    Kind("", "v1", "services", "Service"),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", has_status=False),
    Kind("", "v1", "configmaps", "ConfigMap", has_status=False),
    Kind("", "v1", "secrets", "Secret", has_status=False),
    Kind("", "v1", "namespaces", "Namespace", namespaced=False),
    Kind("apps", "v1", "deployments", "Deployment"),
    Kind("coordination.k8s.io", "v1", "leases", "Lease", has_status=False),
    Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    Kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", has_status=False),
    Kind("rbac.authorization.k8s.io", "v1", "roles", "Role", has_status=False),
    Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", has_status=False),
    Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False, False),
    Kind(
        "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False, False
    ),
    Kind(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False
    ),
    Kind("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", has_status=False),
    Kind("monitoring.coreos.com", "v1", "prometheusrules", "PrometheusRule", has_status=False),
]
INFERENCE = [
    Kind("gateway.networking.x-k8s.io", "v1alpha1", "inferencepools", "InferencePool"),
    Kind("gateway.networking.x-k8s.io", "v1alpha1", "inferencemodels", "InferenceModel"),
    Kind("inference.networking.x-k8s.io", "v1alpha2", "inferencepools", "InferencePool"),
    Kind("inference.networking.x-k8s.io", "v1alpha2", "inferencemodels", "InferenceModel"),
    Kind("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool"),
    Kind("gateway.networking.x-k8s.io", "v1alpha1", "priorityfilters", "PriorityFilter"),
]
# Dynamic Resource Allocation in the versions clusters serve: v1alpha2 (the seed, up to 1.30),
# v1beta1 (1.32+), v1 (1.34+); DeviceTaintRule v1alpha3 (1.33), v1beta2, v1
DRA = [
    *(
        Kind("resource.k8s.io", v, "resourceslices", "ResourceSlice", False, False)
        for v in ("v1", "v1beta1", "v1alpha2")
    ),
    *(
        Kind("resource.k8s.io", v, "resourceclaims", "ResourceClaim")
        for v in ("v1", "v1beta1", "v1alpha2")
    ),
    Kind("resource.k8s.io", "v1alpha2", "resourceclasses", "ResourceClass", False, False),
    Kind("resource.k8s.io", "v1", "deviceclasses", "DeviceClass", False, False),
    *(
        Kind("resource.k8s.io", v, "devicetaintrules", "DeviceTaintRule", False, False)
        for v in ("v1", "v1beta2", "v1alpha3")
    ),
]
GATEWAY_API = [
    Kind("gateway.networking.k8s.io", "v1", "gatewayclasses", "GatewayClass", namespaced=False),
    Kind("gateway.networking.k8s.io", "v1", "gateways", "Gateway"),
    Kind("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
]


@dataclass
class _Watcher:
    kind: Kind
    namespace: str | None
    queue: asyncio.Queue[Obj | None] = field(default_factory=asyncio.Queue)


def _status(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


class ApiServer:
    """Start with `await start()`; `url` is then the base URL; `await stop()` at the end."""

    def __init__(self, kinds: list[Kind] | None = None, history: int = 1000) -> None:
        chosen = kinds or CORE + INFERENCE + GATEWAY_API + DRA
        self.kinds = {(k.group, k.version, k.plural): k for k in chosen}
        self.objects: dict[tuple[str, str, str], dict[tuple[str, str], Obj]] = {
            key: {} for key in self.kinds
        }
        self.rv = 100
        self.history: deque[tuple[int, Kind, Obj]] = deque(maxlen=history)  # (rv, kind, event line)
        self.watchers: list[_Watcher] = []
        self.bookmark_interval = 0.2
        self.outage = False  # answer 503 to everything while set
        self.forbidden: set[str] = set()  # resource plurals answered 403, as RBAC without them
        self.hold_lists = asyncio.Event()  # cleared = list requests wait
        self.hold_lists.set()
        self.requests: list[tuple[str, str]] = []  # (method, path?query) log
        self.authorizations: set[str] = set()  # Authorization headers seen
        self._uids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def crash(self) -> int:
        """Stops listening (connections refused, open watches cut); the state survives."""
        port = int(self.url.rpartition(":")[2])
        await self.stop()
        return port

    async def recover(self, port: int) -> None:
        await self.start(port)

    # ---- test hooks -------------------------------------------------------------------------
    def drop_watches(self) -> None:
        """Closes every open watch stream, as a load balancer or an apiserver restart would."""
        for watcher in self.watchers:
            watcher.queue.put_nowait(None)
        self.watchers = []

    def compact(self) -> None:
        """Forgets the event history, as etcd compaction does: older versions now get 410."""
        self.history.clear()

    def put(self, obj: Obj) -> Obj:
        """Creates or replaces an object directly (test set-up), emitting the watch event."""
        kind = self._kind_of_doc(obj)
        meta = obj.setdefault("metadata", {})
        if kind.namespaced:
            meta.setdefault("namespace", "default")
        key = (meta.get("namespace", ""), meta["name"])
        old = self.objects[self._gvr(kind)].get(key)
        if old is None:
            return self._create(kind, obj)
        obj["metadata"] = {**old["metadata"], **meta}
        return self._store(kind, obj, "MODIFIED")

    def get(self, kind: Kind | tuple[str, str, str], namespace: str, name: str) -> Obj | None:
        gvr = self._gvr(kind) if isinstance(kind, Kind) else kind
        return self.objects[gvr].get((namespace, name))

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        self._delete(kind, (namespace, name))

    def kind(self, group: str, version: str, plural: str) -> Kind:
        return self.kinds[(group, version, plural)]

    # ---- internals --------------------------------------------------------------------------
    @staticmethod
    def _gvr(kind: Kind) -> tuple[str, str, str]:
        return (kind.group, kind.version, kind.plural)

    def _kind_of_doc(self, obj: Obj) -> Kind:
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        for k in self.kinds.values():
            if k.group == group and k.version == version and k.kind == obj["kind"]:
                return k
        raise KeyError(obj["apiVersion"], obj["kind"])

    def _next(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _create(self, kind: Kind, obj: Obj) -> Obj:
        meta = obj["metadata"]
        meta["uid"] = f"uid-{next(self._uids)}"
        meta["creationTimestamp"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["generation"] = 1
        obj["apiVersion"] = f"{kind.group}/{kind.version}" if kind.group else kind.version
        obj["kind"] = kind.kind
        return self._store(kind, obj, "ADDED")

    def _store(self, kind: Kind, obj: Obj, event: str) -> Obj:
        obj["metadata"]["resourceVersion"] = self._next()
        meta = obj["metadata"]
        self.objects[self._gvr(kind)][(meta.get("namespace", ""), meta["name"])] = obj
        self._emit(kind, event, obj)
        return obj

    def _delete(self, kind: Kind, key: tuple[str, str]) -> Obj | None:
        obj = self.objects[self._gvr(kind)].pop(key, None)
        if obj is None:
            return None
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._next()
        self._emit(kind, "DELETED", obj)
        uid = obj["metadata"].get("uid")
        for other_kind in self.kinds.values():  # garbage collection: dependents go too
            for other_key, other in list(self.objects[self._gvr(other_kind)].items()):
                owners = other["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    self._delete(other_kind, other_key)
        return obj

    def _emit(self, kind: Kind, event: str, obj: Obj) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        line = {"type": event, "object": copy.deepcopy(obj)}
        self.history.append((rv, kind, line))
        for w in self.watchers:
            if w.kind == kind and w.namespace in (None, obj["metadata"].get("namespace")):
                w.queue.put_nowait(line)

    # ---- HTTP -------------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        self.authorizations.add(request.headers.get("Authorization", ""))
        if self.outage:
            return web.json_response(_status(503, "ServiceUnavailable", "outage"), status=503)
        parts = [p for p in request.path.split("/") if p]
        if parts in (["api"], ["apis"]) or (len(parts) in (2, 3) and not self._is_resource(parts)):
            return self._discovery(parts)
        if parts[:1] == ["api"]:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return self._fail(404, "NotFound", request.path)
        namespace = None
        if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
            namespace, rest = rest[1], rest[2:]
        kind = self.kinds.get((group, version, rest[0] if rest else ""))
        if kind is not None and kind.plural in self.forbidden:
            return self._fail(403, "Forbidden", f"cannot list resource {kind.plural!r}")
        if kind is None:
            return self._fail(404, "NotFound", f"the server could not find {request.path}")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if name is None:
            if request.method == "GET":
                if request.query.get("watch") in ("1", "true"):
                    return await self._watch(request, kind, namespace)
                await self.hold_lists.wait()
                return self._list(request, kind, namespace)
            if request.method == "POST":
                return self._post(kind, namespace, await request.json())
            return self._fail(405, "MethodNotAllowed", request.method)
        key = (namespace or "", name)
        current = self.objects[self._gvr(kind)].get(key)
        if request.method == "DELETE":
            gone = self._delete(kind, key)
            if gone is None:
                return self._fail(404, "NotFound", f"{kind.plural} {name!r} not found")
            return web.json_response(gone)
        if current is None:
            return self._fail(404, "NotFound", f'{kind.plural} "{name}" not found')
        if request.method == "GET":
            return web.json_response(current)
        body = await request.json()
        if request.method == "PATCH":
            body = _merge(current, body)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if request.method in ("PUT", "PATCH"):
            return self._update(kind, current, body, sub == "status")
        return self._fail(405, "MethodNotAllowed", request.method)

    def _is_resource(self, parts: list[str]) -> bool:
        return (parts[0] == "api" and len(parts) == 3) or (parts[0] == "apis" and len(parts) > 3)

    def _fail(self, code: int, reason: str, message: str) -> web.Response:
        return web.json_response(_status(code, reason, message), status=code)

    def _list(self, request: web.Request, kind: Kind, namespace: str | None) -> web.Response:
        selector = dict(
            part.split("=", 1) for part in request.query.get("labelSelector", "").split(",") if part
        )
        items = [
            obj
            for (ns, _), obj in sorted(self.objects[self._gvr(kind)].items())
            if namespace in (None, ns)
            and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        ]
        api_version = f"{kind.group}/{kind.version}" if kind.group else kind.version
        return web.json_response(
            {
                "kind": f"{kind.kind}List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            }
        )

    def _post(self, kind: Kind, namespace: str | None, body: Obj) -> web.Response:
        meta = body.setdefault("metadata", {})
        if kind.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        if (meta.get("namespace", ""), meta.get("name")) in self.objects[self._gvr(kind)]:
            return self._fail(409, "AlreadyExists", f'{kind.plural} "{meta.get("name")}" exists')
        body.pop("status", None) if kind.has_status else None
        return web.json_response(self._create(kind, body), status=201)

    def _update(self, kind: Kind, current: Obj, body: Obj, status: bool) -> web.Response:
        want = str((body.get("metadata") or {}).get("resourceVersion", ""))
        have = current["metadata"]["resourceVersion"]
        if want and want != have:
            message = f"the object has been modified; resourceVersion {want} is not {have}"
            return self._fail(409, "Conflict", message)
        new = copy.deepcopy(current)
        if status:
            new["status"] = body.get("status")
        else:
            for key, value in body.items():
                if key not in ("metadata", "status") or (not kind.has_status and key == "status"):
                    new[key] = value
            meta = dict(body.get("metadata") or {})
            for fixed in ("uid", "creationTimestamp", "generation", "resourceVersion", "namespace"):
                meta[fixed] = current["metadata"].get(fixed)
            new["metadata"] = {k: v for k, v in meta.items() if v is not None}
            if new.get("spec") != current.get("spec"):
                new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        return web.json_response(self._store(kind, new, "MODIFIED"))

    async def _watch(
        self, request: web.Request, kind: Kind, namespace: str | None
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.rv)
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        timeout = float(request.query.get("timeoutSeconds") or 3600)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        oldest = self.history[0][0] if self.history else self.rv + 1
        if since < oldest - 1 and since < self.rv:
            gone = _status(410, "Expired", f"too old resource version: {since} ({oldest - 1})")
            await resp.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return resp
        watcher = _Watcher(kind, namespace)
        for rv, k, event in self.history:
            ns = event["object"]["metadata"].get("namespace")
            if rv > since and k == kind and namespace in (None, ns):
                watcher.queue.put_nowait(event)
        self.watchers.append(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while (left := deadline - loop.time()) > 0:
                wait = min(left, self.bookmark_interval) if bookmarks else left
                try:
                    line = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if not bookmarks:
                        continue
                    line = {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": kind.kind,
                            "metadata": {"resourceVersion": str(self.rv)},
                        },
                    }
                if line is None:
                    break
                await resp.write(json.dumps(line).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if watcher in self.watchers:
                self.watchers.remove(watcher)
        return resp

    def _discovery(self, parts: list[str]) -> web.Response:
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            groups: dict[str, list[str]] = {}
            for k in self.kinds.values():
                if k.group and k.version not in groups.setdefault(k.group, []):
                    groups[k.group].append(k.version)
            return web.json_response(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {
                            "name": g,
                            "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                            "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                        }
                        for g, vs in groups.items()
                    ],
                }
            )
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        resources = []
        for k in self.kinds.values():
            if k.group == group and k.version == version:
                verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
                resources.append(
                    {
                        "name": k.plural,
                        "singularName": k.kind.lower(),
                        "namespaced": k.namespaced,
                        "kind": k.kind,
                        "verbs": verbs,
                    }
                )
                if k.has_status:
                    resources.append(
                        {
                            "name": f"{k.plural}/status",
                            "singularName": "",
                            "namespaced": k.namespaced,
                            "kind": k.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
        if not resources:
            return self._fail(404, "NotFound", "/".join(parts))
        gv = f"{group}/{version}" if group else version
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": gv,
                "resources": resources,
            }
        )
