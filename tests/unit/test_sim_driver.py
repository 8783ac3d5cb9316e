"""The real-time engine loop: tokens arrive on time, and short steps coalesce wake-ups."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from epp.sim.driver import RealtimeDriver
from epp.sim.engine import Engine, EngineConfig, Seq
from epp.sim.profiles import get_profile


async def run_one(flush_interval: float, speed: float, tokens: int) -> tuple[int, float, Seq]:
    engine = Engine(EngineConfig(profile=get_profile("H100"), speed=speed))
    driver = RealtimeDriver(engine, flush_interval)
    task = asyncio.ensure_future(driver.run())
    done = asyncio.Event()
    wakes = 0
    seq = Seq("r", 64, tokens, [])

    def notify() -> None:
        nonlocal wakes
        wakes += 1
        if seq.done:
            done.set()

    seq.notify = notify
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    driver.submit(seq)
    await asyncio.wait_for(done.wait(), 5)
    elapsed = loop.time() - t0
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return wakes, elapsed, seq


async def test_every_step_wakes_the_stream_without_a_flush_interval() -> None:
    wakes, elapsed, seq = await run_one(0.0, 1.0, 20)
    assert wakes == 20
    # one prefill step and 19 decode steps of ~6 ms on an H100
    assert seq.first_token_at is not None and seq.finished_at is not None
    assert seq.finished_at - seq.arrival == pytest.approx(elapsed, abs=0.02)
    assert 0.1 < elapsed < 0.4


async def test_short_steps_are_coalesced_by_the_flush_interval() -> None:
    wakes, elapsed, seq = await run_one(0.05, 20.0, 200)
    assert seq.generated == 200
    assert wakes <= elapsed / 0.05 + 3  # first token, one per interval, last token
    assert wakes < 50
