"""Admission: the one call the director makes before scheduling (upstream's `Admit`).

`admit` decides whether a request may be scheduled now and which endpoints it is offered:
- a request no model runs (GET /v1/models) goes at once, to any ready endpoint;
- a sheddable one never waits: admitted while the pool has room to spare, else 429 (`Shedder`);
- with flow control, a standard or critical one waits in the pool's waiting room until its room
  test passes (`rooms.StandardRoom`, `rooms.CriticalRoom`), then is offered the endpoints with
  room. Without flow control nothing waits and every ready endpoint is offered.
Room tests read a `RoomView` of the pool's current snapshot, built once per snapshot and shared
by all waiters (a wake-up over 1,024 endpoints and 100 waiters stays well under a millisecond:
tests/bench/test_bench_admission.py). Neighbours: `epp.director` calls `admit`; `epp.datastore`
supplies snapshots and wakes the waiting room; `epp.scheduling.service_time` predicts times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from epp.admission.flow_control import FlowControl
from epp.admission.rooms import CRITICAL_QUEUE_AFTER, CriticalRoom, RoomView, StandardRoom
from epp.admission.shedding import Shedder
from epp.datastore import Datastore
from epp.request import InferenceRequest
from epp.scheduling.output_length import LengthPlan
from epp.scheduling.service_time import ServiceTime
from epp.settings import SaturationSettings
from epp.types import EndpointState

MAX_VIEWS = 256  # cached views (pool, subset hint) before the cache starts over


class AdmissionController:
    def __init__(
        self,
        store: Datastore,
        saturation: SaturationSettings,
        flow: FlowControl | None = None,
        service_time: ServiceTime | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flow = flow
        self._store = store
        self._shedder = Shedder(saturation)
        self._service_time = service_time or ServiceTime()
        self._clock = clock
        # (pool, subset hint) -> (the snapshot a view was built from, the view)
        self._views: dict[tuple[str, tuple[str, ...] | None], tuple[object, RoomView]] = {}

    async def admit(
        self,
        request: InferenceRequest,
        pool_key: str,
        priority: int,
        subset: Sequence[str] | None = None,
        plan: LengthPlan | None = None,
    ) -> list[EndpointState]:
        """Wait for room (or refuse the request), then return the endpoints it is offered.
        `plan`: the answer length to plan with (default: the request's cap, else typical)."""
        if not request.runs_inference:
            return self._store.ready(pool_key, subset)
        if priority < 0:  # a sheddable request leaves part of each batch free
            ready = self._store.ready(pool_key, subset)
            with_room = self._shedder.admit(ready, self._clock())
            return with_room if self.flow is not None else ready
        if self.flow is None:
            return self._store.ready(pool_key, subset)
        # a length only expected, not told, singles nothing out: the first free slot will do
        free_first = plan is not None and not plan.told
        await self._wait(request, pool_key, priority, subset, plan, free_first)
        view = self.view(pool_key, subset)
        return view.with_room(priority, free_first) or list(view.candidates)

    def view(self, pool_key: str, subset: Sequence[str] | None = None) -> RoomView:
        """The room facts of the pool's current snapshot (raises `NoEndpoints`)."""
        states = self._store.candidates(pool_key)
        key = (pool_key, None if subset is None else tuple(subset))
        cached = self._views.get(key)
        if cached is not None and cached[0] is states:
            return cached[1]
        view = RoomView(self._store.ready(pool_key, subset))
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
    ) -> None:
        flow = self.flow
        assert flow is not None

        def current() -> RoomView:
            return self.view(pool_key, subset)

        if priority > 0:
            room: CriticalRoom | StandardRoom = CriticalRoom(current, self._clock)
            # a critical request holding out for a free slot looks again when that wait ends,
            # even if nothing else happens meanwhile
            timer = asyncio.get_running_loop().call_later(
                CRITICAL_QUEUE_AFTER, flow.notify, pool_key
            )
        else:
            tokens, typical = (
                (plan.expected, plan.typical) if plan else (request.output_limit, None)
            )
            room = StandardRoom(
                current, self._service_time, tokens, self._clock, typical, free_first
            )
            timer = None
        try:
            await flow.wait_for_room(pool_key, priority, room, request.size)
        finally:
            if timer is not None:
                timer.cancel()
