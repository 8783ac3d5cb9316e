"""HTTPRoute rules → Envoy routes, in Gateway API precedence order, with weights and FailOpen.

Each match of a rule becomes routes; a rule with several backends becomes one route per backend,
chosen by a cumulative `runtime_fraction`: Envoy draws one random value per request (the stream
id), so a request re-matched after ext_proc clears the route cache stays on its backend. A route
to a pool enables that pool's ext_proc filter and sets the trusted headers; a FailOpen pool gets
a second route, taken when the EPP set no `envoy.lb` pick, to the pool's pods. A host that
routes to a pool also gets, last (so that any rule of the user's matches first), a route for
`GET /v1/models` through that pool's EPP, which answers it with the model catalog. `translate`
calls `route_config`; names and shapes come from `clusters`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from typing import Any

from epp.controlplane import clusters as cl
from epp.controlplane.backends import ErrorBackend, PoolBackend, ServiceBackend
from epp.controlplane.matches import Match
from epp.controlplane.priority import POLICY_HEADER
from epp.controlplane.resolve import Attachment, Rule

MUTATION = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3"
CONTROL_HEADERS = (
    cl.DESTINATION_HEADER,
    f"{cl.DESTINATION_HEADER}-subset",
    POLICY_HEADER,
    cl.POOL_HEADER,
    "x-gateway-model-name-rewrite",
    "x-gateway-inference-objective",
    "x-gateway-inference-fairness-id",
)


def route_config(
    name: str, attachments: list[Attachment], options: cl.TranslateOptions, fb: Collection[str]
) -> dict[str, Any]:
    by_domain: dict[str, dict[tuple[str, int, int], tuple[tuple[Any, ...], list[Any]]]] = {}
    catalog: dict[str, tuple[Rule, PoolBackend]] = {}  # per domain, the first pool routed to
    for att in attachments:
        for rule in att.rules:
            for i, match in enumerate(rule.matches):
                entry = (_precedence(match, rule), _routes(rule, i, match, options, fb))
                for domain in att.domains:
                    by_domain.setdefault(domain, {})[(rule.route, rule.index, i)] = entry
            pools = [b for b in rule.backends if isinstance(b, PoolBackend)]
            for domain in att.domains if pools else ():
                catalog.setdefault(domain, (rule, pools[0]))
    hosts = []
    for domain in sorted(by_domain):
        entries = sorted(by_domain[domain].values(), key=lambda e: e[0])
        routes = [r for _key, found in entries for r in found]
        if domain in catalog:
            routes += _catalog_routes(*catalog[domain], options, fb)
        hosts.append({"name": domain, "domains": [domain], "routes": routes})
    return {"name": name, "virtual_hosts": hosts}


def _catalog_routes(
    rule: Rule, backend: PoolBackend, options: cl.TranslateOptions, fb: Collection[str]
) -> list[dict[str, Any]]:
    """GET /v1/models[/name] through a pool's EPP, which answers it without asking a pod."""
    match = {
        "path_separated_prefix": "/v1/models",
        "headers": [_header("Exact", ":method", "GET")],
    }
    plain = replace(rule, priority=None)
    pool = replace(backend, pin=False)
    return _backend_routes("gateway/v1-models", match, pool, plain, options, fb)


def _precedence(match: Match, rule: Rule) -> tuple[Any, ...]:
    """Gateway API order: exact path, longest prefix, method, most headers, most query params."""
    path_rank = {"Exact": 0, "PathPrefix": 1}.get(match.path_type, 2)
    return (
        path_rank,
        -len(match.path),
        match.method is None,
        -len(match.headers),
        -len(match.query),
        rule.created or "~",
        rule.route,
        rule.index,
    )


def _match(match: Match) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if match.path_type == "Exact":
        out["path"] = match.path
    elif match.path_type == "RegularExpression":
        out["safe_regex"] = {"regex": match.path}
    elif match.path == "/":
        out["prefix"] = "/"
    else:
        out["path_separated_prefix"] = match.path.rstrip("/")
    headers = [_header(kind, name, value) for kind, name, value in match.headers]
    if match.method:
        headers.append(_header("Exact", ":method", match.method))
    if headers:
        out["headers"] = headers
    if match.query:
        out["query_parameters"] = [
            {"name": n, "string_match": {"safe_regex": {"regex": v}}}
            if kind == "RegularExpression"
            else {"name": n, "string_match": {"exact": v}}
            for kind, n, v in match.query
        ]
    return out


def _header(kind: str, name: str, value: str) -> dict[str, Any]:
    if kind == "RegularExpression":
        return {"name": name, "string_match": {"safe_regex": {"regex": value}}}
    return {"name": name, "string_match": {"exact": value}}


def _routes(
    rule: Rule, index: int, match: Match, options: cl.TranslateOptions, fb: Collection[str]
) -> list[dict[str, Any]]:
    base = _match(match)
    label = f"{rule.route}/rules[{rule.index}]/matches[{index}]"
    if not rule.backends:
        return [{"name": label, "match": base, "direct_response": {"status": 500}}]
    total = sum(b.weight for b in rule.backends)
    out: list[dict[str, Any]] = []
    upto = 0
    for i, backend in enumerate(rule.backends):
        upto += backend.weight
        match_dict = dict(base)
        if i < len(rule.backends) - 1:
            match_dict["runtime_fraction"] = {
                "default_value": {"numerator": upto * 1_000_000 // total, "denominator": "MILLION"},
                "runtime_key": f"epp.{label}.backend{i}",
            }
        routes = _backend_routes(f"{label}/backends[{i}]", match_dict, backend, rule, options, fb)
        out.extend(routes)
    return out


def _backend_routes(
    label: str,
    match: dict[str, Any],
    backend: PoolBackend | ServiceBackend | ErrorBackend,
    rule: Rule,
    options: cl.TranslateOptions,
    fallbacks: Collection[str],
) -> list[dict[str, Any]]:
    if isinstance(backend, ErrorBackend):
        return [{"name": label, "match": match, "direct_response": {"status": backend.status}}]
    timeout = f"{rule.timeout if rule.timeout is not None else options.route_timeout_s:g}s"
    sets: list[tuple[str, str]] = []
    if rule.priority is not None:
        sets.append((POLICY_HEADER, rule.priority.header_value()))
    per_filter: dict[str, Any] = {}
    if isinstance(backend, ServiceBackend):
        cluster = cl.service_cluster_name(backend)
    else:
        pool = backend.pool
        cluster = cl.pool_cluster_name(pool)
        if backend.pin:
            sets.append((cl.POOL_HEADER, pool.key))
        address = cl.epp_address(pool, options)
        fail_open = pool.failure_mode == "FailOpen"
        per_filter[cl.ext_proc_filter_name(address, fail_open)] = {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3"
                ".ExtProcPerRoute",
                "overrides": {"failure_mode_allow": fail_open},
            },
        }
    per_filter["envoy.filters.http.header_mutation"] = _mutation(sets)
    action = {"cluster": cluster, "timeout": timeout, "idle_timeout": "300s"}
    route = {"name": label, "match": match, "route": action, "typed_per_filter_config": per_filter}
    if not (isinstance(backend, PoolBackend) and backend.pool.failure_mode == "FailOpen"):
        return [route]
    picked = dict(match)
    picked["dynamic_metadata"] = [
        {
            "filter": "envoy.lb",
            "path": [{"key": cl.DESTINATION_HEADER}],
            "value": {"present_match": True},
        }
    ]
    fallback: dict[str, Any] = {"name": f"{label}/fallback", "match": match}
    if cl.fallback_cluster_name(backend.pool) in fallbacks:
        fallback["route"] = dict(action, cluster=cl.fallback_cluster_name(backend.pool))
    else:
        fallback["direct_response"] = {"status": 503}
    fallback["typed_per_filter_config"] = per_filter
    return [dict(route, match=picked), fallback]


def _mutation(sets: list[tuple[str, str]]) -> dict[str, Any]:
    """Clients never choose the control headers: they are removed, then set by the route."""
    mutations: list[dict[str, Any]] = [{"remove": h} for h in CONTROL_HEADERS]
    mutations += [
        {
            "append": {
                "header": {"key": key, "value": value},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        }
        for key, value in sets
    ]
    return {
        "@type": f"{MUTATION}.HeaderMutationPerRoute",
        "mutations": {"request_mutations": mutations},
    }
