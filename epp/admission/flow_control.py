"""The waiting room: when no endpoint of a pool has room, requests wait here, best priority first.

Pods queue first come, first served, so a critical request sent to a full pod waits behind every
request admitted before it. Holding the excess in the EPP instead (the pods' batches stay full,
their queues short) lets a critical request overtake queued standard ones, and lets sheddable
requests be refused while there is no room at all. Whether there is room for a request is its
own `RoomTest` (`epp.admission.rooms`), told whether the request is first in line: a long
request may decline a free slot on a slow GPU and keep its place for a fast one, and the slot
goes to the next waiter of the same priority it suits. The datastore tells us when an endpoint
may have gained room (a request finished or started, new metrics); each such event wakes the
best waiter for which there is room, and a waiter that got its endpoint passes the turn on, so
a burst of room drains the queue in order. Each priority of each pool has a bounded waiting
room (requests and body bytes, like upstream's per-band capacity): a request that finds it full
gets 429 `QueueFull` at once instead of holding its body in memory for a slot that will not
come. Neighbours: `epp.admission.controller` calls `wait_for_room`; `epp.datastore` `notify`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol

from epp.datastore import Datastore
from epp.errors import QueueFull, QueueTimeout

SCAN = 32  # waiters a notification looks at, best first, for one that the room suits
_ORDER = attrgetter("rank", "seq")  # the heap's order, as a key compared in C


class RoomTest(Protocol):
    def __call__(self, first: bool) -> bool:
        """Whether there is room for this request now; `first`: nothing of its priority or
        better waits ahead of it."""
        ...


@dataclass(order=True, slots=True)
class _Waiter:
    rank: int  # -priority: the heap pops the highest priority first
    seq: int  # then the oldest
    future: asyncio.Future[None] = field(compare=False)
    fits: RoomTest = field(compare=False)
    first: bool = field(default=False, compare=False)  # first in line when last woken


class FlowControl:
    def __init__(
        self, store: Datastore, timeout: float = 30.0, max_requests: int = 0, max_bytes: int = 0
    ) -> None:
        """`max_requests` and `max_bytes` bound what waits per pool and priority (0: no bound)."""
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._store = store
        self._queues: dict[str, list[_Waiter]] = {}
        # (pool, priority) -> [requests waiting, body bytes they hold], kept as they come and go
        self._bands: dict[tuple[str, int], list[int]] = {}
        self._seq = itertools.count()
        store.add_listener(self.notify)

    def queued(self, pool_key: str) -> int:
        return sum(n for n, _ in self.waiting(pool_key).values())

    async def wait_for_room(
        self, pool_key: str, priority: int, has_room: RoomTest, size: int = 0
    ) -> None:
        """Return when the pool has room for this request and no better request waits.
        `has_room(first)` is the request's own test; `first`: nothing of its priority or better
        waits ahead of it. `size`: the body bytes the request holds while it waits."""
        queue = self._queues.setdefault(pool_key, [])
        while queue and queue[0].future.done():
            heapq.heappop(queue)
        if (not queue or -queue[0].rank < priority) and has_room(True):
            return
        band = self._bands.setdefault((pool_key, priority), [0, 0])
        self._check_capacity(pool_key, priority, band, size)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(-priority, next(self._seq), loop.create_future(), has_room)
        heapq.heappush(queue, waiter)
        band[0] += 1
        band[1] += size
        try:
            if has_room(queue[0] is waiter):  # room the waiters ahead declined: the best may go
                self.notify(pool_key)
            async with asyncio.timeout(self.timeout):
                while True:
                    await waiter.future
                    if has_room(waiter.first):
                        return
                    # someone else took the room: back in line, keeping our place
                    waiter.future = loop.create_future()
                    heapq.heappush(queue, waiter)
        except TimeoutError:
            raise QueueTimeout(
                f"no room in InferencePool {pool_key} for {self.timeout:g}s (request timed out "
                "in queue)"
            ) from None
        finally:
            band[0] -= 1
            band[1] -= size
            if not waiter.future.done():
                waiter.future.cancel()  # leaves the heap lazily

    def waiting(self, pool_key: str) -> dict[int, tuple[int, int]]:
        """Per priority: the requests waiting for the pool and the body bytes they hold."""
        return {p: (n, b) for (key, p), (n, b) in self._bands.items() if key == pool_key and n}

    def _check_capacity(self, pool_key: str, priority: int, band: list[int], size: int) -> None:
        count, held = band
        if self.max_requests and count >= self.max_requests:
            raise QueueFull(
                f"the waiting room of InferencePool {pool_key} is full: {count} requests of "
                f"priority {priority} wait already (--queue-max-requests {self.max_requests})"
            )
        if self.max_bytes and count and held + size > self.max_bytes:
            raise QueueFull(
                f"the waiting room of InferencePool {pool_key} is full: requests of priority "
                f"{priority} hold {held} body bytes already, and this one {size} more "
                f"(--queue-max-bytes {self.max_bytes})"
            )

    def notify(self, pool_key: str) -> None:
        """An endpoint of the pool may have room: wake the best waiter it suits."""
        queue = self._queues.get(pool_key)
        while queue and queue[0].future.done():
            heapq.heappop(queue)
        if not queue:
            return
        head = queue[0]
        head.first = True
        if head.fits(True):
            heapq.heappop(queue)
            head.future.set_result(None)
            return
        for waiter in heapq.nsmallest(SCAN, queue, key=_ORDER)[1:]:
            if waiter.rank != head.rank:
                return  # a lower priority never takes room a higher one is holding out for
            waiter.first = False
            if not waiter.future.done() and waiter.fits(False):
                queue.remove(waiter)
                heapq.heapify(queue)
                waiter.future.set_result(None)
                return
