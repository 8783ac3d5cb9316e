"""Latency objectives: a request's TTFT and TPOT objectives (`x-slo-ttft-ms`, `x-slo-tpot-ms`,
or its model's) decide which endpoints it may go to, whether it waits, and whether it is
refused early.

An endpoint *meets* a request's objectives when its predicted TTFT (`epp.scheduling.latency`),
plus the time the request has already spent in the EPP, is within the TTFT objective, and its
predicted TPOT within the TPOT objective. A request is offered only endpoints that meet them;
the profile then picks among those as usual. While none does, it waits in the room
(`ObjectiveRoom`), for no longer than its TTFT objective leaves it; a request that no endpoint
could meet even idle is refused at once, 503 `ObjectiveUnmet`, rather than taking a slot for an
answer that will be late anyway. Until the model has learned from `LEARNED_AFTER` answers, the
objectives decide nothing (they are still counted as met or not). Neighbours: `controller`
builds the room and filters the offered endpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from epp.admission.rooms import RoomView
from epp.admission.tickets import Ticket
from epp.errors import NoEndpoints, ObjectiveUnmet
from epp.scheduling.latency import LatencyModel
from epp.types import EndpointState

Clock = Callable[[], float]
# until the latency model has learned from this many answers, its first guess decides nothing:
# measured, it refused a third of the requests of a 10 %-loaded pool, half of which an idle
# pod would have answered in time; after 50 answers it no longer does, and at 90 % load the
# answers routed unjudged before then missed more than any later stretch (docs/fairness.md)
LEARNED_AFTER = 50


def has_objectives(ticket: Ticket) -> bool:
    return ticket.ttft_ms is not None or ticket.tpot_ms is not None


class Objectives:
    def __init__(self, model: LatencyModel, clock: Clock, learned_after: int = LEARNED_AFTER):
        """`learned_after`: answers the model learns from before its predictions decide."""
        self.model = model
        self.learned_after = learned_after
        self._clock = clock

    def apply(self, ticket: Ticket) -> bool:
        """Whether the ticket's objectives decide now: it names some, and the model has
        learned from enough answers to be trusted with a refusal."""
        return has_objectives(ticket) and self.model.samples >= self.learned_after

    def meeting(
        self,
        candidates: Sequence[EndpointState],
        prompt_tokens: int,
        ticket: Ticket,
        started: float,
        idle: bool = False,
    ) -> list[EndpointState]:
        """The candidates predicted to meet the ticket's objectives for a request that reached
        the EPP at `started` (`idle`: were nothing else running on them)."""
        spent = self._clock() - started
        ttft = None if ticket.ttft_ms is None else ticket.ttft_ms / 1000 - spent
        tpot = None if ticket.tpot_ms is None else ticket.tpot_ms / 1000
        predictions = self.model.predict_all(candidates, prompt_tokens, idle)
        return [
            c
            for c, p in zip(candidates, predictions, strict=True)
            if (ttft is None or p.ttft <= ttft) and (tpot is None or p.tpot <= tpot)
        ]

    def check_reachable(
        self, candidates: Sequence[EndpointState], prompt_tokens: int, ticket: Ticket
    ) -> None:
        """Raise `ObjectiveUnmet` when no candidate would meet the objectives even idle."""
        if candidates and not self.meeting(
            candidates, prompt_tokens, ticket, self._clock(), idle=True
        ):
            raise ObjectiveUnmet(
                f"no endpoint is predicted to meet the request's objectives even idle "
                f"(TTFT {ticket.ttft_ms} ms, TPOT {ticket.tpot_ms} ms)"
            )


class ObjectiveRoom:
    """A room test that also wants an endpoint with room predicted to meet the objectives."""

    __slots__ = ("_inner", "_objectives", "_prompt_tokens", "_started", "_ticket", "_view")

    def __init__(
        self,
        inner: Callable[[bool, bool], bool],
        objectives: Objectives,
        view: Callable[[], RoomView],
        prompt_tokens: int,
        ticket: Ticket,
        started: float,
    ) -> None:
        self._inner = inner
        self._objectives = objectives
        self._view = view
        self._prompt_tokens = prompt_tokens
        self._ticket = ticket
        self._started = started

    def __call__(self, first: bool, held: bool) -> bool:
        if not self._inner(first, held):
            return False
        try:
            view = self._view()
        except NoEndpoints:
            return True
        offered = view.with_room(0, free_first=held) or list(view.candidates)
        return bool(
            self._objectives.meeting(offered, self._prompt_tokens, self._ticket, self._started)
        )
