"""Gateway API status as data: conditions on Gateways, their listeners and HTTPRoute parents.

`resolve` decides Accepted / ResolvedRefs while it reads the resources; `programmed` adds the
Gateway's Programmed condition from what the xDS server saw Envoy accept. In file mode `main`
prints the report and serves it as JSON on the debug endpoint; in Kubernetes mode the same
values are what a status writer patches onto the resources' `status`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class ListenerStatus:
    name: str
    attached_routes: int
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    key: str
    conditions: tuple[Condition, ...]
    listeners: tuple[ListenerStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class ParentStatus:
    parent: str  # namespace/name of the Gateway (+ "/section" when the ref names one)
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class RouteStatus:
    key: str
    parents: tuple[ParentStatus, ...]


@dataclass(frozen=True, slots=True)
class StatusReport:
    gateways: tuple[GatewayStatus, ...] = ()
    routes: tuple[RouteStatus, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "gateways": [asdict(g) for g in self.gateways],
            "httproutes": [asdict(r) for r in self.routes],
        }

    def lines(self) -> list[str]:
        out: list[str] = []
        for gw in self.gateways:
            out.append(f"Gateway {gw.key}: {_conds(gw.conditions)}")
            out.extend(
                f"  listener {ls.name} ({ls.attached_routes} route(s)): {_conds(ls.conditions)}"
                for ls in gw.listeners
            )
        for route in self.routes:
            out.append(f"HTTPRoute {route.key}:")
            out.extend(f"  parent {p.parent}: {_conds(p.conditions)}" for p in route.parents)
            if not route.parents:
                out.append("  no parentRefs: not attached to any Gateway")
        return out

    def condition(self, kind: str, key: str, type_: str) -> Condition | None:
        """The first condition of that type on the resource (or any of a route's parents)."""
        if kind == "Gateway":
            for gw in self.gateways:
                if gw.key == key:
                    return next((c for c in gw.conditions if c.type == type_), None)
        for route in self.routes:
            if route.key == key:
                for parent in route.parents:
                    found = next((c for c in parent.conditions if c.type == type_), None)
                    if found is not None:
                        return found
        return None


def _conds(conditions: tuple[Condition, ...]) -> str:
    parts = []
    for c in conditions:
        text = f"{c.type}={c.status} ({c.reason})"
        parts.append(f"{text}: {c.message}" if c.message else text)
    return "; ".join(parts)


def programmed(report: StatusReport, accepted: bool, nack: str | None, envoys: int) -> StatusReport:
    """Adds Programmed to every accepted Gateway from the xDS state of the latest config."""
    if nack is not None:
        cond = Condition("Programmed", "False", "Invalid", f"Envoy rejected the config: {nack}")
    elif envoys == 0:
        cond = Condition("Programmed", "False", "Pending", "no Envoy is connected")
    elif not accepted:
        cond = Condition("Programmed", "False", "Pending", "waiting for Envoy to accept")
    else:
        cond = Condition("Programmed", "True", "Programmed", f"accepted by {envoys} Envoy(s)")
    gateways = []
    for gw in report.gateways:
        ok = any(c.type == "Accepted" and c.status == "True" for c in gw.conditions)
        this = cond if ok else Condition("Programmed", "False", "Invalid", "not accepted")
        kept = tuple(c for c in gw.conditions if c.type != "Programmed")
        gateways.append(replace(gw, conditions=(*kept, this)))
    return replace(report, gateways=tuple(gateways))
