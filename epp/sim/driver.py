"""Two ways to move an `Engine` through time: a fake clock for tests and asyncio for serving.

`ManualDriver` replays arrivals and steps in time order without sleeping, so engine tests are
deterministic. `RealtimeDriver` is one asyncio task per pod: it sleeps until the current step's
end, commits it, and wakes the streams that got tokens (coalescing wake-ups when steps are
shorter than `flush_interval`); idle, it waits on an event set by `submit`. Used by
`epp.sim.pod`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable

from epp.sim.engine import Engine, Seq

log = logging.getLogger(__name__)
MAX_LAG = 0.02  # seconds of event-loop lag the engine clock absorbs


class ManualDriver:
    """Runs an engine on a fake clock: `submit_at(t, seq)` then `run(until)`."""

    def __init__(self, engine: Engine, start: float = 0.0) -> None:
        self.engine = engine
        self.now = start
        self._arrivals: list[tuple[float, int, Seq]] = []
        self._order = itertools.count()
        self._step_end: float | None = None

    def submit_at(self, t: float, seq: Seq) -> None:
        heapq.heappush(self._arrivals, (t, next(self._order), seq))

    def run(self, until: float = math.inf) -> float:
        """Advance to `until` (or until idle with no arrivals left); returns the clock."""
        engine = self.engine
        while True:
            next_arrival = self._arrivals[0][0] if self._arrivals else math.inf
            if self._step_end is None:
                d = engine.plan_step(self.now)
                if d is not None:
                    self._step_end = self.now + d
                    continue
                if not self._arrivals or next_arrival > until:
                    if until != math.inf:
                        self.now = until
                    return self.now
                self.now = max(self.now, next_arrival)
                while self._arrivals and self._arrivals[0][0] <= self.now:
                    engine.submit(heapq.heappop(self._arrivals)[2], self.now)
                continue
            if next_arrival <= self._step_end and next_arrival <= until:
                self.now = max(self.now, next_arrival)
                engine.submit(heapq.heappop(self._arrivals)[2], self.now)
                continue
            if self._step_end > until:
                self.now = until
                return self.now
            self.now = self._step_end
            self._step_end = None
            engine.finish_step(self.now)


class RealtimeDriver:
    """The engine loop of one pod, on the running asyncio loop."""

    def __init__(self, engine: Engine, flush_interval: float = 0.0) -> None:
        self.engine = engine
        self.flush_interval = flush_interval
        self._wake = asyncio.Event()
        self._dirty: dict[int, Seq] = {}
        self._last_flush = 0.0
        self.on_step: Callable[[], None] | None = None  # after each step (KV events out)

    def submit(self, seq: Seq) -> None:
        self.engine.submit(seq, asyncio.get_running_loop().time())
        self._wake.set()

    def abort(self, seq: Seq) -> None:
        self.engine.abort(seq)
        self._dirty.pop(id(seq), None)

    async def run(self) -> None:
        try:
            await self._loop()
        except Exception:
            log.exception("simulated engine loop crashed")
            raise

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self.engine
        end = loop.time()
        while True:
            # Back-to-back steps chain on their planned ends, so event-loop lag does not slow
            # the simulated GPU down; a lag beyond MAX_LAG is dropped rather than caught up.
            start = max(end, loop.time() - MAX_LAG)
            d = engine.plan_step(start)
            if d is None:
                self._flush(loop.time())
                self._wake.clear()
                await self._wake.wait()
                end = loop.time()
                continue
            end = start + d
            await asyncio.sleep(end - loop.time())
            now = end
            urgent = False
            dirty = self._dirty
            for seq in engine.finish_step(now):
                dirty[id(seq)] = seq
                if seq.generated == 1 or seq.done:
                    urgent = True
            if self.on_step is not None:
                self.on_step()
            if urgent or now - self._last_flush >= self.flush_interval:
                self._flush(now)

    def _flush(self, now: float) -> None:
        self._last_flush = now
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, {}
        for seq in dirty.values():
            if seq.notify is not None:
                try:
                    seq.notify()
                except Exception:  # a broken stream must not stop the engine
                    log.exception("notifying request %s failed", seq.rid)
