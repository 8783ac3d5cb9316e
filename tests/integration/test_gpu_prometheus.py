"""GpuPoller against a real Prometheus (Debian package `prometheus`) scraping a DCGM-style exporter.

The test starts /usr/bin/prometheus itself (temp config and TSDB, loopback port, 1 s scrapes). It
scrapes either a small aiohttp exporter serving `DCGM_FI_DEV_GPU_UTIL{pod,namespace}` whose value
rises when load is applied (the poller must see the rise, then degrade to "unknown" when
Prometheus goes away), or the simulator's own DCGM exporter while completions keep one pod busy.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from epp.gpu import GpuPoller, GpuSettings, HealthSettings
from epp.hardware import HEALTH_DEGRADED, HEALTH_DRAIN, HEALTH_OK
from epp.sim.cluster import SimCluster, SimPodSpec
from epp.types import GpuMetrics
from tests.prometheus import free_port, run_prometheus

pytestmark = pytest.mark.integration


@dataclass
class Exporter:
    """DCGM-like exporter: utilization and framebuffer per pod; `load()` makes pod a busy."""

    util: dict[tuple[str, str | None], float] = field(
        default_factory=lambda: {("sim-a", "default"): 5.0, ("sim-b", "default"): 10.0,
                                 ("bare-pod", None): 42.0}
    )  # fmt: skip
    used_mib: float = 8_000.0
    # DCGM health families: clock event reasons, temperature, last XID, violation counters (us)
    reasons: dict[str, int] = field(default_factory=dict)
    temperature: dict[str, float] = field(default_factory=dict)
    xid: dict[str, int] = field(default_factory=dict)
    violating: set[str] = field(default_factory=set)  # pods whose thermal violation time grows
    _violation_us: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=time.monotonic)

    def load(self) -> None:
        self.util[("sim-a", "default")] = 95.0
        self.used_mib = 60_000.0

    async def handle(self, request: web.Request) -> web.Response:
        lines = ["# TYPE DCGM_FI_DEV_GPU_UTIL gauge"]
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        for i, ((pod, ns), value) in enumerate(self.util.items()):
            ns_label = f',namespace="{ns}"' if ns else ""
            labels = f'{{gpu="{i}",UUID="GPU-{i}",pod="{pod}"{ns_label},container="vllm"}}'
            lines.append(f"DCGM_FI_DEV_GPU_UTIL{labels} {value}")
            lines.append(f"DCGM_FI_DEV_FB_USED{labels} {self.used_mib}")
            lines.append(f"DCGM_FI_DEV_FB_FREE{labels} {80_000 - self.used_mib}")
            lines += self._health_lines(pod, labels, elapsed)
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    def _health_lines(self, pod: str, labels: str, elapsed: float) -> list[str]:
        if pod in self.violating:  # throttled half of the time
            self._violation_us[pod] = self._violation_us.get(pod, 0.0) + elapsed * 500_000
        return [
            f"DCGM_FI_DEV_CLOCKS_EVENT_REASONS{labels} {self.reasons.get(pod, 0)}",
            f"DCGM_FI_DEV_GPU_TEMP{labels} {self.temperature.get(pod, 60.0)}",
            f"DCGM_FI_DEV_XID_ERRORS{labels} {self.xid.get(pod, 0)}",
            f"DCGM_FI_DEV_THERMAL_VIOLATION{labels} {self._violation_us.get(pod, 0.0)}",
            f"DCGM_FI_DEV_POWER_VIOLATION{labels} 0",
        ]


@dataclass
class Sink:
    latest: dict[str, GpuMetrics] = field(default_factory=dict)
    calls: int = 0

    def set_gpu(self, pod_key: str, gpu: GpuMetrics) -> None:
        self.latest[pod_key] = gpu
        self.calls += 1


@pytest.fixture
async def exporter() -> AsyncIterator[tuple[Exporter, int]]:
    exp = Exporter()
    app = web.Application()
    app.router.add_get("/metrics", exp.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield exp, runner.addresses[0][1]
    await runner.cleanup()


@pytest.fixture
def prometheus(
    tmp_path: Path, exporter: tuple[Exporter, int]
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with run_prometheus(tmp_path, f"127.0.0.1:{exporter[1]}") as running:
        yield running


async def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def util_of(sink: Sink, key: str) -> float | None:
    gpu = sink.latest.get(key)
    return None if gpu is None else gpu.utilization


async def test_poller_sees_utilization_rise_then_unknown_when_prometheus_dies(
    exporter: tuple[Exporter, int],
    prometheus: tuple[subprocess.Popen[bytes], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    exp, _ = exporter
    proc, url = prometheus
    sink = Sink()
    poller = GpuPoller(sink, GpuSettings(prometheus_url=url, interval=0.3, timeout=1.0))
    task = asyncio.create_task(poller.run())
    caplog.set_level(logging.INFO, logger="epp.gpu")
    try:
        await wait_for(lambda: util_of(sink, "default/sim-a") == 5.0, 30, "first samples")
        assert util_of(sink, "default/sim-b") == 10.0
        assert util_of(sink, "bare-pod") == 42.0  # no namespace label: the bare pod name
        memory = sink.latest["default/sim-a"].memory_used_fraction
        assert memory == pytest.approx(0.1)

        exp.load()
        await wait_for(lambda: (util_of(sink, "default/sim-a") or 0) > 50, 15, "utilization rise")
        assert util_of(sink, "default/sim-a") == 95.0
        assert sink.latest["default/sim-a"].memory_used_fraction == pytest.approx(0.75)
        assert util_of(sink, "default/sim-b") == 10.0

        # (Prometheus may have refused the very first poll while starting: count from here)
        caplog.clear()
        proc.terminate()
        proc.wait(timeout=10)
        await wait_for(lambda: util_of(sink, "default/sim-a") is None, 10, "unknown")
        assert all(g.utilization is None for g in sink.latest.values())
        calls = sink.calls
        await asyncio.sleep(1.0)  # several failed polls: no crash, one log line, no new sets
        assert not task.done()
        assert sink.calls == calls
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def health_of(sink: Sink, key: str) -> str | None:
    gpu = sink.latest.get(key)
    return None if gpu is None else gpu.health


async def test_dcgm_health_through_prometheus(
    exporter: tuple[Exporter, int], prometheus: tuple[subprocess.Popen[bytes], str]
) -> None:
    exp, _ = exporter
    _, url = prometheus
    sink = Sink()
    health = HealthSettings(clear_after=1.5)
    settings = GpuSettings(prometheus_url=url, interval=0.3, timeout=1.0, health=health)
    task = asyncio.create_task(GpuPoller(sink, settings).run())
    try:
        await wait_for(lambda: health_of(sink, "default/sim-a") == HEALTH_OK, 30, "samples")
        exp.reasons["sim-a"] = 0x40 | 0x1  # hardware thermal slowdown (and idle)
        exp.xid["sim-b"] = 79  # fallen off the bus
        exp.violating.add("bare-pod")
        await wait_for(lambda: health_of(sink, "default/sim-a") == HEALTH_DEGRADED, 10, "hot")
        await wait_for(lambda: health_of(sink, "default/sim-b") == HEALTH_DRAIN, 10, "xid")
        await wait_for(lambda: health_of(sink, "bare-pod") == HEALTH_DEGRADED, 15, "violation")
        cooled = time.monotonic()
        exp.reasons["sim-a"] = 0x1
        await wait_for(lambda: health_of(sink, "default/sim-a") == HEALTH_OK, 10, "cooled")
        assert time.monotonic() - cooled >= health.clear_after  # hysteresis: not at once
        assert health_of(sink, "default/sim-b") == HEALTH_DRAIN
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_unreachable_prometheus_never_crashes(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink()
    settings = GpuSettings(prometheus_url=f"http://127.0.0.1:{free_port()}", interval=0.05)
    task = asyncio.create_task(GpuPoller(sink, settings).run())
    caplog.set_level(logging.INFO, logger="epp.gpu")
    await asyncio.sleep(0.6)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sink.latest == {}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unavailable" in warnings[0].getMessage()


async def test_simulator_gpu_exporter_shows_load(tmp_path: Path) -> None:
    specs = [SimPodSpec("127.0.0.1", 0, "sim-a"), SimPodSpec("127.0.0.1", 0, "sim-b")]
    async with SimCluster(specs, gpu_exporter=("127.0.0.1", 0)) as cluster:
        assert cluster.gpu_exporter_address is not None
        with run_prometheus(tmp_path, cluster.gpu_exporter_address) as (_, url):
            sink = Sink()
            poller = GpuPoller(sink, GpuSettings(prometheus_url=url, interval=0.3, timeout=1.0))
            task = asyncio.create_task(poller.run())
            load: list[asyncio.Task[None]] = []
            try:
                # the poller's queries run one after another: Prometheus' first scrape of the
                # exporter can land between them, so a pod can show up before its utilization
                await wait_for(lambda: util_of(sink, "default/sim-a") is not None, 30, "samples")
                idle = util_of(sink, "default/sim-a")
                assert idle is not None and idle < 20
                busy = cluster.pod("sim-a").address
                load = [asyncio.create_task(keep_busy(busy, 20.0)) for _ in range(16)]
                await wait_for(lambda: (util_of(sink, "default/sim-a") or 0) > 50, 20, "load")
                assert (util_of(sink, "default/sim-b") or 0) < 20
            finally:
                for t in [*load, task]:
                    t.cancel()
                await asyncio.gather(*load, task, return_exceptions=True)


async def keep_busy(address: str, seconds: float) -> None:
    """Send long completions to one simulated pod back to back, for at most `seconds`."""
    body = {"model": "meta-llama/Llama-2-7b-chat-hf", "prompt": "hello " * 200,
            "max_tokens": 256, "ignore_eos": True}  # fmt: skip
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.post(f"http://{address}/v1/completions", json=body) as resp:
                await resp.read()


async def test_simulator_gpu_faults_reach_the_poller_as_health(tmp_path: Path) -> None:
    """`/sim/config` GPU faults on the simulator's own exporter, through a real Prometheus: a
    thermal throttle reads degraded, an XID error drain; cleared, both come back to ok."""
    specs = [SimPodSpec("127.0.0.1", 0, "sim-a"), SimPodSpec("127.0.0.1", 0, "sim-b")]
    async with SimCluster(specs, gpu_exporter=("127.0.0.1", 0)) as cluster:
        assert cluster.gpu_exporter_address is not None
        with run_prometheus(tmp_path, cluster.gpu_exporter_address) as (_, url):
            sink = Sink()
            health = HealthSettings(clear_after=1.0)
            settings = GpuSettings(prometheus_url=url, interval=0.3, timeout=1.0, health=health)
            task = asyncio.create_task(GpuPoller(sink, settings).run())
            try:
                await wait_for(lambda: "default/sim-b" in sink.latest, 30, "first samples")
                assert health_of(sink, "default/sim-a") == HEALTH_OK
                async with aiohttp.ClientSession() as http:
                    for name, fault in (("sim-a", {"throttle": "thermal"}), ("sim-b", {"xid": 79})):
                        address = cluster.pod(name).address
                        async with http.post(
                            f"http://{address}/sim/config", json={"gpu": fault}
                        ) as r:
                            assert r.status == 200
                    await wait_for(
                        lambda: health_of(sink, "default/sim-a") == HEALTH_DEGRADED, 10, "hot"
                    )
                    await wait_for(
                        lambda: health_of(sink, "default/sim-b") == HEALTH_DRAIN, 10, "xid"
                    )
                    for name in ("sim-a", "sim-b"):
                        address = cluster.pod(name).address
                        async with http.post(
                            f"http://{address}/sim/config", json={"gpu": None}
                        ) as r:
                            assert r.status == 200
                for key in ("default/sim-a", "default/sim-b"):
                    await wait_for(lambda k=key: health_of(sink, k) == HEALTH_OK, 15, "cleared")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
