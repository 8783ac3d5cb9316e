"""The waiting room: when no endpoint of a pool has room, requests wait here, best priority first.

Pods queue first come, first served, so a critical request sent to a full pod waits behind every
request admitted before it. Holding the excess in the EPP instead (the pods' batches stay full,
their queues short) lets a critical request overtake queued standard ones, and lets sheddable
requests be refused or held back while there is no room at all. Inside one priority the flows
(tenants) take turns by their fair tags (`flows.Band`), so one tenant's flood cannot take every
slot from another. Inside one flow the waiter due first goes first: its arrival plus
`Place.due`, a share of its answer's predicted time on the fastest pod. So a shorter answer
overtakes a longer one that came a little earlier (shorter first, with aging): in a burst, slots
that free soon serve more requests sooner, and fewer first tokens wait long. Whether there is
room for a request is its own `RoomTest` (`epp.admission.rooms`), told whether the request is
first in line: a long request may decline a free slot on a slow GPU and keep its place for a
fast one, and the slot goes to the next waiter of the same priority it suits. The datastore
tells us when an endpoint may have gained room; each such event wakes the best waiter for which
there is room, and a waiter that got its endpoint passes the turn on, so a burst of room drains
the queue in order.
Bounds, each answered at once with 429 `QueueFull` rather than holding a body for a slot that
will not come: requests and body bytes per band (upstream's per-band capacity), requests per
flow, requests per pool. When the pool is full, an arrival of a better priority evicts the
newest sheddable waiter of the worst band (429 `Evicted`). Every waiter has a deadline, its
ticket's TTL: past it the request is answered 503 `TTLExpired` at once.
Neighbours: `epp.admission.controller` calls `wait_for_room`; `epp.datastore` `notify`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol

from epp.admission.flows import DEFAULT_FLOW, Band
from epp.admission.shares import Shares
from epp.datastore import Datastore
from epp.errors import Evicted, QueueFull, TTLExpired

SCAN = 32  # waiters a notification looks at, best first, for one that the room suits
# a pool with waiters is looked at again at least this often, even if nothing happens, since a
# room test may change its answer with time alone (the head of the line probing a full batch)
TICK = 0.25
_ORDER = attrgetter("rank", "tag", "seq")  # the heap's order, as a key compared in C
_DUE = attrgetter("due", "seq")  # the order inside one flow's turn
# how a request left the waiting room (upstream's flow-control outcomes)
DISPATCHED = "Dispatched"
REJECTED = "RejectedCapacity"
EXPIRED = "EvictedTTL"
EVICTED = "EvictedDisplaced"
CANCELLED = "EvictedContextCancelled"
# (pool, priority, flow, outcome, seconds waited): told once per request that asked for room
Outcome = Callable[[str, int, str, str, float], None]


class RoomTest(Protocol):
    def __call__(self, first: bool, held: bool) -> bool:
        """Whether there is room for this request now; `first`: nothing of its priority or
        better waits ahead of it; `held`: it is waiting (others contend for the pool), so a
        place in a server's own queue would lose the room's order."""
        ...


@dataclass(frozen=True, slots=True)
class Place:
    """What a waiting request holds and how long it may wait: its flow, body bytes, cost in
    tokens (its share of the flow's turn) and TTL in seconds (None: the room's default).
    `due`: seconds after its arrival by which the request counts as due inside its flow's
    turn; of two waiters of one flow the one due first goes first (0 for all: arrival order)."""

    flow: str = DEFAULT_FLOW
    size: int = 0
    cost: float = 1.0
    ttl: float | None = None
    due: float = 0.0


@dataclass(order=True, slots=True)
class _Waiter:
    rank: int  # -priority: the heap pops the highest priority first
    tag: float  # then the smallest fair tag (its flow's turn)
    seq: int  # then the oldest
    future: asyncio.Future[None] = field(compare=False)
    fits: RoomTest = field(compare=False)
    place: Place = field(compare=False)
    band: Band = field(compare=False)
    first: bool = field(default=False, compare=False)  # first in line when last woken
    counted: bool = field(default=True, compare=False)  # still counted in its band
    due: float = field(default=0.0, compare=False)  # arrival + `Place.due` (its flow's order)

    def leave(self, served: bool) -> None:
        if self.counted:
            self.counted = False
            p = self.place
            self.band.leave(p.flow, p.size, self.tag, p.cost, served)


class FlowControl:
    def __init__(
        self,
        store: Datastore,
        timeout: float = 30.0,
        max_requests: int = 0,
        max_bytes: int = 0,
        *,
        max_flow_requests: int = 0,
        max_pool_requests: int = 0,
        fair: bool = True,
        fair_reserve: float = 0.0,
        on_outcome: Outcome | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`timeout`: the default TTL. `max_requests` and `max_bytes` bound what waits per pool
        and priority, `max_flow_requests` per flow of a band, `max_pool_requests` per pool (0: no
        bound). `fair`: flows take turns inside a band (else first come, first served), and
        `fair_reserve` of a pool's batch slots are kept free for flows under their fair share
        while flows contend (`shares`). `clock`: the admission's (how long the room has held
        requests without a break, `busy_for`)."""
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.max_flow_requests = max_flow_requests
        self.max_pool_requests = max_pool_requests
        self.fair = fair
        self.on_outcome = on_outcome
        self._clock = clock
        self.shares = Shares(fair_reserve if fair else 0.0)
        self._store = store
        self._queues: dict[str, list[_Waiter]] = {}
        self._bands: dict[tuple[str, int], Band] = {}
        self._ticking: set[str] = set()  # pools whose tick is armed
        self._seq = itertools.count()
        store.add_listener(self.notify)

    def queued(self, pool_key: str) -> int:
        return sum(n for n, _ in self.waiting(pool_key).values())

    def busy_for(self, pool_key: str, priority: int) -> float:
        """How long requests of `priority` have waited for the pool without a break: seconds
        since its band of the room last held none (0 while it holds none)."""
        band = self._bands.get((pool_key, priority))
        if band is None or not band.count:
            return 0.0
        return self._clock() - band.busy_since

    async def wait_for_room(
        self, pool_key: str, priority: int, has_room: RoomTest, place: Place = Place()
    ) -> bool:
        """Return when the pool has room for this request and no better request waits: True
        when it had to wait (it was held). `has_room(first, held)` is the request's own test.
        Raises `QueueFull`, `Evicted` or `TTLExpired`."""
        queue = self._queues.setdefault(pool_key, [])
        while queue and queue[0].future.done():
            heapq.heappop(queue)
        if (not queue or -queue[0].rank < priority) and has_room(True, False):
            if self.on_outcome is not None:
                self.on_outcome(pool_key, priority, place.flow, DISPATCHED, 0.0)
            return False
        band = self._bands.get((pool_key, priority))
        if band is None:
            band = self._bands[(pool_key, priority)] = Band()
        loop = asyncio.get_running_loop()
        since = loop.time()
        outcome = REJECTED
        try:
            self._check_capacity(pool_key, priority, band, place)
            outcome = CANCELLED
            await self._wait(queue, pool_key, priority, has_room, place, band)
            outcome = DISPATCHED
            return True
        except TTLExpired:
            outcome = EXPIRED
            raise
        except Evicted:
            outcome = EVICTED
            raise
        finally:
            if self.on_outcome is not None:
                self.on_outcome(pool_key, priority, place.flow, outcome, loop.time() - since)

    async def _wait(
        self,
        queue: list[_Waiter],
        pool_key: str,
        priority: int,
        has_room: RoomTest,
        place: Place,
        band: Band,
    ) -> None:
        loop = asyncio.get_running_loop()
        tag = band.enter(place.flow, place.size, place.cost, self.fair, self._clock())
        waiter = _Waiter(
            -priority, tag, next(self._seq), loop.create_future(), has_room, place, band
        )
        waiter.due = self._clock() + place.due
        heapq.heappush(queue, waiter)
        self.shares.waits(pool_key, place.flow, 1)
        if pool_key not in self._ticking:
            self._ticking.add(pool_key)
            loop.call_later(TICK, self._tick, pool_key)
        ttl = self.timeout if place.ttl is None else place.ttl
        served = False
        try:
            if has_room(queue[0] is waiter, True):  # room those ahead declined: the best may go
                self.notify(pool_key)
            async with asyncio.timeout(ttl):
                while True:
                    await waiter.future
                    if has_room(waiter.first, True):
                        served = True
                        return
                    # someone else took the room: back in line, keeping our place
                    waiter.future = loop.create_future()
                    heapq.heappush(queue, waiter)
        except TimeoutError:
            raise TTLExpired(
                f"no room in InferencePool {pool_key} within the request's TTL of {ttl:g}s "
                "(request timed out in queue)"
            ) from None
        finally:
            waiter.leave(served)
            self.shares.waits(pool_key, place.flow, -1)
            if not waiter.future.done():
                waiter.future.cancel()  # leaves the heap lazily

    def waiting(self, pool_key: str) -> dict[int, tuple[int, int]]:
        """Per priority: the requests waiting for the pool and the body bytes they hold."""
        return {
            p: (b.count, b.held)
            for (key, p), b in self._bands.items()
            if key == pool_key and b.count
        }

    def flows(self, pool_key: str) -> dict[tuple[int, str], tuple[int, int]]:
        """Per priority and flow: the requests waiting for the pool and their body bytes."""
        return {
            (p, name): (q.count, q.held)
            for (key, p), band in self._bands.items()
            if key == pool_key
            for name, q in band.flows.items()
        }

    def _check_capacity(self, pool_key: str, priority: int, band: Band, place: Place) -> None:
        size = place.size
        where = f"the waiting room of InferencePool {pool_key} is full"
        if self.max_requests and band.count >= self.max_requests:
            raise QueueFull(
                f"{where}: {band.count} requests of priority {priority} wait already "
                f"(--queue-max-requests {self.max_requests})"
            )
        if self.max_bytes and band.count and band.held + size > self.max_bytes:
            raise QueueFull(
                f"{where}: requests of priority {priority} hold {band.held} body bytes already, "
                f"and this one {size} more (--queue-max-bytes {self.max_bytes})"
            )
        flow = band.flows.get(place.flow)
        if self.max_flow_requests and flow is not None and flow.count >= self.max_flow_requests:
            raise QueueFull(
                f"{where} for flow {place.flow!r}: {flow.count} of its requests of priority "
                f"{priority} wait already (--queue-max-flow-requests {self.max_flow_requests})"
            )
        pool_full = self.max_pool_requests and self.queued(pool_key) >= self.max_pool_requests
        if pool_full and not self._evict(pool_key, priority):
            raise QueueFull(
                f"{where}: {self.queued(pool_key)} requests wait already "
                f"(--queue-max-pool-requests {self.max_pool_requests})"
            )

    def _evict(self, pool_key: str, priority: int) -> bool:
        """Make room for an arrival of `priority`: the sheddable waiter of the worst band that
        would be served last (the latest fair tag) is answered 429 `Evicted`. False: none."""
        queue = self._queues.get(pool_key, [])
        victims = [w for w in queue if not w.future.done() and -w.rank < min(priority, 0)]
        if not victims:
            return False
        victim = max(victims, key=_ORDER)
        victim.leave(served=False)
        victim.future.set_exception(
            Evicted(
                f"evicted from the waiting room of InferencePool {pool_key} by a request of "
                f"priority {priority} (request evicted by flow control)"
            )
        )
        return True

    def _tick(self, pool_key: str) -> None:
        self.notify(pool_key)
        if self._queues.get(pool_key):
            asyncio.get_running_loop().call_later(TICK, self._tick, pool_key)
        else:
            self._ticking.discard(pool_key)

    def notify(self, pool_key: str) -> None:
        """An endpoint of the pool may have room: wake the best waiter it suits. The turn is
        the head's flow's (the fair order), and inside that flow the waiter due first
        (`Place.due`) is asked first, as the one first in line; then every other waiter in the
        room's order, the head included."""
        queue = self._queues.get(pool_key)
        while queue and queue[0].future.done():
            heapq.heappop(queue)
        if not queue:
            return
        head = queue[0]
        if len(queue) == 1:
            head.first = True
            if head.fits(True, True):
                heapq.heappop(queue)
                head.future.set_result(None)
            return
        window = heapq.nsmallest(SCAN, queue, key=_ORDER)
        flow = head.place.flow
        due_first = min(
            (
                w
                for w in window
                if w.place.flow == flow and w.rank == head.rank and not w.future.done()
            ),
            key=_DUE,
        )
        due_first.first = True
        if due_first.fits(True, True):
            self._serve(queue, due_first, head)
            return
        for waiter in window:
            if waiter.rank != head.rank:
                return  # a lower priority never takes room a higher one is holding out for
            if waiter is due_first or waiter.future.done():
                continue
            waiter.first = False
            if waiter.fits(False, True):
                self._serve(queue, waiter, waiter)
                return

    @staticmethod
    def _serve(queue: list[_Waiter], waiter: _Waiter, place_of: _Waiter) -> None:
        """Let `waiter` go. Due first in the head's flow and served ahead of `place_of` (the
        head), it takes that one's place in the fair order and leaves it its own: the flow's
        turns stay where they were, and the band's virtual time moves only as far as the
        head's tag."""
        if place_of is not waiter:
            waiter.tag, place_of.tag = place_of.tag, waiter.tag
            waiter.seq, place_of.seq = place_of.seq, waiter.seq
        if queue[0] is waiter:
            heapq.heappop(queue)
        else:
            queue.remove(waiter)
            heapq.heapify(queue)
        waiter.future.set_result(None)
