"""References from raw HTTPRoutes to the inference resources, for the cross-resource checks.

HTTPRoutes stay raw dicts (the control plane translates them), but a route whose backendRef
names an InferenceModel or InferencePool that does not exist, or whose ExtensionRef filter names
a missing PriorityFilter, is worth a warning at validation time. `semantics` does the check;
this module only walks the route's untyped structure safely.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from epp.api.model import key_of

BACKEND_KINDS = ("InferenceModel", "InferencePool")
FILTER_KINDS = ("PriorityFilter",)


def _dicts(value: object) -> Iterator[tuple[int, Mapping[str, object]]]:
    if isinstance(value, list):
        yield from ((i, item) for i, item in enumerate(value) if isinstance(item, dict))


def _ref_key(ref: Mapping[str, object], namespace: str) -> str | None:
    name = ref.get("name")
    ns = ref.get("namespace", namespace)
    if not isinstance(name, str) or not isinstance(ns, str):
        return None
    return key_of(ns, name)


def route_refs(route: Mapping[str, object], namespace: str) -> Iterator[tuple[str, str, str]]:
    """(field path, kind, namespace/name) of every inference backend and filter it names."""
    spec = route.get("spec")
    if not isinstance(spec, dict):
        return
    for r, rule in _dicts(spec.get("rules")):
        for b, backend in _dicts(rule.get("backendRefs")):
            key = _ref_key(backend, namespace)
            kind = backend.get("kind")
            if kind in BACKEND_KINDS and key is not None:
                yield f"spec.rules[{r}].backendRefs[{b}].name", str(kind), key
        for f, flt in _dicts(rule.get("filters")):
            ext = flt.get("extensionRef")
            if not isinstance(ext, dict):
                continue
            key = _ref_key({"name": ext.get("name")}, namespace)
            kind = ext.get("kind")
            if kind in FILTER_KINDS and key is not None:
                yield f"spec.rules[{r}].filters[{f}].extensionRef.name", str(kind), key
