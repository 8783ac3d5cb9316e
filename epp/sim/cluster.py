"""Many simulated pods in one process, each on its own address, plus an optional DCGM exporter.

`SimCluster` is the entry point tests and `epp.sim.main` use: an async context manager that
builds a `SimPod` per `SimPodSpec`, starts its engine loop and its aiohttp site
(`epp.sim.server`), and stops them all on exit. `pod()` hands out a pod for runtime control.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiohttp import web

from epp.sim.metrics import render_dcgm
from epp.sim.pod import SimPod
from epp.sim.server import METRICS_TYPE, start_server
from epp.sim.spec import FakeMetrics, Faults, SimPodSpec

__all__ = ["FakeMetrics", "Faults", "SimCluster", "SimPod", "SimPodSpec"]


class SimCluster:
    """Hosts one aiohttp site per pod on the running event loop."""

    def __init__(
        self,
        specs: Sequence[SimPodSpec],
        *,
        gpu_exporter: tuple[str, int] | None = None,
        shutdown_timeout: float = 1.0,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("pod names must be unique")
        self.specs = tuple(specs)
        self.gpu_exporter = gpu_exporter
        self.gpu_exporter_address: str | None = None
        self.shutdown_timeout = shutdown_timeout
        self.pods: list[SimPod] = []
        self._runners: list[web.AppRunner] = []
        self.started_at = 0.0

    async def __aenter__(self) -> SimCluster:
        try:
            for spec in self.specs:
                pod = SimPod(spec)
                self.pods.append(pod)
                pod.start()
                self._runners.append(await start_server(pod, self.shutdown_timeout))
            if self.gpu_exporter is not None:
                await self._start_exporter(*self.gpu_exporter)
        except BaseException:
            await self._close()
            raise
        self.started_at = time.time()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        # Sites close first while engines still run, so in-flight responses get their grace.
        for pod in self.pods:
            pod.set_faults(hang=False)
        await asyncio.gather(*(r.cleanup() for r in self._runners), return_exceptions=True)
        self._runners.clear()
        for pod in self.pods:
            await pod.stop()

    async def _start_exporter(self, host: str, port: int) -> None:
        async def page(request: web.Request) -> web.Response:
            body = render_dcgm(self.pods, asyncio.get_running_loop().time())
            return web.Response(body=body, headers={"Content-Type": METRICS_TYPE})

        app = web.Application()
        app.router.add_get("/metrics", page)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        h, p = runner.addresses[0][:2]
        self.gpu_exporter_address = f"{h}:{p}"

    @property
    def addresses(self) -> list[str]:
        """ "ip:port" per pod, in spec order (real ports once started)."""
        return [p.address for p in self.pods]

    def pod(self, address_or_name: str) -> SimPod:
        for p in self.pods:
            if address_or_name in (p.address, p.name):
                return p
        raise KeyError(f"no simulated pod {address_or_name!r}")
