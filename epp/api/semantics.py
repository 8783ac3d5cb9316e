"""Cross-resource checks, run once every document of a set has been parsed on its own.

Duplicated resources, a poolRef to a pool that does not exist (`PoolNotFound`), canary split
entries whose pool is missing (warned and dropped: traffic goes to the pools that exist), and a
modelName claimed twice (the oldest resource wins, the others get `ModelNameInUse`);
HTTPRoutes naming a missing InferenceModel/InferencePool/PriorityFilter (warnings). Called by
`parse.parse_documents`; produces the final `ResourceSet`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from epp.api.model import ModelRoute, PodInfo, Pool, Problem, ResourceSet
from epp.api.routes import BACKEND_KINDS, route_refs

SEED_API = "gateway.networking.x-k8s.io/v1alpha1"
Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Parsed:
    """One resource that passed its own schema checks, with where it came from."""

    source: str
    kind: str
    key: str  # namespace/name
    value: Pool | ModelRoute | PodInfo | dict[str, object]
    order: int  # position in the input, breaks creation-time ties

    @property
    def name(self) -> str:
        return self.key.partition("/")[2]


def resolve(items: list[Parsed], problems: list[Problem]) -> ResourceSet:
    seen: dict[tuple[str, str], Parsed] = {}
    unique: list[Parsed] = []
    for item in items:
        first = seen.get((item.kind, item.key))
        if first is not None:
            problems.append(
                _problem(item, "metadata.name", f"duplicate of {first.source}", "Duplicate")
            )
            continue
        seen[(item.kind, item.key)] = item
        unique.append(item)

    pools = {i.value.key: i.value for i in unique if isinstance(i.value, Pool)}
    routes = [
        route
        for item in unique
        if isinstance(item.value, ModelRoute)
        and (route := _check_refs(item, item.value, pools, problems)) is not None
    ]
    models = _claim_names(routes, problems)
    known = {(i.kind, i.key) for i in unique if not isinstance(i.value, ModelRoute)}
    known |= {(m.kind, m.key) for m in models}
    _check_http_routes(unique, known, problems)
    return ResourceSet(
        pools=tuple(pools.values()),
        models=tuple(r.value for r in models if isinstance(r.value, ModelRoute)),
        pods=tuple(i.value for i in unique if isinstance(i.value, PodInfo)),
        other=tuple(i.value for i in unique if isinstance(i.value, dict)),
        problems=tuple(problems),
    )


def _problem(
    item: Parsed, path: str, message: str, reason: str, severity: Severity = "error"
) -> Problem:
    return Problem(item.source, item.kind, item.name, path, message, severity, reason)


def _check_refs(
    item: Parsed, route: ModelRoute, pools: dict[str, Pool], problems: list[Problem]
) -> Parsed | None:
    if route.pool not in pools:
        problems.append(
            _problem(
                item, "spec.poolRef.name", f"InferencePool {route.pool} not found", "PoolNotFound"
            )
        )
        return None
    if all(s.pool is None for s in route.splits):
        return item
    base = "spec.routing.trafficSplit" if route.api_version == SEED_API else "spec.targetModels"
    kept = []
    for i, split in enumerate(route.splits):
        if split.pool is None or split.pool in pools:
            kept.append(split)
            continue
        problems.append(
            _problem(
                item,
                f"{base}[{i}].poolRef.name",
                f"InferencePool {split.pool} not found; its weight {split.weight} is dropped",
                "PoolNotFound",
                "warning",
            )
        )
    if not kept:
        problems.append(
            _problem(item, base, "no split entry points at an existing pool", "PoolNotFound")
        )
        return None
    if all(s.weight == 0 for s in kept):
        problems.append(_problem(item, base, "every split entry left has weight 0", "PoolNotFound"))
        return None
    if len(kept) == len(route.splits):
        return item
    return replace(item, value=replace(route, splits=tuple(kept)))


def _check_http_routes(
    items: list[Parsed], known: set[tuple[str, str]], problems: list[Problem]
) -> None:
    for item in items:
        if item.kind != "HTTPRoute" or not isinstance(item.value, dict):
            continue
        namespace = item.key.partition("/")[0]
        for path, kind, key in route_refs(item.value, namespace):
            if (kind, key) not in known:
                if kind in BACKEND_KINDS:
                    reason, effect = "BackendNotFound", "requests sent to it will fail"
                else:
                    reason, effect = "FilterNotFound", "the filter cannot be applied"
                message = f"{kind} {key} not found; {effect}"
                problems.append(_problem(item, path, message, reason, "warning"))


def _claim_names(routes: list[Parsed], problems: list[Problem]) -> list[Parsed]:
    """Oldest creationTimestamp wins a modelName; unknown timestamps count as newest."""
    by_name: dict[str, list[Parsed]] = {}
    for item in routes:
        if isinstance(item.value, ModelRoute):
            by_name.setdefault(item.value.model_name, []).append(item)
    losers: set[int] = set()
    for name, claims in by_name.items():
        if len(claims) < 2:
            continue
        ranked = sorted(claims, key=_age_key)
        winner = ranked[0]
        for loser in ranked[1:]:
            losers.add(loser.order)
            problems.append(
                _problem(
                    loser,
                    "spec.modelName",
                    f"model name {name!r} is already claimed by {winner.kind} {winner.key}",
                    "ModelNameInUse",
                )
            )
    return [item for item in routes if item.order not in losers]


def _age_key(item: Parsed) -> tuple[int, str, int]:
    created = item.value.created_at if isinstance(item.value, ModelRoute) else ""
    return (0 if created else 1, created, item.order)
