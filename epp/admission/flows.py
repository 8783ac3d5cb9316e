"""Flows: whom a waiting request belongs to, and the fair order of the flows inside one band.

A flow is a tenant (`x-gateway-inference-fairness-id`, a configured header, or its model's
default). Inside one priority band the waiting room serves flows by start-time fair queueing
over a virtual time counted in tokens: a request's start tag is the later of the band's virtual
time and the finish tag of its flow's previous request, its finish tag the start plus its cost
(prompt tokens plus `OUTPUT_WEIGHT` times planned output tokens: the virtual token counter's
weights).
The band serves the smallest start tag first, and its virtual time moves to the tag it served.
So two backlogged flows get equal tokens whatever their rates, a flow that was idle banks no
credit (it starts at the band's present), and a lone flow is served first come, first served
with nothing held back: the order is work-conserving. docs/fairness.md says why tokens and not
request counts. Neighbours: `flow_control` tags each waiter and counts flows; `tickets` names
the flow of a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_FLOW = "default-flow"  # upstream's fairness id when a request names none
OUTPUT_WEIGHT = 2.0  # an output token costs two prompt tokens (VTC's weights, Sheng et al. 2024)


def cost_of(prompt_tokens: int, output_tokens: int) -> float:
    """What one request costs its flow, in prompt-token units (at least one)."""
    return max(1.0, prompt_tokens + OUTPUT_WEIGHT * output_tokens)


@dataclass(slots=True)
class FlowQueue:
    """What one flow holds in one band: waiting requests, their body bytes, and the finish tag
    of its latest request (where its next request starts, unless the band has moved past)."""

    count: int = 0
    held: int = 0
    finish: float = 0.0


@dataclass(slots=True)
class Band:
    """One priority of one pool: its waiters' totals, its virtual time and its flows, and since
    when it has held waiters without a break (`busy_since`, meaningful while `count` > 0)."""

    count: int = 0
    held: int = 0
    vtime: float = 0.0
    busy_since: float = 0.0
    flows: dict[str, FlowQueue] = field(default_factory=dict)

    def enter(self, flow: str, size: int, cost: float, fair: bool, now: float = 0.0) -> float:
        """Count a request in at time `now` and return its start tag (0 for all: first come,
        first served)."""
        if not self.count:
            self.busy_since = now
        queue = self.flows.get(flow)
        if queue is None:
            queue = self.flows[flow] = FlowQueue()
        queue.count += 1
        queue.held += size
        self.count += 1
        self.held += size
        if not fair:
            return 0.0
        start = max(self.vtime, queue.finish)
        queue.finish = start + cost
        return start

    def leave(self, flow: str, size: int, start: float, cost: float, served: bool) -> None:
        """Count a request out. Served: the band's virtual time reaches its tag. Dropped (expired,
        evicted, cancelled): if it was its flow's latest, the flow gets its cost back."""
        self.count -= 1
        self.held -= size
        if served and start > self.vtime:
            self.vtime = start
        queue = self.flows[flow]
        queue.count -= 1
        queue.held -= size
        if not served and queue.finish == start + cost:
            queue.finish = start
        if not queue.count:
            # an emptied flow is forgotten: at most one request's cost of history is lost, and
            # any number of tenants never leaves state behind
            del self.flows[flow]
