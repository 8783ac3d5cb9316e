"""Kubernetes mode's resource source: pools, models, pods and nodes from the API server.

`KubeSource` runs one `watch.Reflector` per kind and namespace (InferencePool and InferenceModel in
every served shape, Pods, Nodes), and turns their caches into the same `ResourceSet` that
`epp.sources.files.FolderSource` hands out: `await synced()` returns the first complete set (every
list answered), `watch()` yields a new set on every change. Scoping: given namespaces only, or one
named pool (`--pool-name/--pool-namespace`). A watch outage keeps the last known objects and adds
a `Stale` warning. Each selected pod carries its node's accelerator label (`PodInfo.accelerator`)
and what the GPU layer says of it (`dra.py`): a capacity prior from its DRA devices or its
device-plugin resources, and the health class of its devices' taints.
Meaning comes from `epp.api.parse`; `status.py` and `deployments.py` read `view()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field, replace

from epp.api.devices import DraIndex, device_plugin_capacity
from epp.api.model import PodInfo, Pool, Problem, ResourceSet, key_of
from epp.api.parse import parse_documents, parse_one
from epp.kube.client import (
    DEVICE_TAINT_RULES,
    MODEL_RESOURCES,
    NODES,
    PODS,
    POOL_RESOURCES,
    RESOURCE_CLAIMS,
    RESOURCE_CLASSES,
    RESOURCE_SLICES,
    JsonObj,
    KubeApi,
    Resource,
)
from epp.kube.watch import Changes, Reflector, WatchSettings

# plural → its versions, preferred first (an object served in several is read once)
DRA_PLURALS = {
    kinds[0].plural: tuple(k.version for k in kinds)
    for kinds in (RESOURCE_SLICES, RESOURCE_CLAIMS, RESOURCE_CLASSES, DEVICE_TAINT_RULES)
}
ACCELERATOR_LABELS = (
    "accelerator",
    "nvidia.com/gpu.product",
    "cloud.google.com/gke-accelerator",
)


@dataclass(frozen=True, slots=True)
class SourceConfig:
    namespaces: tuple[str, ...] = ()  # () = every namespace (cluster-wide lists)
    pool_name: str | None = None  # serve this one pool only
    pool_namespace: str = "default"
    watch_nodes: bool = True
    watch_devices: bool = True  # DRA claims, slices, classes and device taint rules
    watch: WatchSettings = field(default_factory=WatchSettings)
    debounce: float = 0.02  # coalesce a burst of events into one new set


@dataclass(frozen=True, slots=True)
class KubeView:
    """One consistent moment: the parsed set plus the in-scope raw objects it came from."""

    resources: ResourceSet
    raw: tuple[tuple[Resource, JsonObj], ...]  # pools and models as the server holds them
    stale: bool


def label_of(resource: Resource, obj: JsonObj) -> str:
    """The `Problem.source` of a watched object; `status.py` maps problems back with it."""
    meta = obj.get("metadata") or {}
    group = resource.group or "core"
    return f"{resource.plural}.{group}/{meta.get('namespace', '')}/{meta.get('name', '')}"


def _namespace_name(obj: JsonObj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def accelerator_of(labels: Mapping[str, str]) -> str | None:
    return next((labels[k] for k in ACCELERATOR_LABELS if k in labels), None)


class KubeSource:
    """Watches the cluster; `synced()` once, then `watch()`; `aclose()` stops the reflectors."""

    def __init__(self, api: KubeApi, config: SourceConfig) -> None:
        self.config = config
        self._changes = Changes()
        self._built = -1  # the generation `_view` was built from
        if config.pool_name:
            scopes: tuple[str | None, ...] = (config.pool_namespace,)
        else:
            scopes = config.namespaces or (None,)
        kinds = [*POOL_RESOURCES, *MODEL_RESOURCES, PODS]
        self.reflectors = [
            Reflector(api, kind, ns, config.watch, self._touch) for kind in kinds for ns in scopes
        ]
        if config.watch_nodes:
            self.reflectors.append(Reflector(api, NODES, None, config.watch, self._touch))
        if config.watch_devices:
            self.reflectors += [
                Reflector(api, kind, ns, config.watch, self._touch, optional=True)
                for kind in RESOURCE_CLAIMS
                for ns in scopes
            ]
            self.reflectors += [
                Reflector(api, kind, None, config.watch, self._touch, optional=True)
                for kind in (*RESOURCE_SLICES, *RESOURCE_CLASSES, *DEVICE_TAINT_RULES)
            ]
        self._tasks: list[asyncio.Task[None]] = []
        self._pods: dict[str, tuple[str, PodInfo | None]] = {}  # key → (resourceVersion, parsed)
        self._view: KubeView | None = None
        self.node_labels: dict[str, dict[str, str]] = {}

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(r.run(), name=f"reflector {r.name}") for r in self.reflectors
            ]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @property
    def stale(self) -> bool:
        return any(r.stale for r in self.reflectors)

    # ---- the FolderSource-shaped interface ---------------------------------------------------
    async def synced(self) -> ResourceSet:
        """The first complete set: returns only once every reflector has listed once."""
        self.start()
        await asyncio.gather(*(r.synced.wait() for r in self.reflectors))
        return self.view().resources

    async def watch(self, since: ResourceSet | None = None) -> AsyncGenerator[ResourceSet, None]:
        """A new set after every change (bursts coalesced), starting after the first sync.
        `since`: the set the caller already has (from `synced()`); a change that came between
        it and this call is handed out at once instead of waiting for the next one."""
        async for view in self.watch_views(since):
            yield view.resources

    async def watch_views(self, since: ResourceSet | None = None) -> AsyncGenerator[KubeView, None]:
        """A new `KubeView` after every change (bursts coalesced), starting after the first sync.

        Each consumer tracks the generation it has seen, so several consumers of one source
        (the serving feed and the leader's controller) never steal each other's wake-ups.
        """
        await self.synced()
        last = self.view()
        seen = self._built
        if since is not None and last.resources != since:
            yield last
        async for view in self._changes.follow(self.view, last, seen, self.config.debounce):
            yield view

    def _touch(self) -> None:
        self._changes.touch()

    def current(self) -> ResourceSet:
        """The latest set (possibly partial before `synced()` returns); never blocks."""
        return self.view().resources

    def view(self) -> KubeView:
        if self._view is None or self._built != self._changes.generation:
            self._built = self._changes.generation
            self._view = self._build()
        return self._view

    def accelerator(self, pod: PodInfo) -> str | None:
        return accelerator_of(self.node_labels.get(pod.node_name or "", {}))

    # ---- building a set ---------------------------------------------------------------------
    def _build(self) -> KubeView:
        docs: list[tuple[str, object]] = []
        raw: list[tuple[Resource, JsonObj]] = []
        pods: list[JsonObj] = []
        nodes: dict[str, dict[str, str]] = {}
        devices: dict[str, dict[str, JsonObj]] = {}  # plural → key → the preferred version's
        for reflector in self.reflectors:
            kind = reflector.resource
            if kind.plural in DRA_PLURALS:
                seen = devices.setdefault(kind.plural, {})
                for key, obj in reflector.objects.items():
                    versions = DRA_PLURALS[kind.plural]
                    old = seen.get(key)
                    if old is None or versions.index(kind.version) < versions.index(
                        str(old.get("apiVersion", "")).rpartition("/")[2]
                    ):
                        seen[key] = obj
                continue
            for obj in reflector.objects.values():
                if kind is PODS:
                    pods.append(obj)
                elif kind is NODES:
                    meta = obj.get("metadata") or {}
                    nodes[str(meta.get("name", ""))] = dict(meta.get("labels") or {})
                elif self._in_scope(kind, obj):
                    docs.append((label_of(kind, obj), obj))
                    raw.append((kind, obj))
        parsed = parse_documents(docs)
        pools = parsed.pools
        if self.config.pool_name:
            wanted = key_of(self.config.pool_namespace, self.config.pool_name)
            pools = tuple(p for p in pools if p.key == wanted)
        selected = tuple(
            replace(p, accelerator=accelerator_of(nodes.get(p.node_name, {})) or p.accelerator)
            if p.node_name
            else p
            for p in self._selected_pods(pods, pools)
        )
        selected = self._with_gpu_facts(selected, pods, nodes, devices)
        problems = list(parsed.problems)
        stale = [r for r in self.reflectors if r.stale]
        for r in stale:
            message = f"watch failing ({r.last_error}); serving the last known state"
            problems.append(
                Problem(r.name, r.resource.kind, "*", "(watch)", message, "warning", "Stale")
            )
        self.node_labels = nodes
        return KubeView(
            replace(parsed, pools=pools, pods=selected, problems=tuple(problems)),
            tuple(raw),
            bool(stale),
        )

    def _with_gpu_facts(
        self,
        selected: tuple[PodInfo, ...],
        pods: list[JsonObj],
        nodes: dict[str, dict[str, str]],
        devices: dict[str, dict[str, JsonObj]],
    ) -> tuple[PodInfo, ...]:
        """Each pod with the capacity prior and taint health its GPUs give it: its DRA devices
        first, else its device-plugin resources (`nvidia.com/gpu`, `nvidia.com/mig-…`)."""
        if not selected:
            return selected
        index = DraIndex(
            devices.get("resourceslices", {}).values(),
            devices.get("resourceclaims", {}).values(),
            devices.get("devicetaintrules", {}).values(),
            devices.get("resourceclasses", {}).values(),
            pods,
        )
        raw = {key_of(*_namespace_name(obj)): obj for obj in pods}
        out = []
        for pod in selected:
            obj = raw.get(pod.key)
            if obj is None:
                out.append(pod)
                continue
            facts = index.facts(obj, pod.accelerator)
            capacity = facts.capacity
            if capacity is None:
                labels = nodes.get(pod.node_name or "", {})
                capacity = device_plugin_capacity(obj, pod.accelerator, labels)
            changed = capacity != pod.capacity or facts.health != pod.device_health
            out.append(
                replace(pod, capacity=capacity, device_health=facts.health) if changed else pod
            )
        return tuple(out)

    def _in_scope(self, kind: Resource, obj: JsonObj) -> bool:
        name = self.config.pool_name
        if not name:
            return True
        meta = obj.get("metadata") or {}
        if meta.get("namespace") != self.config.pool_namespace:
            return False
        if kind in POOL_RESOURCES:
            return meta.get("name") == name
        spec = obj.get("spec") or {}
        ref = spec.get("poolRef") if isinstance(spec, dict) else None
        return isinstance(ref, dict) and ref.get("name") == name

    def _selected_pods(self, pods: list[JsonObj], pools: tuple[Pool, ...]) -> tuple[PodInfo, ...]:
        """Pods some pool selects, parsed once per resourceVersion."""
        selectors = [(p.namespace, p.selector) for p in pools]
        cache: dict[str, tuple[str, PodInfo | None]] = {}
        out: list[PodInfo] = []
        for obj in pods:
            meta = obj.get("metadata") or {}
            key = key_of(str(meta.get("namespace", "")), str(meta.get("name", "")))
            version = str(meta.get("resourceVersion", ""))
            hit = self._pods.get(key)
            if hit is None or hit[0] != version:
                outcome = parse_one(key, obj)
                value = outcome.value if isinstance(outcome.value, PodInfo) else None
                hit = (version, value)
            cache[key] = hit
            pod = hit[1]
            if pod is None:
                continue
            labels = dict(pod.labels)
            if any(
                ns == pod.namespace and sel and all(labels.get(k) == v for k, v in sel)
                for ns, sel in selectors
            ):
                out.append(pod)
        self._pods = cache
        return tuple(out)
