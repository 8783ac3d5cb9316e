"""The priority policy an HTTPRoute's PriorityFilter hands to the EPP, and the trusted headers.

The control plane sets `x-gateway-priority-policy` on a route (after stripping any client copy);
its value is `header=<client header>; default=<high|medium|low>; client-override=<true|false>`.
The EPP (`epp.director`) reads it with `parse_policy` and decides the request's priority:
without the client header, the InferenceModel's priority (or the policy default for an
unregistered model); with it, the client's value when overriding is allowed, else the lower of
the client's and the model's (a client may lower its priority, never raise it).
"""

from __future__ import annotations

from dataclasses import dataclass

POLICY_HEADER = "x-gateway-priority-policy"
POOL_HEADER = "x-gateway-inference-pool"  # pins the request to one pool (weighted backendRefs)
DEFAULT_CLIENT_HEADER = "x-request-priority"
WORDS = ("high", "medium", "low")
PRIORITY_OF_WORD = {"high": 1, "medium": 0, "low": -1}


@dataclass(frozen=True, slots=True)
class PriorityPolicy:
    header: str = DEFAULT_CLIENT_HEADER
    default: str = "medium"
    client_override: bool = False

    def header_value(self) -> str:
        override = "true" if self.client_override else "false"
        return f"header={self.header}; default={self.default}; client-override={override}"

    def decide(self, client_word: str | None, model_priority: int | None) -> int:
        """The request's priority from the client's header value and the model's priority."""
        base = PRIORITY_OF_WORD[self.default] if model_priority is None else model_priority
        client = PRIORITY_OF_WORD.get((client_word or "").strip().lower())
        if client is None:
            return base
        return client if self.client_override else min(client, base)


def parse_policy(value: str) -> PriorityPolicy | None:
    """The inverse of `PriorityPolicy.header_value`; None when malformed."""
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
    return PriorityPolicy(header.lower(), default, override == "true")
