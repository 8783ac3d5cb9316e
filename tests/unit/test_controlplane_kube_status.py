"""Gateway API status objects built from a report: shapes, merges, kept transition times."""

from __future__ import annotations

import asyncio
from typing import Any

from epp.api.parse import parse_documents
from epp.controlplane.kubesource import (
    CONTROLLER_NAME,
    SECRETS,
    _listed_or_forbidden,
    is_tls_secret,
)
from epp.controlplane.kubestatus import (
    class_status,
    gateway_status,
    listener_conditions,
    merge_conditions,
    route_status,
)
from epp.controlplane.resolve import resolve
from epp.controlplane.status import Condition, ListenerStatus, StatusReport, programmed
from epp.kube.client import ClientConfig, connect
from epp.kube.watch import Reflector, WatchSettings

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
GW = "gateway.networking.k8s.io/v1"


def gateway(generation: int = 3, listeners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": GW,
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "default", "generation": generation},
        "spec": {
            "gatewayClassName": "ours",
            "listeners": listeners
            or [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "udp", "port": 53, "protocol": "UDP"},
            ],
        },
    }


def route(backend: str = "svc", generation: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": GW,
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default", "generation": generation},
        "spec": {
            "parentRefs": [{"name": "gw"}, {"name": "elsewhere", "namespace": "other"}],
            "rules": [{"backendRefs": [{"name": backend, "port": 8000}]}],
        },
    }


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "svc", "namespace": "default"},
    "spec": {"clusterIP": "10.0.0.1", "ports": [{"port": 8000}]},
}


def report(*docs: dict[str, Any], acked: bool = True) -> StatusReport:
    resources = parse_documents([(f"d{i}", d) for i, d in enumerate(docs)])
    return programmed(resolve(resources, set()).status, acked, None, 1)


def test_gateway_status_has_v1_conditions_and_listeners() -> None:
    gw = gateway()
    rep = report(gw, route(), SERVICE)
    status = gateway_status({**gw, "status": {"addresses": [{"value": "1.2.3.4"}]}}, gw,
                            rep.gateways[0], T0)  # fmt: skip
    assert status["addresses"] == [{"value": "1.2.3.4"}]  # not ours to drop
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Accepted"]["status"] == "True" and conds["Programmed"]["status"] == "True"
    assert all(
        c["observedGeneration"] == 3 and c["lastTransitionTime"] == T0 for c in conds.values()
    )
    http, udp = status["listeners"]
    assert http["name"] == "http" and http["attachedRoutes"] == 1
    assert http["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]
    assert {c["type"]: c["status"] for c in http["conditions"]} == {
        "Accepted": "True", "ResolvedRefs": "True", "Conflicted": "False", "Programmed": "True",
    }  # fmt: skip
    assert udp["supportedKinds"] == [] and udp["attachedRoutes"] == 0
    udp_conds = {c["type"]: c for c in udp["conditions"]}
    assert udp_conds["Accepted"]["reason"] == "UnsupportedProtocol"
    assert udp_conds["Programmed"]["status"] == "False"


def test_transition_time_is_kept_while_the_status_holds_and_moves_when_it_flips() -> None:
    gw = gateway()
    first = gateway_status(gw, gw, report(gw, acked=False).gateways[0], T0)
    same = gateway_status({**gw, "status": first}, gw, report(gw, acked=False).gateways[0], T1)
    assert same == first
    flipped = gateway_status({**gw, "status": first}, gw, report(gw).gateways[0], T1)
    times = {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]}
    assert times == {"Accepted": T0, "Programmed": T1}


def test_a_new_generation_is_observed_without_moving_the_transition_time() -> None:
    gw = gateway()
    first = gateway_status(gw, gw, report(gw).gateways[0], T0)
    newer = gateway(generation=4)
    again = gateway_status({**gw, "status": first}, newer, report(newer).gateways[0], T1)
    assert {c["observedGeneration"] for c in again["conditions"]} == {4}
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {T0}


def test_route_entries_of_other_controllers_are_kept_and_only_our_gateways_get_one() -> None:
    gw, rt = gateway(), route()
    theirs = {
        "parentRef": {"name": "elsewhere", "namespace": "other"},
        "controllerName": "example.com/other",
        "conditions": [{"type": "Accepted", "status": "True"}],
    }
    stale_mine = {
        "parentRef": {"name": "gone"},
        "controllerName": CONTROLLER_NAME,
        "conditions": [],
    }
    live = {**rt, "status": {"parents": [theirs, stale_mine]}}
    rep = report(gw, rt, SERVICE)
    status = route_status(live, rt, rep.routes[0], {"default/gw"}, T0)
    kept, mine = status["parents"]
    assert kept == theirs  # untouched; our entry for a parentRef no longer named is gone
    assert mine["parentRef"] == {"name": "gw"} and mine["controllerName"] == CONTROLLER_NAME
    conds = {
        c["type"]: (c["status"], c["reason"], c["observedGeneration"]) for c in mine["conditions"]
    }
    assert conds == {
        "Accepted": ("True", "Accepted", 2),
        "ResolvedRefs": ("True", "ResolvedRefs", 2),
    }


def test_missing_backend_is_resolved_refs_false_backend_not_found() -> None:
    gw, rt = gateway(), route(backend="missing")
    rep = report(gw, rt, SERVICE)
    status = route_status(rt, rt, rep.routes[0], {"default/gw"}, T0)
    (mine,) = status["parents"]
    refs = next(c for c in mine["conditions"] if c["type"] == "ResolvedRefs")
    assert refs["status"] == "False" and refs["reason"] == "BackendNotFound"
    assert "missing" in refs["message"]


def test_our_entry_keeps_its_transition_time_when_rewritten() -> None:
    gw, rt = gateway(), route()
    rep = report(gw, rt, SERVICE)
    first = route_status(rt, rt, rep.routes[0], {"default/gw"}, T0)
    again = route_status({**rt, "status": first}, rt, rep.routes[0], {"default/gw"}, T1)
    assert again == first


def test_listener_conditions_for_a_conflict_and_a_missing_certificate() -> None:
    ok = Condition("Programmed", "True", "Programmed")
    conflict = ListenerStatus("b", 0, (Condition("Conflicted", "True", "ProtocolConflict", "x"),))
    conds = {c.type: c for c in listener_conditions(conflict, ok)}
    assert conds["Conflicted"].status == "True" and conds["Accepted"].status == "False"
    assert conds["Programmed"].status == "False"
    bad_cert = ListenerStatus(
        "c", 0, (Condition("ResolvedRefs", "False", "InvalidCertificateRef", "no secret"),)
    )
    conds = {c.type: c for c in listener_conditions(bad_cert, ok)}
    assert conds["ResolvedRefs"].reason == "InvalidCertificateRef"
    assert conds["Accepted"].status == "True" and conds["Programmed"].status == "False"


def test_merge_conditions_ignores_garbage_and_truncates_messages() -> None:
    merged = merge_conditions(
        ["junk", {"type": "Accepted", "status": "True", "lastTransitionTime": T0}],
        [Condition("Accepted", "True", "Accepted", "m" * 40000)],
        7,
        T1,
    )
    assert merged[0]["lastTransitionTime"] == T0 and len(merged[0]["message"]) == 32768
    assert (
        merge_conditions("not a list", [Condition("A", "False", "R")], 1, T1)[0][
            "lastTransitionTime"
        ]
        == T1
    )


def test_only_certificate_secrets_are_read() -> None:
    assert is_tls_secret({"type": "kubernetes.io/tls", "data": {}})
    assert is_tls_secret({"type": "Opaque", "data": {"tls.crt": "x", "tls.key": "y"}})
    assert not is_tls_secret({"type": "Opaque", "data": {"password": "x"}})


async def test_a_forbidden_kind_does_not_block_the_first_sync() -> None:
    api = await connect(ClientConfig(host="http://127.0.0.1:9"))  # never called
    try:
        forbidden = Reflector(api, SECRETS, None, WatchSettings())
        forbidden.stale, forbidden.last_error = True, "403 Forbidden: secrets is forbidden"
        await asyncio.wait_for(_listed_or_forbidden(forbidden), 2)
        failing = Reflector(api, SECRETS, None, WatchSettings())
        failing.stale, failing.last_error = True, "0 Unreachable: refused"
        waiting = asyncio.ensure_future(_listed_or_forbidden(failing))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # other failures wait for a list, as KubeSource does
        failing.synced.set()
        await asyncio.wait_for(waiting, 2)
    finally:
        await api.close()


def test_our_gateway_class_is_accepted_and_keeps_its_transition_time() -> None:
    cls = {"metadata": {"name": "c", "generation": 2}, "spec": {"controllerName": CONTROLLER_NAME}}
    first = class_status(cls, T0)
    assert conditions_of(first) == {"Accepted": ("True", 2, T0)}
    assert class_status({**cls, "status": first}, T1) == first


def conditions_of(status: dict[str, Any]) -> dict[str, tuple[str, int, str]]:
    return {
        c["type"]: (c["status"], c["observedGeneration"], c["lastTransitionTime"])
        for c in status["conditions"]
    }
