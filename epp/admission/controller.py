"""Admission: the one call the director makes before scheduling (upstream's `Admit`).

`admit` decides whether a request may be scheduled now and which endpoints it is offered:
- a request no model runs (GET /v1/models) goes at once, to any ready endpoint;
- a sheddable one is admitted while the pool has room to spare, else 429 (`Shedder`), unless its
  ticket names a TTL: then it waits, in the lowest band, for that room (`SheddableRoom`);
- with flow control, a standard or critical one waits in the pool's waiting room until its room
  test passes (`rooms.StandardRoom`, `rooms.CriticalRoom`), then is offered the endpoints with
  room. Without flow control nothing waits and every ready endpoint is offered.
A waiter's place names its flow and cost (fair turns inside its band) and its TTL (`tickets`);
with a fair reserve, a standard request whose flow holds its share of the slots already leaves
the last few free ones to flows under theirs (`shares`; `started` counts each flow's requests).
A request with latency objectives is offered only endpoints predicted to meet them, waits while
none does, and is refused early when none could (`objectives`).
Room tests read a `RoomView` of the pool's current snapshot, built once per snapshot and shared
by all waiters (a wake-up over 1,024 endpoints and 100 waiters stays well under a millisecond:
tests/bench/test_bench_admission.py). Neighbours: `epp.director` calls `admit`; `epp.datastore`
supplies snapshots and wakes the waiting room; `epp.scheduling.service_time` predicts times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial

from epp.admission.flow_control import FlowControl, Place
from epp.admission.flows import cost_of
from epp.admission.kv_room import RoomColumn
from epp.admission.objectives import LEARNED_AFTER, ObjectiveRoom, Objectives
from epp.admission.rooms import (
    CRITICAL_QUEUE_AFTER,
    CachedTokens,
    CriticalRoom,
    RoomView,
    StandardRoom,
)
from epp.admission.shedding import SheddableRoom, Shedder
from epp.admission.tickets import NO_TICKET, Ticket, Tickets
from epp.api.model import RequestDefaults
from epp.datastore import Datastore, Lease
from epp.errors import NoEndpoints, ObjectiveUnmet, TTLExpired
from epp.request import InferenceRequest
from epp.scheduling.latency import LatencyModel, Prediction
from epp.scheduling.output_length import LengthPlan
from epp.scheduling.service_time import ServiceTime
from epp.settings import SaturationSettings
from epp.types import EndpointState

MAX_VIEWS = 256  # cached views (pool, subset hint) before the cache starts over
# inside one flow's turn, a waiter goes before a longer one that arrived earlier by less than
# this share of the difference of their answers' predicted times (`Place.due`): shorter first,
# with aging. Replayed on the ShareGPT-like cell's draws (`loadtest.bench.roomorder`), the room
# in arrival order read p90 TTFT 1.25x least-request's (median of 12), due first 1.01x; 0.5
# doubled p99 TTFT on an overloaded draw (docs/scheduling.md, "Shorter answers first inside a
# flow")
SHORTER_FIRST = 0.2


class Offer(list[EndpointState]):
    """The endpoints a request is offered, best-effort ones included: `warm_only` names those
    offered only for the request's cached prefix (a held request's full batches with nothing
    queued; the scheduler takes one only where its prefix gate keeps the hold)."""

    def __init__(self, endpoints: Sequence[EndpointState], warm_only: frozenset[str]) -> None:
        super().__init__(endpoints)
        self.warm_only = warm_only


class AdmissionController:
    def __init__(
        self,
        store: Datastore,
        saturation: SaturationSettings,
        flow: FlowControl | None = None,
        service_time: ServiceTime | None = None,
        clock: Callable[[], float] = time.monotonic,
        tickets: Tickets | None = None,
        latency: LatencyModel | None = None,
        objectives_after: int = LEARNED_AFTER,
    ) -> None:
        """`objectives_after`: answers the latency model learns from before latency objectives
        decide where a request goes or whether it is refused."""
        self.flow = flow
        self.tickets = tickets or Tickets(flow.timeout if flow else 30.0)
        self.latency = latency or LatencyModel()
        self._objectives = Objectives(self.latency, clock, objectives_after)
        self._store = store
        self._shedder = Shedder(saturation)
        self._service_time = service_time or ServiceTime()
        self._clock = clock
        self._kv_rooms = RoomColumn()  # each endpoint state's KV room, for every view
        # (pool, subset hint) -> (the snapshot a view was built from, the view)
        self._views: dict[tuple[str, tuple[str, ...] | None], tuple[object, RoomView]] = {}

    async def admit(
        self,
        request: InferenceRequest,
        pool_key: str,
        priority: int,
        subset: Sequence[str] | None = None,
        plan: LengthPlan | None = None,
        ticket: Ticket = NO_TICKET,
        cached: CachedTokens | None = None,
    ) -> list[EndpointState]:
        """Wait for room (or refuse the request), then return the endpoints it is offered (an
        `Offer`, with its warm-only ones, where it was held).
        `plan`: the answer length to plan with (default: the request's cap, else typical);
        `ticket`: its flow, TTL and objectives (`ticket`); `cached`: the prompt tokens each
        endpoint holds (asked only where the KV room would narrow the offer)."""
        if not request.runs_inference:
            return self._store.ready(pool_key, subset)
        started = self._clock()
        if priority < 0:  # a sheddable request leaves part of each batch free
            if self.flow is not None and ticket.ttl_told:
                await self._wait(request, pool_key, priority, subset, plan, False, ticket)
            ready = self._store.ready(pool_key, subset)
            with_room = self._shedder.admit(ready, self._clock())
            return with_room if self.flow is not None else ready
        if self.flow is None:
            ready = self._store.ready(pool_key, subset)
            if not self._objectives.apply(ticket):
                return ready
            self._objectives.check_reachable(ready, request.prompt_tokens, ticket)
            return self._objectives.meeting(ready, request.prompt_tokens, ticket, started) or ready
        # a length only expected, not told, singles nothing out: the first free slot will do
        free_first = plan is not None and not plan.told
        held = await self._wait(
            request, pool_key, priority, subset, plan, free_first, ticket, started
        )
        view = self.view(pool_key, subset)
        # a held request goes to a free batch slot, not behind a server's own queue; one whose
        # flow holds its share already leaves the fair reserve free (it was let through to
        # probe a full batch)
        warm: list[EndpointState] = []
        if held and priority == 0 and not self._may_take_free(pool_key, ticket.flow, view):
            offered = view.full() or list(view.candidates)
        else:
            with_room = view.with_room(priority, free_first or held, request.prompt_tokens, cached)
            offered = with_room or list(view.candidates)
            if held and priority == 0 and with_room:
                # a full batch with nothing queued may hold the request's prompt: on offer too,
                # for the scheduler's prefix gate to weigh its next slot against a cold prefill
                # where there is room (taken only where the gate keeps the hold)
                offered_ids = {id(c) for c in with_room}
                warm = [c for c in view.full() if id(c) not in offered_ids]
        if warm:
            offered = offered + warm
        if self._objectives.apply(ticket):
            meeting = self._objectives.meeting(offered, request.prompt_tokens, ticket, started)
            offered = meeting or offered
        # most requests were not held: their offer goes as it is, with nothing warm-only
        return Offer(offered, frozenset(c.endpoint.address for c in warm)) if warm else offered

    def started(self, pool_key: str, ticket: Ticket, lease: Lease) -> None:
        """Count a request sent to the pool against its flow's share until its lease ends."""
        if self.flow is not None and self.flow.shares.reserve:
            lease.on_release = self.flow.shares.started(pool_key, ticket.flow)

    def _may_take_free(self, pool_key: str, flow: str, view: RoomView) -> bool:
        assert self.flow is not None
        shares = self.flow.shares
        if not shares.reserve:
            return True
        slots, free = view.slot_counts()
        return shares.may_take_free(pool_key, flow, free, slots)

    @staticmethod
    def _due(current: Callable[[], RoomView], plan: LengthPlan | None) -> float:
        """How long after its arrival a waiter is due inside its flow's turn (`Place.due`):
        `SHORTER_FIRST` of how much longer (negative: shorter) its told answer length is than
        the model's typical one, in time at the pool's fastest measured pace. 0 where the
        length is not told (every such request of a model is planned alike: arrival order,
        exactly), while no pace is measured, or the pool has no ready endpoint."""
        if plan is None or not plan.told or plan.expected == plan.typical:
            return 0.0
        try:
            pace = current().candidates.fastest_tpot
        except NoEndpoints:
            return 0.0
        return SHORTER_FIRST * (plan.expected - plan.typical) * pace

    def predict(self, state: EndpointState, prompt_tokens: int) -> Prediction:
        """The picked endpoint's predicted TTFT and TPOT for the request (kept in its decision;
        what it showed is fed back to `latency.observe`)."""
        return self.latency.predict(state, prompt_tokens)

    def ticket(self, headers: Mapping[str, str], defaults: RequestDefaults) -> Ticket:
        """What the request's headers and its model's defaults say of its flow, TTL and
        objectives (raises `BadRequest` on a malformed header)."""
        return self.tickets.ticket(headers, defaults)

    def view(self, pool_key: str, subset: Sequence[str] | None = None) -> RoomView:
        """The room facts of the pool's current snapshot (raises `NoEndpoints`)."""
        states = self._store.candidates(pool_key)
        key = (pool_key, None if subset is None else tuple(subset))
        cached = self._views.get(key)
        if cached is not None and cached[0] is states:
            return cached[1]
        view = RoomView(self._store.ready(pool_key, subset), self._kv_rooms)
        if len(self._views) >= MAX_VIEWS:
            self._views.clear()
        self._views[key] = (states, view)
        return view

    async def _wait(
        self,
        request: InferenceRequest,
        pool_key: str,
        priority: int,
        subset: Sequence[str] | None,
        plan: LengthPlan | None,
        free_first: bool,
        ticket: Ticket,
        started: float = 0.0,
    ) -> bool:
        """Wait for room; True when the request was held (it had to wait)."""
        flow = self.flow
        assert flow is not None

        def current() -> RoomView:
            return self.view(pool_key, subset)

        output = (plan.expected if plan else request.output_limit) or 0
        place = Place(
            ticket.flow,
            request.size,
            cost_of(request.prompt_tokens, output),
            ticket.ttl,
            self._due(current, plan),
        )
        room: CriticalRoom | StandardRoom | SheddableRoom | ObjectiveRoom
        timer = None
        if priority < 0:
            room = SheddableRoom(self._shedder, lambda: current().candidates, self._clock)
        else:
            # a request holding out for a free slot looks again when it may probe a full batch,
            # even if nothing else happens meanwhile
            timer = asyncio.get_running_loop().call_later(
                CRITICAL_QUEUE_AFTER, flow.notify, pool_key
            )
        if priority > 0:
            room = CriticalRoom(current, self._clock, request.prompt_tokens)
        elif priority == 0:
            tokens, typical = (
                (plan.expected, plan.typical) if plan else (request.output_limit, None)
            )
            fair_share = None
            if flow.shares.reserve:

                def fair_share(view: RoomView) -> bool:
                    return self._may_take_free(pool_key, ticket.flow, view)

            room = StandardRoom(
                current,
                self._service_time,
                tokens,
                self._clock,
                typical,
                free_first,
                fair_share,
                partial(flow.busy_for, pool_key, priority),
                request.prompt_tokens,
            )
        deadline = None
        if priority >= 0 and self._objectives.apply(ticket):
            self._objectives.check_reachable(current().candidates, request.prompt_tokens, ticket)
            room = ObjectiveRoom(
                room, self._objectives, current, request.prompt_tokens, ticket, started
            )
            if ticket.ttft_ms is not None:  # waiting longer than its TTFT objective is useless
                deadline = ticket.ttft_ms / 1000
                place = replace(place, ttl=min(place.ttl or flow.timeout, deadline))
        try:
            return await flow.wait_for_room(pool_key, priority, room, place)
        except TTLExpired:
            if deadline is not None and place.ttl == deadline:
                raise ObjectiveUnmet(
                    f"no endpoint of InferencePool {pool_key} was predicted to meet the "
                    f"request's TTFT objective of {ticket.ttft_ms:g} ms in time"
                ) from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
