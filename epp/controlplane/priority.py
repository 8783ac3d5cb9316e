"""The PriorityFilter resource and how its policy reaches the EPP.

An HTTPRoute rule names a PriorityFilter with an ExtensionRef filter. Envoy cannot judge priority
itself (it depends on the InferenceModel the body names), so the control plane hands the policy to
the EPP in a trusted request header, `x-gateway-priority-policy`, set by Envoy on the route and
stripped from every client request first. Its value is
`header=<client header>; default=<high|medium|low>; client-override=<true|false>`. The EPP reads
the client's header (`x-request-priority` by default) and decides; `docs/controlplane.md` has the
exact rule. `resolve` finds the filter; `translate` writes the header.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

POLICY_HEADER = "x-gateway-priority-policy"
DEFAULT_CLIENT_HEADER = "x-request-priority"
WORDS = ("high", "medium", "low")


@dataclass(frozen=True, slots=True)
class PriorityPolicy:
    header: str = DEFAULT_CLIENT_HEADER
    default: str = "medium"
    client_override: bool = False

    def header_value(self) -> str:
        override = "true" if self.client_override else "false"
        return f"header={self.header}; default={self.default}; client-override={override}"


def policy_of(resource: Mapping[str, object]) -> PriorityPolicy:
    """The policy of a PriorityFilter manifest (already checked by epp.api.core)."""
    spec = resource.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    header = spec.get("headerName")
    default = spec.get("defaultPriority")
    override = spec.get("allowClientOverride")
    return PriorityPolicy(
        header=header.lower() if isinstance(header, str) and header else DEFAULT_CLIENT_HEADER,
        default=default if isinstance(default, str) and default in WORDS else "medium",
        client_override=override is True,
    )


def parse_policy(value: str) -> PriorityPolicy | None:
    """The inverse of `header_value`, for the EPP side and tests; None when malformed."""
    fields: dict[str, str] = {}
    for part in value.split(";"):
        key, sep, item = part.strip().partition("=")
        if not sep:
            return None
        fields[key.strip()] = item.strip()
    header = fields.get("header", DEFAULT_CLIENT_HEADER)
    default = fields.get("default", "medium")
    override = fields.get("client-override", "false")
    if not header or default not in WORDS or override not in ("true", "false"):
        return None
    return PriorityPolicy(header, default, override == "true")
