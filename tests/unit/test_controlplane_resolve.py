"""Gateway API semantics: attachment, hostnames, matches, refs and the status they produce."""

from __future__ import annotations

from pathlib import Path

import yaml

from epp.api.load import load_paths
from epp.api.model import ResourceSet
from epp.controlplane.backends import ErrorBackend, PoolBackend, ServiceBackend
from epp.controlplane.priority import PriorityPolicy, parse_policy
from epp.controlplane.resolve import resolve

REPO = Path(__file__).resolve().parents[2]
SECRET = "default/inference-tls-cert"


def _load(tmp_path: Path, *docs: str) -> ResourceSet:
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.yaml").write_text(doc)
    return load_paths([tmp_path])


def _seed_plus(tmp_path: Path, *docs: str) -> ResourceSet:
    for name in ("gateway.yaml", "inference.yaml", "priority-filter.yaml"):
        (tmp_path / name).write_text((REPO / "examples" / "canary" / name).read_text())
    return _load(tmp_path, *docs)


def _route(name: str, spec: dict[str, object]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name},
            "spec": {"parentRefs": [{"name": "ai-inference-gateway"}], **spec},
        }
    )


def test_the_seed_resolves_to_two_ored_matches_on_the_model_pool(tmp_path: Path) -> None:
    resolved = resolve(_seed_plus(tmp_path), {SECRET})
    (listener,) = resolved.listeners
    assert (listener.port, listener.protocol, listener.secret) == (443, "HTTPS", SECRET)
    (att,) = resolved.attachments
    assert att.domains == ("api.ai-platform.example.com",)
    (rule,) = att.rules
    assert [(m.path_type, m.path, m.headers) for m in rule.matches] == [
        ("PathPrefix", "/v1/chat/completions", ()),
        ("PathPrefix", "/", (("Exact", "x-model-name", "llama2-7b-chat"),)),
    ]
    (backend,) = rule.backends
    assert isinstance(backend, PoolBackend) and not backend.pin
    assert backend.pool.key == "default/llama2-gpu-pool"
    assert rule.priority == PriorityPolicy("x-request-priority", "medium", False)
    route = resolved.status.condition("HTTPRoute", "default/llama2-inference-route", "ResolvedRefs")
    assert route is not None and route.status == "True"


def test_a_missing_certificate_leaves_the_listener_unprogrammed(tmp_path: Path) -> None:
    resolved = resolve(_seed_plus(tmp_path), set())
    assert resolved.listeners == () and resolved.attachments == ()
    (gw,) = resolved.status.gateways
    (listener,) = gw.listeners
    assert listener.conditions[0].reason == "InvalidCertificateRef"
    accepted = resolved.status.condition("HTTPRoute", "default/llama2-inference-route", "Accepted")
    assert accepted is not None and accepted.status == "False"


def test_missing_backends_keep_their_weight_as_500(tmp_path: Path) -> None:
    route = _route(
        "mixed",
        {
            "rules": [
                {
                    "backendRefs": [
                        {
                            "group": "inference.networking.x-k8s.io",
                            "kind": "InferencePool",
                            "name": "llama2-gpu-pool",
                            "weight": 3,
                        },
                        {
                            "group": "inference.networking.x-k8s.io",
                            "kind": "InferencePool",
                            "name": "nope",
                            "weight": 1,
                        },
                        {"group": "example.com", "kind": "Thing", "name": "x", "weight": 0},
                    ]
                }
            ]
        },
    )
    resolved = resolve(_seed_plus(tmp_path, route), {SECRET})
    rule = next(a.rules[0] for a in resolved.attachments if a.rules[0].route == "default/mixed")
    assert [type(b) for b in rule.backends] == [PoolBackend, ErrorBackend]
    assert [b.weight for b in rule.backends] == [3, 1]
    refs = resolved.status.condition("HTTPRoute", "default/mixed", "ResolvedRefs")
    assert refs is not None and refs.status == "False" and refs.reason == "BackendNotFound"
    assert "InferencePool default/nope" in refs.message and "example.com/Thing" in refs.message


def _model_route_with_filter(route: str, group: str, kind: str, name: str) -> str:
    """One rule: the seed's InferenceModel as backend, with one ExtensionRef filter."""
    backend = {"group": "gateway.networking.x-k8s.io", "kind": "InferenceModel",
               "name": "llama2-7b-chat"}  # fmt: skip
    ref = {"type": "ExtensionRef", "extensionRef": {"group": group, "kind": kind, "name": name}}
    return _route(route, {"rules": [{"backendRefs": [backend], "filters": [ref]}]})


def test_a_missing_priority_filter_applies_its_defaults(tmp_path: Path) -> None:
    route = _model_route_with_filter(
        "nofilter", "gateway.networking.x-k8s.io", "PriorityFilter", "absent"
    )
    resolved = resolve(_seed_plus(tmp_path, route), {SECRET})
    rule = next(a.rules[0] for a in resolved.attachments if a.rules[0].route == "default/nofilter")
    assert len(rule.backends) == 1 and rule.priority == PriorityPolicy()
    refs = resolved.status.condition("HTTPRoute", "default/nofilter", "ResolvedRefs")
    assert refs is not None and refs.status == "True"
    assert "PriorityFilter default/absent not found" in refs.message


def test_an_unsupported_filter_answers_500_rather_than_being_skipped(tmp_path: Path) -> None:
    route = _model_route_with_filter("oddfilter", "example.com", "Unknown", "x")
    resolved = resolve(_seed_plus(tmp_path, route), {SECRET})
    rule = next(a.rules[0] for a in resolved.attachments if a.rules[0].route == "default/oddfilter")
    assert rule.backends == ()
    refs = resolved.status.condition("HTTPRoute", "default/oddfilter", "ResolvedRefs")
    assert refs is not None and refs.status == "False" and refs.reason == "InvalidKind"


def test_parents_hostnames_and_bad_values_are_reported(tmp_path: Path) -> None:
    docs = [
        _route("orphan", {"parentRefs": [{"name": "no-such-gateway"}], "rules": [{}]}),
        _route("badpath", {"rules": [{"matches": [{"path": {"type": "Glob", "value": "/x*"}}]}]}),
        _route("badtimeout", {"rules": [{"timeouts": {"request": "ten seconds"}}]}),
    ]
    status = resolve(_seed_plus(tmp_path, *docs), {SECRET}).status
    reasons = {
        key: status.condition("HTTPRoute", f"default/{key}", "Accepted").reason  # type: ignore[union-attr]
        for key in ("orphan", "badpath", "badtimeout")
    }
    assert reasons == {
        "orphan": "NoMatchingParent",
        "badpath": "UnsupportedValue",
        "badtimeout": "UnsupportedValue",
    }
    text = "\n".join(status.lines())
    assert "HTTPRoute default/orphan" in text and "NoMatchingParent" in text


def test_services_timeouts_methods_and_wildcard_listeners(tmp_path: Path) -> None:
    gateway = yaml.safe_dump(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "web"},
            "spec": {
                "gatewayClassName": "epp",
                "listeners": [
                    {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"},
                    {"name": "tcp", "port": 9000, "protocol": "TCP"},
                ],
            },
        }
    )
    service = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "docs"},
            "spec": {"clusterIP": "10.0.0.7", "ports": [{"port": 80}]},
        }
    )
    route = yaml.safe_dump(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "docs"},
            "spec": {
                "parentRefs": [{"name": "web"}],
                "hostnames": ["docs.example.com", "*.example.com", "nope.org"],
                "rules": [
                    {
                        "matches": [{"method": "GET", "path": {"type": "Exact", "value": "/"}}],
                        "timeouts": {"request": "1m30s"},
                        "backendRefs": [{"name": "docs", "port": 80}],
                    }
                ],
            },
        }
    )
    elsewhere = yaml.safe_dump(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "elsewhere"},
            "spec": {"parentRefs": [{"name": "web"}], "hostnames": ["nope.org"], "rules": [{}]},
        }
    )
    resolved = resolve(_load(tmp_path, gateway, service, route, elsewhere), set())
    accepted = resolved.status.condition("HTTPRoute", "default/elsewhere", "Accepted")
    assert accepted is not None and accepted.reason == "NoMatchingListenerHostname"
    (att,) = resolved.attachments
    assert att.domains == ("docs.example.com", "*.example.com")
    (rule,) = att.rules
    assert rule.timeout == 90.0 and rule.matches[0].method == "GET"
    assert rule.backends == (ServiceBackend("default/docs", 80, "10.0.0.7", 1, dns=False),)
    (gw,) = resolved.status.gateways
    assert [ls.conditions[0].reason for ls in gw.listeners] == ["Accepted", "UnsupportedProtocol"]
    assert gw.listeners[0].attached_routes == 1


def test_gateway_classes_filter_what_is_ours(tmp_path: Path) -> None:
    resolved = resolve(_seed_plus(tmp_path), {SECRET}, gateway_classes=("someone-else",))
    assert resolved.status.gateways == () and resolved.listeners == ()


def test_priority_policy_header_round_trips() -> None:
    policy = PriorityPolicy("x-prio", "low", True)
    assert parse_policy(policy.header_value()) == policy
    assert parse_policy("header=x; default=urgent; client-override=false") is None
    assert parse_policy("garbage") is None
