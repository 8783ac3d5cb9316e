"""Tickets: what a request's headers and its model's defaults say about how it may wait.

A ticket names the request's flow (behind a trusted gateway, `--trust-control-headers`:
`x-gateway-inference-fairness-id`, upstream's header, or llm-d's `x-llm-d-inference-fairness-id`;
else the configured header, such as `x-user-id` set by authentication; else the model's
`fairnessId`; else `default-flow`), its TTL in the waiting room (`x-gateway-inference-ttl-ms`;
else the model's `ttlSeconds`; else `--queue-timeout`) and its latency objectives
(`x-slo-ttft-ms`, `x-slo-tpot-ms`, else the model's). A client's own control headers decide
nothing that could hurt others: its fairness id is ignored unless the gateway is trusted, and it
may shorten its TTL but not lengthen it past its model's or the EPP's default. A malformed
value is the client's error: 400 naming the header.
Neighbours: `epp.director` asks for a ticket and hands it to `controller.admit`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from epp.admission.flows import DEFAULT_FLOW
from epp.api.model import NO_DEFAULTS, RequestDefaults
from epp.errors import BadRequest

FAIRNESS_HEADERS = ("x-gateway-inference-fairness-id", "x-llm-d-inference-fairness-id")
TTL_HEADER = "x-gateway-inference-ttl-ms"
TTFT_HEADER = "x-slo-ttft-ms"
TPOT_HEADER = "x-slo-tpot-ms"
MAX_FLOW_ID = 128  # characters: a flow id is a label on metrics, not a document


@dataclass(frozen=True, slots=True)
class Ticket:
    flow: str = DEFAULT_FLOW
    ttl: float | None = None  # seconds it may wait in the EPP (None: the room's default)
    ttl_told: bool = False  # its header or model named a TTL: a sheddable request may wait
    ttft_ms: float | None = None  # objectives; None: none
    tpot_ms: float | None = None


NO_TICKET = Ticket()


class Tickets:
    def __init__(
        self, default_ttl: float, fairness_header: str | None = None, trusted: bool = False
    ) -> None:
        self.default_ttl = default_ttl
        configured = (fairness_header.lower(),) if fairness_header else ()
        self.fairness_headers = (FAIRNESS_HEADERS if trusted else ()) + configured
        self.trusted = trusted

    def ticket(self, headers: Mapping[str, str], defaults: RequestDefaults = NO_DEFAULTS) -> Ticket:
        flow = next((headers[h] for h in self.fairness_headers if headers.get(h)), None)
        if flow is None:
            flow = defaults.fairness_id or DEFAULT_FLOW
        elif len(flow) > MAX_FLOW_ID:
            raise BadRequest(f"the fairness id is {len(flow)} characters; at most {MAX_FLOW_ID}")
        ceiling = self.default_ttl if defaults.ttl is None else defaults.ttl
        told = _milliseconds(headers, TTL_HEADER)
        if told is not None:
            ttl = told / 1000 if self.trusted else min(told / 1000, ceiling)
        else:
            ttl = ceiling
        ttft = _milliseconds(headers, TTFT_HEADER)
        tpot = _milliseconds(headers, TPOT_HEADER)
        return Ticket(
            flow,
            ttl,
            told is not None or defaults.ttl is not None,
            defaults.ttft_ms if ttft is None else ttft,
            defaults.tpot_ms if tpot is None else tpot,
        )


def _milliseconds(headers: Mapping[str, str], name: str) -> float | None:
    text = headers.get(name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise BadRequest(f"header {name} must be a positive number of milliseconds, not {text!r}")
    return value
