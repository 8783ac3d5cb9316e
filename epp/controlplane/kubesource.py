"""Kubernetes mode's input: the control plane's resources watched on the API server.

`GatewaySource` runs an `epp.kube.source.KubeSource` for the inference kinds (every served shape
of InferencePool and InferenceModel, plus the Pods the pools select, for FailOpen fallbacks) and
one `epp.kube.watch.Reflector` per Gateway-side kind (Gateway, HTTPRoute, Service, TLS Secret,
PriorityFilter, and the cluster's GatewayClasses), and parses them together with
`epp.api.parse.parse_documents` into the same `ResourceSet` that `FolderSource` hands to
`ControlPlane.apply`. Bursts are debounced; a watch outage keeps the last objects (`Stale`
warnings; a kind the account may not read, say Secrets, counts as empty and stays `Stale`
until RBAC allows it). `kubemode` drives it; `kubestatus` reads the live objects through `live()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace

from epp.api.model import Problem, ResourceSet
from epp.api.parse import parse_documents
from epp.kube.client import JsonObj, KubeApi, Resource
from epp.kube.source import KubeSource, SourceConfig, label_of
from epp.kube.watch import Changes, Reflector, WatchSettings

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAYS = Resource(GATEWAY_GROUP, "v1", "gateways", "Gateway")
HTTP_ROUTES = Resource(GATEWAY_GROUP, "v1", "httproutes", "HTTPRoute")
GATEWAY_CLASSES = Resource(GATEWAY_GROUP, "v1", "gatewayclasses", "GatewayClass", False)
SERVICES = Resource("", "v1", "services", "Service")
SECRETS = Resource("", "v1", "secrets", "Secret")
PRIORITY_FILTERS = Resource(
    "gateway.networking.x-k8s.io", "v1alpha1", "priorityfilters", "PriorityFilter"
)
NAMESPACED_KINDS = (GATEWAYS, HTTP_ROUTES, SERVICES, SECRETS, PRIORITY_FILTERS)
# the GatewayClass `spec.controllerName` that makes a class (and its Gateways) ours
CONTROLLER_NAME = "epp.inference-gateway.dev/gateway-controller"


@dataclass(frozen=True, slots=True)
class GatewaySourceConfig:
    namespaces: tuple[str, ...] = ()  # () = cluster-wide
    secret_namespaces: tuple[str, ...] | None = None  # None = as `namespaces`
    watch: WatchSettings = field(default_factory=WatchSettings)
    debounce: float = 0.05  # coalesce a burst of events into one new set
    controller_name: str = CONTROLLER_NAME


def is_tls_secret(obj: JsonObj) -> bool:
    """Only certificate Secrets reach the parse (and the control plane's memory of them)."""
    data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
    return obj.get("type") == "kubernetes.io/tls" or "tls.crt" in (data or {})


class GatewaySource:
    """`synced()` once, then `watch()`; `aclose()` stops every watch."""

    def __init__(self, api: KubeApi, config: GatewaySourceConfig) -> None:
        self.config = config
        self.inference = KubeSource(
            api,
            SourceConfig(
                namespaces=config.namespaces,
                watch_nodes=False,
                watch_devices=False,
                watch=config.watch,
                debounce=config.debounce,
            ),
        )
        scopes: tuple[str | None, ...] = config.namespaces or (None,)
        secret_scopes: tuple[str | None, ...] = scopes
        if config.secret_namespaces is not None:
            secret_scopes = config.secret_namespaces or (None,)
        self.reflectors = [
            Reflector(api, kind, ns, config.watch, self._touch)
            for kind in NAMESPACED_KINDS
            for ns in (secret_scopes if kind == SECRETS else scopes)
        ]
        self.reflectors.append(Reflector(api, GATEWAY_CLASSES, None, config.watch, self._touch))
        self.changes = Changes()  # bumped on every change of any watched object
        self._tasks: list[asyncio.Task[None]] = []
        self._cached: tuple[int, ResourceSet] | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._tasks:
            return
        self.inference.start()
        self._tasks = [
            asyncio.create_task(r.run(), name=f"reflector {r.name}") for r in self.reflectors
        ]
        self._tasks.append(asyncio.create_task(self._relay(), name="inference changes"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.inference.aclose()

    async def _relay(self) -> None:
        async for _view in self.inference.watch_views():
            self._touch()

    def _touch(self) -> None:
        self.changes.touch()

    @property
    def stale(self) -> bool:
        return self.inference.stale or any(r.stale for r in self.reflectors)

    # ---- the FolderSource-shaped interface ---------------------------------------------------
    async def synced(self) -> ResourceSet:
        """The first complete set: once every watch has listed once."""
        self.start()
        await self.inference.synced()
        await asyncio.gather(*(_listed_or_forbidden(r) for r in self.reflectors))
        return self.current()

    async def watch(self, since: ResourceSet | None = None) -> AsyncGenerator[ResourceSet, None]:
        """A new set after every change (bursts coalesced), starting after the first sync.
        `since`: the set the caller already has (from `synced()`); a change that came between
        it and this call is handed out at once instead of waiting for the next one."""
        last = await self.synced()
        seen = self.changes.generation
        if since is not None and last != since:
            yield last
        changes = self.changes.follow(self.current, last, seen, self.config.debounce)
        async for fresh in changes:
            yield fresh

    def current(self) -> ResourceSet:
        generation = self.changes.generation
        if self._cached is None or self._cached[0] != generation:
            self._cached = (generation, self._build())
        return self._cached[1]

    # ---- what the status writer and the class filter read ------------------------------------
    def live(self, resource: Resource, key: str) -> JsonObj | None:
        """The object as last seen on the server (`key` = namespace/name)."""
        for reflector in self.reflectors:
            if reflector.resource == resource and key in reflector.objects:
                return reflector.objects[key]
        return None

    def our_classes(self) -> set[str]:
        """Names of the GatewayClasses whose controllerName is ours."""
        return {str((obj.get("metadata") or {}).get("name", "")) for obj in self.class_objects()}

    def class_objects(self) -> list[JsonObj]:
        """The GatewayClasses whose controllerName is ours, as the server holds them."""
        out = []
        for reflector in self.reflectors:
            if reflector.resource != GATEWAY_CLASSES:
                continue
            for obj in reflector.objects.values():
                spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
                if (spec or {}).get("controllerName") == self.config.controller_name:
                    out.append(obj)
        return out

    # ---- building a set ---------------------------------------------------------------------
    def _build(self) -> ResourceSet:
        view = self.inference.view()
        docs: list[tuple[str, object]] = [(label_of(kind, obj), obj) for kind, obj in view.raw]
        for reflector in self.reflectors:
            kind = reflector.resource
            docs.extend(
                (label_of(kind, obj), _steady(obj))
                for obj in reflector.objects.values()
                if kind != SECRETS or is_tls_secret(obj)
            )
        parsed = parse_documents(docs)
        problems = [*parsed.problems]
        problems.extend(p for p in view.resources.problems if p.reason == "Stale")
        for r in self.reflectors:
            if r.stale:
                message = f"watch failing ({r.last_error}); serving the last known state"
                problems.append(
                    Problem(r.name, r.resource.kind, "*", "(watch)", message, "warning", "Stale")
                )
        return replace(parsed, pods=view.resources.pods, problems=tuple(problems))


async def _listed_or_forbidden(reflector: Reflector) -> None:
    """Until the first list, or a 403: a kind we may not read (Secrets) must not block start-up.

    The reflector keeps retrying, so granting the permission later takes effect by itself.
    """
    while not reflector.synced.is_set():
        if reflector.stale and reflector.last_error.startswith("403"):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reflector.synced.wait(), 0.1)


def _steady(obj: JsonObj) -> JsonObj:
    """The object without what changes on every write (status, resourceVersion, managedFields).

    Our own status writes then leave the set unchanged instead of causing a new translation.
    """
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return obj
    clean = {k: v for k, v in meta.items() if k not in ("resourceVersion", "managedFields")}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": clean}
