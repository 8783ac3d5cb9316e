"""Fair shares of a pool's batch slots, and the few free slots kept for flows under theirs.

Without preemption, a request that finds every batch slot taken waits for the next request to
finish, however early its fair turn comes. So while a tenant floods the pool, a light tenant's
request waits behind one finishing request each time, and a burst of its requests behind
itself. The fair reserve keeps a few batch slots (`--fair-reserve`, a fraction of the pool's
slots, at least one) free of any flow that holds its fair share already: a flow *over its share*
(its requests in flight on the pool, this replica's count, at least the pool's slots divided by
the active flows, those in flight or waiting) takes a free slot only while more than the reserve
is free; a flow under its share takes any. A lone flow is never over its share (its share is
every slot), so it still gets everything, and the reserve costs only those few slots, and only
while flows contend: docs/fairness.md measures it. Neighbours: `flow_control` counts the
waiters in, `controller` the requests sent, `rooms.StandardRoom` asks `may_take_free`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Flow:
    running: int = 0  # requests in flight on the pool
    waiting: int = 0  # requests in the pool's waiting room


class Shares:
    def __init__(self, reserve: float = 0.0) -> None:
        """`reserve`: the share of a pool's batch slots kept free for flows under their fair
        share while others contend (0: none)."""
        if not 0.0 <= reserve < 1.0:
            raise ValueError(f"the fair reserve must be in [0, 1), not {reserve}")
        self.reserve = reserve
        self._pools: dict[str, dict[str, _Flow]] = {}

    def reserved(self, slots: int) -> int:
        """Free slots kept for flows under their share, of a pool with `slots` batch slots."""
        if not self.reserve or not slots:
            return 0
        return max(1, round(slots * self.reserve))

    def running(self, pool_key: str, flow: str) -> int:
        found = self._pools.get(pool_key, {}).get(flow)
        return found.running if found else 0

    def running_flows(self, pool_key: str) -> dict[str, int]:
        """Requests in flight on the pool per flow (only those with some)."""
        return {n: f.running for n, f in self._pools.get(pool_key, {}).items() if f.running}

    def active(self, pool_key: str) -> int:
        """Flows with requests in flight on the pool or waiting for it."""
        return len(self._pools.get(pool_key, ()))

    def started(self, pool_key: str, flow: str) -> Callable[[], None]:
        """Count a request sent to the pool; call what it returns (once) when it ends."""
        self._adjust(pool_key, flow, 1, 0)
        return lambda: self._adjust(pool_key, flow, -1, 0)

    def waits(self, pool_key: str, flow: str, change: int) -> None:
        """A request of the flow entered (+1) or left (-1) the pool's waiting room."""
        self._adjust(pool_key, flow, 0, change)

    def under_share(self, pool_key: str, flow: str, slots: int) -> bool:
        """Whether the flow holds fewer of the pool's `slots` than its fair share."""
        flows = self._pools.get(pool_key)
        if not flows:
            return True
        found = flows.get(flow)
        active = len(flows) + (found is None)  # the asking flow is active
        running = found.running if found else 0
        return running * active < slots

    def may_take_free(self, pool_key: str, flow: str, free: int, slots: int) -> bool:
        """Whether a request of the flow may take one of the pool's `free` batch slots (of
        `slots`): no reserve is kept, more than the reserve is free, or the flow is under its
        share."""
        reserved = self.reserved(slots)
        return not reserved or free > reserved or self.under_share(pool_key, flow, slots)

    def _adjust(self, pool_key: str, flow: str, running: int, waiting: int) -> None:
        flows = self._pools.setdefault(pool_key, {})
        found = flows.get(flow)
        if found is None:
            found = flows[flow] = _Flow()
        found.running += running
        found.waiting += waiting
        if found.running <= 0 and found.waiting <= 0:
            del flows[flow]
            if not flows:
                del self._pools[pool_key]
