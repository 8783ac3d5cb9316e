"""The room rules: whether a waiting request may go now, and which endpoints it is offered.

An endpoint has room while its load is under its batch limit plus a small queue
(`queue_slack`): none where the limit is the batch size its pod spec declares, since a request
queued inside one server waits for that server's next finished request while here it gets the
first slot that frees anywhere.
A critical request wants a free batch slot (`free`): queued inside a server it would wait for
that server's next finished request, while waiting here it gets the first slot anywhere;
after `CRITICAL_QUEUE_AFTER` it also takes a full batch with nothing queued (`probe`), so
learned limits can still grow under critical-only traffic. A standard request
takes room where it would not finish much later than on the best endpoint (`StandardRoom`): a
long one declines a free slot on a slow GPU while a fast one frees up soon enough, and the time
its priority's waiting room has held requests without a break counts against the gain: a pool
past capacity for that long loses, to every slot left idle, time all its waiters wait.
A request that is *held* (it had to wait: others contend for the pool) takes only a free batch
slot, never a place in a server's own queue: there it would wait first come, first served behind
whatever was sent before, and the waiting room's order (priorities, the flows' fair turns) would
be lost. Only the head of the line, after `CRITICAL_QUEUE_AFTER` there, may probe a full batch.
With a fair reserve (`shares`), a request whose flow holds its share already sees the reserved
free slots as full batches: it waits, and its probe goes to a full batch (`FULL`), not to them.
A free slot (or a place) counts as room for a request only where the endpoint's free KV cache
takes the new tokens of its prompt (`kv_room`): on a KV-bound pod the request would wait inside
the engine for that engine's next finished answer. Only the head of the line's probe, after
`CRITICAL_QUEUE_AFTER`, ignores the KV cache, so a prompt that fits nowhere still goes.
Every test reads a `RoomView`: the facts of one snapshot of the pool, computed once and shared
by every waiter a wake-up asks. Neighbours: `flow_control` asks the tests, `controller` builds
them; `epp.scheduling.service_time` predicts the times.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

from epp.admission.envelope import LowerEnvelope
from epp.admission.kv_room import RoomColumn, takes_rest
from epp.errors import NoEndpoints
from epp.scheduling.service_time import ServiceTime
from epp.scheduling.snapshot import snapshot_of
from epp.types import EndpointState

log = logging.getLogger(__name__)

Clock = Callable[[], float]
# a critical request waits this long for a free batch slot before queueing inside a server
CRITICAL_QUEUE_AFTER = 0.5
# kinds of room (`RoomView.mask`): a place (queue slack included), a free batch slot, a full
# batch with nothing queued or a free slot, and only a full batch with nothing queued
ROOM, FREE, PROBE, FULL = "room", "free", "probe", "full"
# a waiting request declines room where it would finish later than on the best endpoint by more
# than this share of a typical request's time on the fastest one
DECLINE_AFTER = 0.5


def queue_slack(limit: int, declared: int = 0) -> int:
    """Requests an endpoint may hold queued beyond its batch limit `limit`: a quarter of the
    limit, at least one. The slack keeps the server able to show it can run more than was
    learned: the limit grows whenever it reports more running requests, so a low first guess
    corrects itself instead of capping the server where it was first seen full. A limit that is
    the batch size the pod spec `declared` (vLLM's `--max-num-seqs`, a hard cap) has nothing
    to show: no slack. A request that finds those batches full waits in the waiting room,
    where the first slot that frees on any server is its, rather than in one server's queue
    for that server's next finished request."""
    return 0 if limit == declared else (limit >> 2) or 1


def has_room(state: EndpointState) -> bool:
    """Room for one more request: under the batch limit plus its queue slack (no limit known:
    always, while healthy)."""
    limit = state.limit
    slack = queue_slack(limit, state.endpoint.max_num_seqs)
    return state.healthy and (not limit or state.load < limit + slack)


def has_queue_room(state: EndpointState) -> bool:
    """Room for one more request counting a short queue behind any batch limit, declared or
    learned (a session's next turn would rather queue on the pod that holds its context)."""
    limit = state.limit
    return state.healthy and (not limit or state.load < limit + queue_slack(limit))


def keeps_reserve(state: EndpointState, reserve: float) -> bool:
    """Room that leaves `reserve` (a fraction of the batch limit, at least one request) free."""
    limit = state.limit
    return state.healthy and (not limit or state.load < limit - max(1, int(limit * reserve)))


def free(state: EndpointState) -> bool:
    """A free slot in the endpoint's batch (or no limit learned yet)."""
    return state.limit == 0 or state.load < state.limit


def probe(state: EndpointState) -> bool:
    """The batch is full but nothing queues behind it: one request may wait there, first in
    line for that server's next free slot, and shows whether it can run more than learned."""
    return state.limit == 0 or state.load <= state.limit


class RoomView:
    """What the room rules need of one snapshot of a pool's ready endpoints, computed once."""

    __slots__ = (
        "_columns",
        "_envelopes",
        "_fit_masks",
        "_kv_rooms",
        "_least_room",
        "_lines",
        "_masks",
        "_room_tokens",
        "_slot_counts",
        "any_free",
        "any_probe",
        "any_room",
        "candidates",
        "room",
    )

    def __init__(
        self, candidates: Sequence[EndpointState], kv_rooms: RoomColumn | None = None
    ) -> None:
        # ready endpoints (healthy, within the subset hint), as a snapshot whose columns the
        # service-time model reads too; `has_room` (its slack from `queue_slack`), `free` and
        # `probe` by column (inlined: this runs once per wake-up over the whole pool)
        snap = self.candidates = snapshot_of(candidates)
        columns = list(zip(snap.load, snap.limit, strict=True))
        self.room = [
            not lim or ld < lim + queue_slack(lim, c.endpoint.max_num_seqs)
            for (ld, lim), c in zip(columns, snap, strict=True)
        ]
        self.any_room = any(self.room)
        self.any_free = any(not lim or ld < lim for ld, lim in columns)
        self.any_probe = self.any_free or any(ld <= lim for ld, lim in columns)
        self._slot_counts: tuple[int, int] | None = None  # when first asked (the fair reserve)
        self._columns = columns
        self._masks: dict[str, list[bool]] = {ROOM: self.room}  # the others when first asked
        # the KV room (`kv_room.room_tokens`) per endpoint, and the least of it over a kind's
        # mask, when first asked; the masks narrowed to a prompt's KV room, per (kind, tokens)
        self._room_tokens: list[float] | None = None
        self._kv_rooms = kv_rooms or RoomColumn()  # shared by the views of one controller
        self._least_room: dict[str, float] = {}
        self._fit_masks: dict[tuple[str, int], tuple[list[bool], bool]] = {}
        self._envelopes: dict[
            tuple[int, str, int], tuple[LowerEnvelope, LowerEnvelope, float] | None
        ] = {}
        # the service-time lines per typical request, shared by every kind's envelope
        self._lines: dict[int, tuple[list[float], list[float], float] | None] = {}

    def kv_room(self) -> list[float]:
        """Prompt tokens each endpoint's free KV cache can take now (`kv_room.room_tokens`)."""
        if self._room_tokens is None:
            self._room_tokens = self._kv_rooms.of(self.candidates)
        return self._room_tokens

    def mask(self, kind: str, prompt_tokens: int = 0) -> tuple[list[bool], bool]:
        """Which endpoints count as room, and whether any does: `ROOM` (a place, queue slack
        included), `FREE` (a free batch slot), `PROBE` (a free slot or a full batch with nothing
        queued) or `FULL` (only a full batch with nothing queued). With `prompt_tokens`, a
        `ROOM` or `FREE` endpoint counts only where its free KV cache takes the prompt's new
        tokens (`kv_room`); probes ignore the KV cache."""
        if prompt_tokens > 0 and kind in (ROOM, FREE):
            return self._fitting(kind, prompt_tokens)
        return self._mask(kind)

    def _fitting(self, kind: str, prompt_tokens: int) -> tuple[list[bool], bool]:
        """`mask(kind)` narrowed to the endpoints whose KV room takes `prompt_tokens`: the
        same list where every one does (the common case costs one comparison)."""
        base = self._mask(kind)
        least = self._least_room.get(kind)
        if least is None:
            rooms = self.kv_room()
            least = self._least_room[kind] = min(
                (r for r, ok in zip(rooms, base[0], strict=True) if ok), default=math.inf
            )
        if prompt_tokens <= least:
            return base
        key = (kind, prompt_tokens)
        found = self._fit_masks.get(key)
        if found is None:
            fit = [ok and prompt_tokens <= r for ok, r in zip(base[0], self.kv_room(), strict=True)]
            found = self._fit_masks[key] = (fit, any(fit))
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "kv room: a %d-token prompt fits %d of the %d endpoints with %s room (%s)",
                    prompt_tokens,
                    sum(fit),
                    sum(base[0]),
                    kind,
                    ", ".join(
                        f"{c.address} {r:.0f}"
                        for c, r, ok in zip(self.candidates, self.kv_room(), base[0], strict=True)
                        if ok
                    ),
                )
        return found

    def _mask(self, kind: str) -> tuple[list[bool], bool]:
        found = self._masks.get(kind)
        if found is None:
            if kind == FREE:
                found = [not lim or ld < lim for ld, lim in self._columns]
            elif kind == FULL:
                found = [lim > 0 and ld == lim for ld, lim in self._columns]
            else:
                found = [not lim or ld <= lim for ld, lim in self._columns]
            self._masks[kind] = found
        if kind == FREE:
            return found, self.any_free
        if kind == FULL:
            return found, any(found)
        return found, self.any_probe if kind == PROBE else self.any_room

    def slot_counts(self) -> tuple[int, int]:
        """The pool's batch slots (0: some limit is unknown) and how many of them are free."""
        if self._slot_counts is None:
            limits = self.candidates.limit
            self._slot_counts = (
                0 if 0 in limits else sum(limits),
                sum(lim - ld for ld, lim in self._columns if ld < lim),
            )
        return self._slot_counts

    def full(self) -> list[EndpointState]:
        """The endpoints whose batch is full with nothing queued (where a probe may wait)."""
        return [c for c, ok in zip(self.candidates, self.mask(FULL)[0], strict=True) if ok]

    def envelopes(
        self, model: ServiceTime, typical: int, kind: str = ROOM, prompt_tokens: int = 0
    ) -> tuple[LowerEnvelope, LowerEnvelope, float] | None:
        """(best predicted time over all endpoints, over those with room of `kind` for a
        prompt of `prompt_tokens`, the fastest pace) as functions of the output tokens, for a
        typical request of `typical` tokens; None when no pace is measured yet."""
        mask = self.mask(kind, prompt_tokens)[0]
        # one envelope per kind while every endpoint of it takes the prompt
        key = (typical, kind, 0 if mask is self._mask(kind)[0] else prompt_tokens)
        if key not in self._envelopes:
            if typical not in self._lines:
                self._lines[typical] = model.lines(self.candidates, typical)
            found = self._lines[typical]
            if found is None:
                self._envelopes[key] = None
            else:
                slopes, intercepts, fastest = found
                with_room = [i for i, ok in enumerate(mask) if ok]
                self._envelopes[key] = (
                    LowerEnvelope(slopes, intercepts),
                    LowerEnvelope(
                        [slopes[i] for i in with_room], [intercepts[i] for i in with_room]
                    ),
                    fastest,
                )
        return self._envelopes[key]

    def with_room(
        self,
        priority: int,
        free_first: bool = False,
        prompt_tokens: int = 0,
        cached: CachedTokens | None = None,
    ) -> list[EndpointState]:
        """The endpoints a request of this priority is offered once it may go: those with room
        whose KV cache takes its prompt (`prompt_tokens`; where none does, the probe that let
        it go ignores the KV cache: those with room); for a critical one (or `free_first`) a
        free batch slot beats a queue on a faster pod. `cached`: the prompt tokens each
        endpoint holds, asked only when the KV room leaves some endpoint out; on a holder only
        the rest of the prompt claims blocks (the pod-wide cache-hit share misjudged a group's
        warm requests there, docs/benchmarks.md, "The matrix on seed 2 at 94ac0fd")."""
        candidates = self.candidates
        if priority > 0 or free_first:
            fit, any_fit = self._held_fit(FREE, prompt_tokens, cached)
            if any_fit:
                return [c for c, ok in zip(candidates, fit, strict=True) if ok]
            with_room = [c for c, ok in zip(candidates, self.room, strict=True) if ok]
            return (
                [c for c in with_room if free(c)] or [c for c in with_room if probe(c)] or with_room
            )
        fit, any_fit = self._held_fit(ROOM, prompt_tokens, cached)
        return [c for c, ok in zip(candidates, fit if any_fit else self.room, strict=True) if ok]

    def _held_fit(
        self, kind: str, prompt_tokens: int, cached: CachedTokens | None
    ) -> tuple[list[bool], bool]:
        """`mask(kind, prompt_tokens)`, where an endpoint the KV room left out takes the
        prompt after all if its free blocks take the part of it that it does not hold."""
        fit, any_fit = self.mask(kind, prompt_tokens)
        base = self._mask(kind)[0]
        if cached is None or fit is base:
            return fit, any_fit
        held = cached()
        if not held:
            return fit, any_fit
        rooms = self.kv_room()
        out = list(fit)
        for i, c in enumerate(self.candidates):
            tokens = held.get(c.endpoint.address, 0)
            if base[i] and not out[i] and tokens > 0:
                out[i] = takes_rest(c, rooms[i], prompt_tokens, tokens)
        return out, any(out)


def worth_taking(
    view: RoomView,
    model: ServiceTime,
    waited: float,
    output_tokens: int | None,
    typical: int | None = None,
    kind: str = ROOM,
    prompt_tokens: int = 0,
) -> bool:
    """Room for a standard request: an endpoint with room of `kind` (whose KV cache takes
    its `prompt_tokens`) where it would not finish much later than on the best endpoint, full
    ones included (their queue counted). The time `waited` (how long the room has held
    requests without a break) counts against the gain, so nothing holds out for longer than
    the room loses by it."""
    mask, any_room = view.mask(kind, prompt_tokens)
    if not any_room:
        return False
    if all(mask):
        return True
    typical = typical or model.typical_output_tokens
    found = view.envelopes(model, typical, kind, prompt_tokens)
    if found is None:
        return True
    best, best_with_room, fastest = found
    tokens = output_tokens or typical
    # the margin is a policy, in the configured typical request's time (`typicalOutputTokens`);
    # the learned `typical` only measures how fast a full batch's excess drains
    slack = DECLINE_AFTER * model.typical_output_tokens * fastest + waited
    return best_with_room.min_at(tokens) - best.min_at(tokens) <= slack


ViewOf = Callable[[], RoomView]  # the current view of the request's pool (raises NoEndpoints)
# the request's prompt tokens each endpoint holds (the profile's prefix scorers' view)
CachedTokens = Callable[[], Mapping[str, int]]
# whether the request's flow may take one of the free slots a view shows (`shares.Shares`)
FairShare = Callable[[RoomView], bool]


RoomBusy = Callable[[], float]  # seconds the request's band of the room has held requests


class StandardRoom:
    """The room test of one waiting standard request (`first`: nothing of its priority or
    better waits ahead of it). `free_first`: its length is unknown (only the model's answers so
    far say what to expect), so nothing is gained by holding it for a faster pod over a free
    batch slot: it takes the first free slot anywhere, as a critical request does.
    `fair_share`: whether its flow may take the free slots of a view (`shares`); where it may
    not (the free slots are the fair reserve), the batches count as full to it.
    `room_busy`: how long its priority's waiting room has held requests without a break (None:
    no time counts). Held, the request declines room only where a faster pod saves more than
    that: in a pool past capacity for so long, a declined slot stays idle while every waiter
    behind falls further back. Counting only the request's own time since it declined, first in
    line, left the half-speed pod's batch a quarter idle on an overloaded multi-turn draw and
    cost every waiter its first token (docs/scheduling.md, "Size-aware room").
    `prompt_tokens`: the request's prompt, which the KV cache of a free slot must take
    (`kv_room`; 0: any free slot will do)."""

    __slots__ = (
        "_clock",
        "_fair_share",
        "_free_first",
        "_head_since",
        "_model",
        "_output_tokens",
        "_prompt_tokens",
        "_room_busy",
        "_typical",
        "_view",
    )

    def __init__(
        self,
        view: ViewOf,
        model: ServiceTime,
        output_tokens: int | None,
        clock: Clock,
        typical: int | None = None,
        free_first: bool = False,
        fair_share: FairShare | None = None,
        room_busy: RoomBusy | None = None,
        prompt_tokens: int = 0,
    ) -> None:
        self._view = view
        self._prompt_tokens = prompt_tokens
        self._fair_share = fair_share
        self._room_busy = room_busy
        self._model = model
        self._output_tokens = output_tokens
        self._typical = typical
        self._free_first = free_first
        self._clock = clock
        self._head_since: float | None = None  # when it first came first in line, held

    def __call__(self, first: bool, held: bool) -> bool:
        try:
            view = self._view()
        except NoEndpoints:
            return True  # let the request through to get its 503 now
        now = self._clock()
        # the free slots are the fair reserve, and this request's flow holds its share already:
        # to it the batches are full
        reserved = view.any_free and self._fair_share is not None and not self._fair_share(view)
        prompt = self._prompt_tokens
        # a free slot whose KV cache takes the prompt
        any_free = not reserved and view.mask(FREE, prompt)[1]
        kind = ROOM
        if held or reserved:
            # a free slot; the head of the line, after a while there, may probe a full batch,
            # so that learned limits still grow while requests contend
            if held and first and self._head_since is None:
                self._head_since = now
            since = self._head_since
            long_head = held and first and since is not None and now - since >= CRITICAL_QUEUE_AFTER
            if reserved:
                if not long_head:
                    return False
                kind = FULL  # a probe that leaves the reserve free
            else:
                kind = PROBE if long_head and not any_free else FREE
        if not view.mask(kind, prompt)[1]:
            return False
        if self._free_first and any_free:
            return True
        # how long the room has held requests without a break counts against the gain
        waited = self._room_busy() if held and self._room_busy is not None else 0.0
        return worth_taking(
            view, self._model, waited, self._output_tokens, self._typical, kind, prompt
        )


class CriticalRoom:
    """The room test of one waiting critical request: a free slot in some batch whose KV
    cache takes its `prompt_tokens`; after `CRITICAL_QUEUE_AFTER`, any free slot or a full
    batch with nothing queued will do."""

    __slots__ = ("_clock", "_prompt_tokens", "_since", "_view")

    def __init__(self, view: ViewOf, clock: Clock, prompt_tokens: int = 0) -> None:
        self._view = view
        self._clock = clock
        self._prompt_tokens = prompt_tokens
        self._since = clock()

    def __call__(self, first: bool, held: bool) -> bool:
        try:
            view = self._view()
        except NoEndpoints:
            return True
        if view.mask(FREE, self._prompt_tokens)[1]:
            return True
        return self._clock() - self._since >= CRITICAL_QUEUE_AFTER and view.any_probe
