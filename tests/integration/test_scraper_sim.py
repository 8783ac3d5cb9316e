"""Scraper against the simulator's vLLM /metrics (real sockets): values, garbage fault, recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from epp.scrape.scraper import Scraper, ScrapeSettings
from epp.sim.cluster import SimCluster, SimPodSpec
from epp.types import Endpoint, EndpointMetrics

pytestmark = pytest.mark.integration


@dataclass
class Sink:
    metrics: dict[str, EndpointMetrics] = field(default_factory=dict)
    health: list[tuple[str, bool]] = field(default_factory=list)

    def set_metrics(self, address: str, metrics: EndpointMetrics) -> None:
        self.metrics[address] = metrics

    def set_health(self, address: str, healthy: bool) -> None:
        self.health.append((address, healthy))


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_scrapes_simulated_pods() -> None:
    specs = [
        SimPodSpec("127.0.0.1", 0, "new", num_gpu_blocks=5000, block_size=32),
        SimPodSpec("127.0.0.1", 0, "old", legacy_metrics=True),
    ]
    async with SimCluster(specs) as cluster:
        new, old = cluster.pod("new"), cluster.pod("old")
        endpoints = [Endpoint(address=p.address, pod=p.name, pool="default/p") for p in (new, old)]
        sink = Sink()
        settings = ScrapeSettings(interval=0.02, timeout=0.3, backoff_max=0.1)
        task = asyncio.create_task(Scraper(sink, lambda: endpoints, settings).run())
        try:
            await wait_for(lambda: len(sink.metrics) == 2)
            m = sink.metrics[new.address]
            assert (m.block_size, m.num_gpu_blocks, m.waiting, m.running) == (32, 5000, 0, 0)
            assert sink.metrics[old.address].block_size == 16

            new.set_fake_metrics(waiting=7, running=3, kv_usage=0.5)
            await wait_for(lambda: sink.metrics[new.address].waiting == 7, timeout=1.0)
            assert sink.metrics[new.address].kv_usage == 0.5

            new.set_faults(metrics="garbage")
            await wait_for(lambda: (new.address, False) in sink.health)
            new.set_faults(metrics=None)
            await wait_for(lambda: (new.address, True) in sink.health)
            assert (old.address, False) not in sink.health
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
