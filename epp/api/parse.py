"""Entry point of the resource model: documents of any supported shape in, one `ResourceSet` out.

`parse_documents` dispatches each (source label, document) by apiVersion and kind to the
shape readers (`seed`, `upstream`, `core`), turns their findings into `Problem`s, and hands the
survivors to `semantics.resolve` for the cross-resource checks. `parse_one` is the
single-document form (its problems, and the value when there are no errors). Neighbours: `load`
feeds it from files, `epp.sources` from folders or the API server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from epp.api import core, devices, dra, seed, upstream
from epp.api.core import Meta
from epp.api.fields import Findings, Obj, type_name
from epp.api.model import ModelRoute, PodInfo, Pool, Problem, ResourceSet, key_of
from epp.api.semantics import Parsed, resolve

Value = Pool | ModelRoute | PodInfo | dict[str, object]
Reader = Callable[[Obj, Meta, str], Pool | ModelRoute]

SEED_GROUP = "gateway.networking.x-k8s.io"
READERS: dict[tuple[str, str], Reader] = {
    (f"{SEED_GROUP}/v1alpha1", "InferencePool"): seed.read_pool,
    (f"{SEED_GROUP}/v1alpha1", "InferenceModel"): seed.read_model,
    (f"{upstream.GROUP_X}/v1alpha2", "InferencePool"): upstream.read_pool_v1alpha2,
    (f"{upstream.GROUP_X}/v1alpha2", "InferenceModel"): upstream.read_model_v1alpha2,
    (f"{upstream.GROUP_V1}/v1", "InferencePool"): upstream.read_pool_v1,
}
INFERENCE_KINDS = ("InferencePool", "InferenceModel")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one document gave: a value when it passed its own checks, and the findings."""

    kind: str
    name: str
    value: Value | None
    problems: tuple[Problem, ...]


def parse_documents(docs: Iterable[tuple[str, object]]) -> ResourceSet:
    items: list[Parsed] = []
    problems: list[Problem] = []
    raw_pods: dict[str, dict[str, object]] = {}
    for label, doc in _expand(docs):
        outcome = parse_one(label, doc)
        problems.extend(outcome.problems)
        if outcome.value is not None:
            key = _key_of(outcome.value)
            items.append(Parsed(label, outcome.kind, key, outcome.value, len(items)))
            if isinstance(outcome.value, PodInfo) and isinstance(doc, dict):
                raw_pods[key] = doc
    return _with_devices(resolve(items, problems), raw_pods)


def _with_devices(resources: ResourceSet, raw_pods: dict[str, dict[str, object]]) -> ResourceSet:
    """File mode: the pods' capacity priors and taint health from the DRA documents beside
    them (and their device-plugin resources), as Kubernetes mode reads them from the cluster."""
    dra_docs = [d for d in resources.other if d.get("kind") in devices.DRA_KINDS]
    if not raw_pods or not (dra_docs or any(_asks_gpus(d) for d in raw_pods.values())):
        return resources
    by_key = {p.key: p for p in resources.pods}
    found = devices.with_gpu_facts(
        ((k, by_key[k].accelerator, raw) for k, raw in raw_pods.items() if k in by_key),
        dra_docs,
    )
    if not found:
        return resources
    pods = tuple(
        replace(p, capacity=found[p.key].capacity, device_health=found[p.key].health)
        if p.key in found
        else p
        for p in resources.pods
    )
    return replace(resources, pods=pods)


def _asks_gpus(pod: dict[str, object]) -> bool:
    spec = pod.get("spec")
    return isinstance(spec, dict) and (
        bool(spec.get("resourceClaims")) or "nvidia.com/" in str(spec.get("containers"))
    )


def parse_one(label: str, doc: object) -> Outcome:
    findings = Findings()
    value, kind, name, warning = _dispatch(doc, findings)
    problems = [Problem(label, kind, name, path, msg) for path, msg in findings.items]
    if warning:
        problems.append(Problem(label, kind, name, "kind", warning, "warning", "UnknownKind"))
    if isinstance(doc, dict):  # the seed's DRA shapes: accepted, with what to write instead
        problems += [
            Problem(label, kind, name, path, msg, "warning", dra.REASON)
            for path, msg in dra.notes(doc)
        ]
    return Outcome(kind, name, None if findings.items else value, tuple(problems))


def _dispatch(doc: object, findings: Findings) -> tuple[Value | None, str, str, str]:
    """(value, kind, name, warning): the reader's result, or why the document is not used."""
    if not isinstance(doc, dict):
        findings.add("(document)", f"must be an object, got {type_name(doc)}")
        return None, "", "", ""
    obj = Obj(doc, "", findings)
    api_version = obj.string("apiVersion", required=True, max_len=253)
    kind = obj.string("kind", required=True, max_len=63)
    name = _name_of(doc)
    if api_version is None or kind is None:
        return None, kind or "", name, ""
    reader = READERS.get((api_version, kind))
    if reader is not None:
        return reader(obj, core.read_meta(obj), api_version), kind, name, ""
    if kind in INFERENCE_KINDS:
        known = sorted(v for v, k in READERS if k == kind)
        findings.add("apiVersion", f"{kind} is served as {', '.join(known)}; got {api_version!r}")
        return None, kind, name, ""
    if api_version == f"{SEED_GROUP}/v1alpha1" and kind == "PriorityFilter":
        return core.read_priority_filter(obj), kind, name, ""
    if api_version == "v1" and kind == "Pod":
        return core.read_pod(obj), kind, name, ""
    if (core.group_of(api_version), kind) in core.RAW_KINDS or (
        core.group_of(api_version) == dra.GROUP and kind in dra.KINDS
    ):
        return core.read_other(obj), kind, name, ""
    return None, kind, name, f"{api_version} {kind} is not used by the gateway; ignored"


def _name_of(doc: dict[object, object]) -> str:
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else ""


def _key_of(value: Value) -> str:
    if isinstance(value, dict):
        meta = value.get("metadata")
        if not isinstance(meta, dict):
            return ""
        namespace = meta.get("namespace")
        ns = namespace if isinstance(namespace, str) else core.DEFAULT_NAMESPACE
        return key_of(ns, str(meta.get("name", "")))
    return value.key


def _expand(docs: Iterable[tuple[str, object]]) -> Iterator[tuple[str, object]]:
    """Unfolds `kind: List` / `*List` documents (kubectl get -o yaml) into their items."""
    for label, doc in docs:
        if doc is None:
            continue
        kind = doc.get("kind") if isinstance(doc, dict) else None
        items = doc.get("items") if isinstance(doc, dict) else None
        if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
            for i, item in enumerate(items):
                yield f"{label}.items[{i}]", item
        else:
            yield label, doc
