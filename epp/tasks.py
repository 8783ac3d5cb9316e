"""One owner for background tasks: every loop is named, guarded, restarted and stopped.

`TaskOwner.spawn(name, factory)` runs `factory()` (a fresh coroutine per attempt) as a task of that
name. A crash is logged at once with its traceback; a restartable job runs again after an
exponential `Backoff`, any other job stays down. `on_down(name)` is awaited when a job stops
running (it crashed, returned while meant to run until stopped, or was cancelled by someone else)
and `on_up(name)` when it runs again: at once on restart, or, for a `signals_up` job (a resource
feed), when the job calls `up(name)` after re-applying what it feeds. Cancellation always
propagates; `aclose()` cancels and awaits every task within a timeout. Modelled on kopf's
`_cogs/aiokits/aiotasks.py`. A leaf (asyncio and logging only); `epp.server` owns one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

log = logging.getLogger("epp.tasks")

Factory = Callable[[], Coroutine[Any, Any, None]]
Hook = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays before restarting a crashed job: `initial`, times `factor` per failure in a row,
    at most `maximum`. A run that lasted at least `maximum` seconds starts the count afresh."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.initial <= self.maximum or self.factor < 1:
            raise ValueError(f"backoff needs 0 <= initial <= maximum and factor >= 1: {self}")

    def delay(self, failures: int) -> float:
        """The delay after `failures` (>= 1) failures in a row."""
        return min(self.maximum, self.initial * self.factor ** max(0, failures - 1))


@dataclass(slots=True)
class _Job:
    name: str
    factory: Factory
    restart: bool
    signals_up: bool
    task: asyncio.Task[None] | None = None
    down: bool = False
    restarts: int = 0


class TaskOwner:
    """Starts, guards, restarts and stops named background jobs. See the module docstring."""

    def __init__(
        self,
        *,
        backoff: Backoff | None = None,
        on_down: Hook | None = None,
        on_up: Hook | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        self._backoff = backoff or Backoff()
        self._on_down = on_down
        self._on_up = on_up
        self._stop_timeout = stop_timeout
        self._jobs: dict[str, _Job] = {}
        self._hooks: set[asyncio.Task[None]] = set()  # hooks run for jobs cancelled from outside
        self._closing = False

    def spawn(
        self, name: str, factory: Factory, *, restart: bool = True, signals_up: bool = False
    ) -> asyncio.Task[None]:
        """Run `factory()` as the task `name`. `restart`: the job is meant to run until stopped;
        a crash or a return restarts it after the backoff. `signals_up`: after a restart the job
        counts as down until it calls `up(name)`."""
        if self._closing:
            raise RuntimeError(f"cannot start {name}: the task owner is closed")
        old = self._jobs.get(name)
        if old is not None and old.task is not None and not old.task.done():
            raise ValueError(f"background task {name} is already running")
        job = _Job(name, factory, restart, signals_up)
        task = asyncio.create_task(self._supervise(job), name=name)
        job.task = task
        task.add_done_callback(lambda t: self._finished(job, t))
        self._jobs[name] = job
        return task

    @property
    def down(self) -> frozenset[str]:
        """Jobs that stopped running and do not run again yet."""
        return frozenset(name for name, job in self._jobs.items() if job.down)

    def restarts(self, name: str) -> int:
        return self._jobs[name].restarts

    def task(self, name: str) -> asyncio.Task[None] | None:
        job = self._jobs.get(name)
        return None if job is None else job.task

    async def up(self, name: str) -> None:
        """A `signals_up` job says it runs (again); a no-op unless it was down."""
        job = self._jobs[name]
        if job.down and not self._closing:
            job.down = False
            log.info("background task %s runs again", name)
            await self._call(self._on_up, name)

    async def _supervise(self, job: _Job) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            crash: Exception | None = None
            try:
                await job.factory()
            except Exception as exc:  # CancelledError is a BaseException: it propagates
                crash = exc
            if (crash is None and not job.restart) or self._closing:
                log.debug("background task %s finished", job.name)
                return
            failures = 1 if loop.time() - started >= self._backoff.maximum else failures + 1
            delay = self._backoff.delay(failures)
            what = "returned although it should run until stopped" if crash is None else "crashed"
            plan = f"restarting in {delay:.2f}s" if job.restart else "it stays down"
            log.error("background task %s %s; %s", job.name, what, plan, exc_info=crash)
            del crash  # the traceback holds the job's frames
            await self._mark_down(job)
            if not job.restart:
                return
            await asyncio.sleep(delay)
            job.restarts += 1
            if not job.signals_up:
                await self.up(job.name)

    async def _mark_down(self, job: _Job) -> None:
        if not job.down:
            job.down = True
            await self._call(self._on_down, job.name)

    @staticmethod
    async def _call(hook: Hook | None, name: str) -> None:
        if hook is None:
            return
        try:
            await hook(name)
        except Exception:
            log.exception("hook for background task %s failed", name)

    def _finished(self, job: _Job, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if not self._closing and not job.down:
                log.warning("background task %s was cancelled by someone else; it stays down",
                            job.name)  # fmt: skip
                job.down = True
                hook = asyncio.create_task(self._call(self._on_down, job.name), name="on_down")
                self._hooks.add(hook)
                hook.add_done_callback(self._hooks.discard)
        elif (exc := task.exception()) is not None:  # a BaseException the guard let through
            log.error("background task %s died", job.name, exc_info=exc)

    async def aclose(self) -> None:
        """Cancel every task and wait for them all, at most `stop_timeout` seconds; idempotent."""
        self._closing = True
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        tasks.extend(self._hooks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._stop_timeout)
        for task in pending:
            log.error(
                "background task %s did not stop within %.1fs", task.get_name(), self._stop_timeout
            )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
