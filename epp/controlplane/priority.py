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

from epp.api.priority import (
    DEFAULT_CLIENT_HEADER,
    POLICY_HEADER,
    WORDS,
    PriorityPolicy,
    parse_policy,
)

__all__ = ["POLICY_HEADER", "PriorityPolicy", "parse_policy", "policy_of"]


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
