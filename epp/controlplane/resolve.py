"""Gateway API semantics: Gateways' listeners, HTTPRoutes attached to them, and their status.

Reads the raw Gateway and HTTPRoute dicts of a `ResourceSet` into small frozen values (`Listener`,
`Rule`, `Match`, `Attachment`) that `translate` turns into Envoy config, and decides the
conditions `status` reports: Gateway Accepted, listener ResolvedRefs (certificates), route parent
Accepted (NoMatchingParent, NotAllowedByListeners, NoMatchingListenerHostname, UnsupportedValue)
and ResolvedRefs (BackendNotFound, InvalidKind). Backend lookups live in `backends`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from epp.api.model import ResourceSet
from epp.controlplane.backends import Backend, Index, doc_key, resolve_backends, resolve_filters
from epp.controlplane.matches import Match, domains, duration, parse_match
from epp.controlplane.priority import PriorityPolicy
from epp.controlplane.status import (
    Condition,
    GatewayStatus,
    ListenerStatus,
    ParentStatus,
    RouteStatus,
    Status,
    StatusReport,
)

GATEWAY_GROUP = "gateway.networking.k8s.io"
OK: Status = "True"


@dataclass(frozen=True, slots=True)
class Listener:
    gateway: str  # namespace/name
    name: str
    port: int
    protocol: str  # HTTP | HTTPS
    hostname: str | None
    secret: str | None  # namespace/name of the certificate Secret (HTTPS)
    same_namespace_only: bool

    @property
    def key(self) -> str:
        return f"{self.gateway}/{self.name}"


@dataclass(frozen=True, slots=True)
class Rule:
    route: str  # namespace/name of the HTTPRoute
    index: int
    matches: tuple[Match, ...]
    backends: tuple[Backend, ...]
    priority: PriorityPolicy | None
    timeout: float | None
    created: str


@dataclass(frozen=True, slots=True)
class Attachment:
    listener: Listener
    domains: tuple[str, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Resolved:
    listeners: tuple[Listener, ...]
    attachments: tuple[Attachment, ...]
    status: StatusReport


def resolve(
    resources: ResourceSet, secrets: Collection[str], gateway_classes: Collection[str] = ()
) -> Resolved:
    """`secrets`: Secret keys usable as certificates; `gateway_classes`: ours (empty = any)."""
    index = Index.of(resources)
    gateways = [d for d in resources.other if _is(d, "Gateway")]
    if gateway_classes:
        gateways = [g for g in gateways if _spec(g).get("gatewayClassName") in gateway_classes]
    listeners: list[Listener] = []
    gw_status: dict[str, tuple[list[Condition], list[tuple[Listener | None, str, Condition]]]] = {}
    for gw in gateways:
        found, per_listener = _listeners(gw, secrets)
        listeners.extend(found)
        gw_status[doc_key(gw)] = ([Condition("Accepted", OK, "Accepted")], per_listener)
    attachments: list[Attachment] = []
    routes: list[RouteStatus] = []
    for route in (d for d in resources.other if _is(d, "HTTPRoute")):
        attached, status = _route(route, listeners, index)
        attachments.extend(attached)
        routes.append(status)
    counts: dict[str, int] = {}
    for att in attachments:
        counts[att.listener.key] = counts.get(att.listener.key, 0) + 1
    report = StatusReport(
        tuple(
            GatewayStatus(
                key,
                tuple(conds),
                tuple(
                    ListenerStatus(name, counts.get(f"{key}/{name}", 0), (cond,))
                    for _l, name, cond in per
                ),
            )
            for key, (conds, per) in gw_status.items()
        ),
        tuple(routes),
    )
    return Resolved(tuple(listeners), tuple(attachments), report)


def _is(doc: Mapping[str, object], kind: str) -> bool:
    api = str(doc.get("apiVersion", ""))
    return doc.get("kind") == kind and api.startswith(GATEWAY_GROUP + "/")


def _spec(doc: Mapping[str, object]) -> dict[str, Any]:
    spec = doc.get("spec")
    return spec if isinstance(spec, dict) else {}


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _listeners(
    gw: Mapping[str, object], secrets: Collection[str]
) -> tuple[list[Listener], list[tuple[Listener | None, str, Condition]]]:
    key = doc_key(gw)
    namespace = key.split("/", 1)[0]
    out: list[Listener] = []
    report: list[tuple[Listener | None, str, Condition]] = []
    protocols: dict[int, str] = {}
    hosts: set[tuple[int, str | None]] = set()
    for raw in _list(_spec(gw).get("listeners")):
        name, port, protocol = str(raw.get("name", "")), raw.get("port"), raw.get("protocol")
        hostname = raw.get("hostname") if isinstance(raw.get("hostname"), str) else None
        tls: dict[str, Any] = raw["tls"] if isinstance(raw.get("tls"), dict) else {}
        if protocol not in ("HTTP", "HTTPS") or not isinstance(port, int):
            why = f"protocol {protocol} is not supported (HTTP, HTTPS)"
            report.append((None, name, Condition("Accepted", "False", "UnsupportedProtocol", why)))
            continue
        if protocols.setdefault(port, protocol) != protocol:
            why = f"port {port} is already used with {protocols[port]}"
            report.append((None, name, Condition("Conflicted", OK, "ProtocolConflict", why)))
            continue
        if protocol == "HTTPS" and (port, hostname) in hosts:
            why = f"another HTTPS listener on port {port} has the same hostname"
            report.append((None, name, Condition("Conflicted", OK, "HostnameConflict", why)))
            continue
        hosts.add((port, hostname))
        secret = None
        if protocol == "HTTPS":
            refs = _list(tls.get("certificateRefs"))
            secret = (
                f"{refs[0].get('namespace', namespace)}/{refs[0].get('name')}" if refs else None
            )
            if secret is None or secret not in secrets:
                why = f"certificate Secret {secret or '(none)'} not found"
                bad = Condition("ResolvedRefs", "False", "InvalidCertificateRef", why)
                report.append((None, name, bad))
                continue
        allowed = _dict(raw.get("allowedRoutes"))
        same = _dict(allowed.get("namespaces")).get("from", "Same") == "Same"
        listener = Listener(key, name, port, protocol, hostname, secret, same)
        out.append(listener)
        report.append((listener, name, Condition("Accepted", OK, "Accepted")))
    return out, report


def _route(
    route: Mapping[str, object], listeners: list[Listener], index: Index
) -> tuple[list[Attachment], RouteStatus]:
    key = doc_key(route)
    namespace = key.split("/", 1)[0]
    spec = _spec(route)
    hostnames = [h for h in spec.get("hostnames", []) if isinstance(h, str)]
    created = str(_dict(route.get("metadata")).get("creationTimestamp", ""))
    rules: list[Rule] = []
    ref_problems: list[str] = []
    notes: list[str] = []
    ref_reason = "ResolvedRefs"
    invalid: str | None = None
    for i, raw in enumerate(_list(spec.get("rules"))):
        backends, problems = resolve_backends(_list(raw.get("backendRefs")), namespace, index)
        policy, filter_problems = resolve_filters(_list(raw.get("filters")), namespace, index)
        for problem in (*problems, *filter_problems):
            if not problem.fatal:
                notes.append(f"rules[{i}]: {problem.message}")
                continue
            ref_reason = problem.reason if ref_reason == "ResolvedRefs" else ref_reason
            ref_problems.append(f"rules[{i}]: {problem.message}")
        try:
            matches = tuple(parse_match(m) for m in _list(raw.get("matches"))) or (parse_match({}),)
            timeout = duration(_dict(raw.get("timeouts")).get("request"))
        except ValueError as exc:
            invalid = f"rules[{i}]: {exc}"
            continue
        if any(p.fatal for p in filter_problems):
            backends = ()  # a filter that cannot be applied must not be skipped: answer 500
        rules.append(Rule(key, i, matches, backends, policy, timeout, created))
    refs = (
        Condition("ResolvedRefs", "False", ref_reason, "; ".join(ref_problems))
        if ref_problems
        else Condition("ResolvedRefs", OK, "ResolvedRefs", "; ".join(notes))
    )
    attachments: list[Attachment] = []
    parents: list[ParentStatus] = []
    for ref in _list(spec.get("parentRefs")):
        gw = f"{ref.get('namespace', namespace)}/{ref.get('name')}"
        section = ref.get("sectionName")
        label = f"{gw}/{section}" if section else gw
        if invalid is not None:
            accepted = Condition("Accepted", "False", "UnsupportedValue", invalid)
            parents.append(ParentStatus(label, (accepted, refs)))
            continue
        found, accepted = _attach(gw, ref, namespace, hostnames, listeners)
        attachments.extend(Attachment(ls, domains, tuple(rules)) for ls, domains in found)
        parents.append(ParentStatus(label, (accepted, refs)))
    return attachments, RouteStatus(key, tuple(parents))


def _attach(
    gw: str,
    ref: Mapping[str, object],
    namespace: str,
    hostnames: list[str],
    listeners: list[Listener],
) -> tuple[list[tuple[Listener, tuple[str, ...]]], Condition]:
    candidates = [ls for ls in listeners if ls.gateway == gw]
    if not candidates:
        return [], Condition("Accepted", "False", "NoMatchingParent", f"no Gateway {gw}")
    section, port = ref.get("sectionName"), ref.get("port")
    candidates = [
        ls
        for ls in candidates
        if (section is None or ls.name == section) and (port is None or ls.port == port)
    ]
    allowed = [
        ls for ls in candidates if not ls.same_namespace_only or gw.startswith(namespace + "/")
    ]
    if not allowed:
        why = "no listener of the Gateway allows this route"
        return [], Condition("Accepted", "False", "NotAllowedByListeners", why)
    found = []
    for ls in allowed:
        names = domains(ls.hostname, hostnames)
        if names:
            found.append((ls, names))
    if not found:
        why = "no hostname of the route matches a listener's hostname"
        return [], Condition("Accepted", "False", "NoMatchingListenerHostname", why)
    return found, Condition("Accepted", OK, "Accepted")
