"""TaskOwner without sockets: crashes logged at once, restarts with backoff, down/up hooks, stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from epp.tasks import Backoff, TaskOwner

FAST = Backoff(initial=0.05, maximum=0.4)


class Boom(RuntimeError):
    pass


@dataclass
class Flaky:
    """A job that crashes `crashes` times, then runs until cancelled."""

    crashes: int = 0
    starts: list[float] = field(default_factory=list)
    stopped: int = 0  # runs that ended by cancellation (their `finally` ran)

    async def __call__(self) -> None:
        self.starts.append(time.monotonic())
        if len(self.starts) <= self.crashes:
            raise Boom(f"crash {len(self.starts)}")
        try:
            await asyncio.Event().wait()
        finally:
            self.stopped += 1


@dataclass
class Hooks:
    events: list[tuple[str, str]] = field(default_factory=list)

    async def down(self, name: str) -> None:
        self.events.append(("down", name))

    async def up(self, name: str) -> None:
        self.events.append(("up", name))


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_backoff_doubles_up_to_its_maximum() -> None:
    b = Backoff(initial=0.5, maximum=3.0)
    assert [b.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial=2.0, maximum=1.0)
    with pytest.raises(ValueError, match="factor"):
        Backoff(factor=0.5)


async def test_a_crashed_job_is_restarted_after_a_growing_backoff() -> None:
    hooks = Hooks()
    owner = TaskOwner(backoff=FAST, on_down=hooks.down, on_up=hooks.up)
    job = Flaky(crashes=2)
    owner.spawn("feed", job)
    try:
        await until(lambda: len(job.starts) == 3)
        gaps = [b - a for a, b in zip(job.starts, job.starts[1:], strict=False)]
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1, gaps
        assert owner.restarts("feed") == 2
        await until(lambda: not owner.down)
        # down at each crash, up at each restart
        assert hooks.events == [("down", "feed"), ("up", "feed")] * 2
    finally:
        await owner.aclose()


async def test_a_crash_is_logged_at_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="epp.tasks")
    owner = TaskOwner(backoff=Backoff(initial=30, maximum=60))
    job = Flaky(crashes=1)
    owner.spawn("scraper", job)
    try:
        await until(lambda: any(r.exc_info for r in caplog.records))
        (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert record.exc_info is not None and isinstance(record.exc_info[1], Boom)
        assert "scraper crashed; restarting in 30.00s" in record.getMessage()
        assert "Traceback" in caplog.text and "crash 1" in caplog.text
        assert len(job.starts) == 1  # logged long before the restart is due
        assert owner.down == {"scraper"}
    finally:
        await owner.aclose()


async def test_a_job_that_signals_up_stays_down_until_it_says_it_runs_again() -> None:
    hooks = Hooks()
    owner = TaskOwner(backoff=FAST, on_down=hooks.down, on_up=hooks.up)
    caught_up = asyncio.Event()
    runs = 0

    async def feed() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise Boom("watch broke")
        await caught_up.wait()  # e.g. re-applying the current resources
        await owner.up("feed")
        await asyncio.Event().wait()

    owner.spawn("feed", feed, signals_up=True)
    try:
        await until(lambda: runs == 2)
        await asyncio.sleep(0.05)
        assert owner.down == {"feed"} and hooks.events == [("down", "feed")]
        caught_up.set()
        await until(lambda: not owner.down)
        assert hooks.events == [("down", "feed"), ("up", "feed")]
    finally:
        await owner.aclose()


async def test_a_crash_of_a_job_that_may_not_restart_calls_the_down_hook() -> None:
    hooks = Hooks()
    owner = TaskOwner(backoff=FAST, on_down=hooks.down, on_up=hooks.up)
    job = Flaky(crashes=1)
    task = owner.spawn("controller", job, restart=False)
    await until(task.done)
    await asyncio.sleep(0.2)  # several backoffs: no restart comes
    assert len(job.starts) == 1 and owner.restarts("controller") == 0
    assert hooks.events == [("down", "controller")]
    assert owner.down == {"controller"}
    assert not task.cancelled() and task.exception() is None  # the crash was handled, not leaked
    await owner.aclose()


async def test_returning_restarts_a_long_running_job_but_ends_a_one_shot_job() -> None:
    hooks = Hooks()
    owner = TaskOwner(backoff=FAST, on_down=hooks.down, on_up=hooks.up)
    loops = 0
    shots = 0

    async def loop() -> None:
        nonlocal loops
        loops += 1
        if loops > 1:
            await asyncio.Event().wait()

    async def once() -> None:
        nonlocal shots
        shots += 1

    owner.spawn("loop", loop)
    one_shot = owner.spawn("once", once, restart=False)
    try:
        await until(lambda: loops == 2 and not owner.down)
        await until(one_shot.done)
        assert shots == 1 and "once" not in owner.down
        assert hooks.events == [("down", "loop"), ("up", "loop")]
    finally:
        await owner.aclose()


async def test_a_job_cancelled_by_someone_else_stays_down() -> None:
    hooks = Hooks()
    owner = TaskOwner(backoff=FAST, on_down=hooks.down, on_up=hooks.up)
    job = Flaky()
    task = owner.spawn("feed", job)
    await until(lambda: len(job.starts) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # cancellation propagates out of the guard
    await until(lambda: hooks.events == [("down", "feed")])
    await asyncio.sleep(0.2)
    assert len(job.starts) == 1 and owner.down == {"feed"}
    await owner.aclose()


async def test_aclose_cancels_and_awaits_every_task_and_is_idempotent() -> None:
    hooks = Hooks()
    owner = TaskOwner(backoff=Backoff(initial=30, maximum=60), on_down=hooks.down)
    running = [Flaky() for _ in range(3)]
    waiting = Flaky(crashes=1)  # in its backoff sleep when the owner closes
    tasks = [owner.spawn(f"job-{i}", job) for i, job in enumerate(running)]
    tasks.append(owner.spawn("waiting", waiting))
    await until(lambda: all(job.starts for job in running) and owner.down == {"waiting"})
    await owner.aclose()
    assert all(task.done() for task in tasks)
    assert [job.stopped for job in running] == [1, 1, 1]  # each job's own clean-up ran
    assert hooks.events == [("down", "waiting")]  # stopping is not a failure
    assert owner.task("job-0") is tasks[0]
    await owner.aclose()  # again: nothing left to do, no error
    with pytest.raises(RuntimeError, match="closed"):
        owner.spawn("late", Flaky())
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert not [t for t in pending if t.get_name().startswith("job-")]


async def test_aclose_gives_up_on_a_task_that_will_not_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # a bug: swallows cancellation

    owner = TaskOwner(stop_timeout=0.1)
    task = owner.spawn("stubborn", stubborn)
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await owner.aclose()
    assert 0.1 <= time.monotonic() - started < 1.0
    assert "stubborn did not stop within 0.1s" in caplog.text
    release.set()
    await task


async def test_a_name_runs_once_at_a_time() -> None:
    async with TaskOwner() as owner:
        owner.spawn("feed", Flaky())
        with pytest.raises(ValueError, match="already running"):
            owner.spawn("feed", Flaky())
    assert owner.task("feed") is not None and owner.task("feed").done()  # type: ignore[union-attr]
