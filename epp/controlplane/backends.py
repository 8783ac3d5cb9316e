"""HTTPRoute backendRefs and filters, resolved against the resources a source holds.

A backendRef becomes a `PoolBackend` (InferencePool, or the pool of an InferenceModel), a
`ServiceBackend` (a Service declared with a clusterIP or an externalName), or an `ErrorBackend`
that keeps its share of the weight and answers 500, as Gateway API asks for refs that cannot be
resolved. `resolve` calls this per rule and turns the findings into ResolvedRefs conditions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from epp.api.model import ModelRoute, Pool, ResourceSet, key_of
from epp.controlplane.priority import PriorityPolicy, policy_of

INFERENCE_GROUPS = frozenset(
    {"inference.networking.x-k8s.io", "inference.networking.k8s.io", "gateway.networking.x-k8s.io"}
)


@dataclass(frozen=True, slots=True)
class PoolBackend:
    pool: Pool
    weight: int
    pin: bool  # an InferencePool ref: the EPP must pick in exactly this pool


@dataclass(frozen=True, slots=True)
class ServiceBackend:
    key: str  # namespace/name
    port: int
    host: str
    weight: int
    dns: bool  # externalName: resolve by DNS


@dataclass(frozen=True, slots=True)
class ErrorBackend:
    weight: int
    status: int = 500


Backend = PoolBackend | ServiceBackend | ErrorBackend


@dataclass(frozen=True, slots=True)
class RefProblem:
    reason: str  # BackendNotFound | InvalidKind | UnsupportedValue
    message: str
    fatal: bool = True  # False: a note; the rule is still served


@dataclass(frozen=True, slots=True)
class Index:
    """Lookups by namespace/name over one ResourceSet."""

    pools: Mapping[str, Pool]
    models: Mapping[str, ModelRoute]
    services: Mapping[str, Mapping[str, object]]
    priority_filters: Mapping[str, Mapping[str, object]]

    @classmethod
    def of(cls, resources: ResourceSet) -> Index:
        services: dict[str, Mapping[str, object]] = {}
        filters: dict[str, Mapping[str, object]] = {}
        for doc in resources.other:
            kind = doc.get("kind")
            if kind == "Service":
                services[doc_key(doc)] = doc
            elif kind == "PriorityFilter":
                filters[doc_key(doc)] = doc
        return cls(
            {p.key: p for p in resources.pools},
            {m.key: m for m in resources.models},
            services,
            filters,
        )


def doc_key(doc: Mapping[str, object]) -> str:
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    namespace = meta.get("namespace")
    return key_of(namespace if isinstance(namespace, str) else "default", str(meta.get("name")))


def resolve_backends(
    refs: Sequence[Mapping[str, object]], namespace: str, index: Index
) -> tuple[tuple[Backend, ...], list[RefProblem]]:
    backends: list[Backend] = []
    problems: list[RefProblem] = []
    for ref in refs:
        raw_weight = ref.get("weight", 1)
        weight = raw_weight if isinstance(raw_weight, int) and raw_weight >= 0 else 1
        backend, problem = _one(ref, namespace, index, weight)
        if problem is not None:
            problems.append(problem)
        if weight > 0:
            backends.append(backend)
    return tuple(backends), problems


def _one(
    ref: Mapping[str, object], namespace: str, index: Index, weight: int
) -> tuple[Backend, RefProblem | None]:
    group = str(ref.get("group", "") or "")
    kind = str(ref.get("kind", "Service") or "Service")
    ns = ref.get("namespace", namespace)
    key = key_of(ns if isinstance(ns, str) else namespace, str(ref.get("name", "")))
    if group in INFERENCE_GROUPS and kind == "InferencePool":
        pool = index.pools.get(key)
        if pool is None:
            return ErrorBackend(weight), RefProblem("BackendNotFound", f"InferencePool {key}")
        return PoolBackend(pool, weight, pin=True), None
    if group in INFERENCE_GROUPS and kind == "InferenceModel":
        model = index.models.get(key)
        if model is None:
            return ErrorBackend(weight), RefProblem("BackendNotFound", f"InferenceModel {key}")
        pool = index.pools.get(model.pool)
        if pool is None:
            missing = f"InferencePool {model.pool} of InferenceModel {key}"
            return ErrorBackend(weight), RefProblem("BackendNotFound", missing)
        return PoolBackend(pool, weight, pin=False), None
    if group == "" and kind == "Service":
        return _service(ref, key, index, weight)
    return ErrorBackend(weight), RefProblem("InvalidKind", f"unsupported backend {group}/{kind}")


def _service(
    ref: Mapping[str, object], key: str, index: Index, weight: int
) -> tuple[Backend, RefProblem | None]:
    port = ref.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        problem = RefProblem("UnsupportedValue", f"Service {key}: backendRef needs a port")
        return ErrorBackend(weight), problem
    service = index.services.get(key)
    spec = service.get("spec") if service is not None else None
    if not isinstance(spec, dict):
        return ErrorBackend(weight), RefProblem("BackendNotFound", f"Service {key}")
    external = spec.get("externalName")
    if isinstance(external, str) and external:
        return ServiceBackend(key, port, external, weight, dns=True), None
    cluster_ip = spec.get("clusterIP")
    if isinstance(cluster_ip, str) and cluster_ip and cluster_ip != "None":
        return ServiceBackend(key, port, cluster_ip, weight, dns=False), None
    ns, name = key.split("/", 1)
    return ServiceBackend(key, port, f"{name}.{ns}.svc.cluster.local", weight, dns=True), None


def resolve_filters(
    filters: Sequence[Mapping[str, object]], namespace: str, index: Index
) -> tuple[PriorityPolicy | None, list[RefProblem]]:
    policy: PriorityPolicy | None = None
    problems: list[RefProblem] = []
    for flt in filters:
        if flt.get("type") != "ExtensionRef":
            problems.append(
                RefProblem("UnsupportedValue", f"filter type {flt.get('type')} is not supported")
            )
            continue
        ext = flt.get("extensionRef")
        ext = ext if isinstance(ext, dict) else {}
        key = key_of(namespace, str(ext.get("name", "")))
        if ext.get("kind") != "PriorityFilter":
            problems.append(RefProblem("InvalidKind", f"unsupported filter {ext.get('kind')}"))
            continue
        found = index.priority_filters.get(key)
        if found is None:
            # the seed's own manifests name a PriorityFilter they never define: serve the
            # route with the documented defaults rather than failing every request
            note = f"PriorityFilter {key} not found: its defaults apply"
            problems.append(RefProblem("ResolvedRefs", note, fatal=False))
            policy = PriorityPolicy()
            continue
        policy = policy_of(found)
    return policy, problems
