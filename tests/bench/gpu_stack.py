"""Live processes for the GPU-layer benchmark: simulated pods with their DCGM exporter, a real
Prometheus scraping it, and Envoy + EPP (`epp serve --manifests DIR`) in front of them.

`GpuPod` says what one pod runs on (the simulator's speed and KV blocks, the DRA device the EPP
reads: product name, MIG profile); `write_manifests` writes the folder the EPP follows live
(pool and model, the pods with their ResourceClaims, a ResourceSlice with the devices and the
claims' allocations, and optional DeviceTaintRules); `Gateway` starts one EPP and one Envoy;
`load` sends open-loop streaming chat completions and keeps every sample. Used by
`test_bench_gpu_live.py`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from epp.local.envoy import EnvoyPorts, envoy_argv, render_bootstrap
from epp.local.processes import ChildProcess, wait_until
from loadtest.bench.client import Sample, encode, send
from loadtest.workloads import ChatRequest
from tests.kube.dra_objects import claim_v1, claiming_pod, gpu, slice_v1, taint_rule
from tests.kube.objects import seed_model, seed_pool
from tests.ports import free_ports

MODEL = "llama2-7b-chat"
POOL = "llama2-pool"
NODE = "gpu-node-1"


@dataclass(frozen=True, slots=True)
class GpuPod:
    name: str
    host: str
    device: str  # the DRA device its claim holds
    product: str = "NVIDIA A100-SXM4-80GB"
    mig: str | None = None  # MIG profile of the device, e.g. "1g.10gb"


def write_manifests(folder: Path, pods: Sequence[GpuPod], port: int, taint: str | None) -> None:
    """The folder `epp serve --manifests` reads; `taint`: a device under a NoSchedule
    DeviceTaintRule (maintenance). Files are replaced whole (write, then rename)."""
    pool = seed_pool(replicas=len(pods))
    template = pool["spec"]["deployment"]["template"]["spec"]
    del template["nodeSelector"]  # the DRA device names the accelerator
    template["containers"][0]["ports"] = [{"containerPort": port}]
    claims = [claim_v1(f"claim-{p.name}", [p.device], pool=NODE) for p in pods]
    devices = [gpu(p.device, product=p.product, profile=p.mig) for p in pods]
    dra: list[dict[str, Any]] = [slice_v1(NODE, devices), *claims]
    if taint is not None:
        dra.append(taint_rule("maintenance", "NoSchedule", device=taint))
    files = {
        "pool.yaml": [pool, seed_model(MODEL)],
        "pods.yaml": [claiming_pod(p.name, p.host, f"claim-{p.name}", node=NODE) for p in pods],
        "dra.yaml": dra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in files.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        os.replace(tmp, folder / name)


class Gateway:
    """One EPP (file mode, `epp_args` added) and one Envoy with the ext_proc filter."""

    def __init__(
        self,
        run_dir: Path,
        manifests: Path,
        pods: Sequence[tuple[str, int]],
        epp_args: Sequence[str] = (),
    ) -> None:
        self.run_dir = run_dir
        self.manifests = manifests
        self.pods = list(pods)
        self.epp_args = list(epp_args)
        self.children: list[ChildProcess] = []
        self.url = ""
        self.debug_url = ""

    async def __aenter__(self) -> Gateway:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        listener, admin, grpc, health, metrics = free_ports(5)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "epp", "--log-level", "WARNING", "serve"]
        argv += ["--manifests", str(self.manifests), "--grpc-port", str(grpc)]
        argv += ["--health-port", str(health), "--metrics-port", str(metrics), *self.epp_args]
        epp = ChildProcess("epp", argv, self.run_dir / "epp.log")
        config = render_bootstrap(EnvoyPorts(listener, admin, grpc), fallback=self.pods)
        path = self.run_dir / "envoy.yaml"
        path.write_text(yaml.safe_dump(config))
        envoy = ChildProcess("envoy", envoy_argv(path), self.run_dir / "envoy.log")
        self.children = [epp, envoy]
        for child in self.children:
            await child.start()
        self.url = f"http://127.0.0.1:{listener}/v1/chat/completions"
        self.debug_url = f"http://127.0.0.1:{metrics}/debug/endpoints"
        async with aiohttp.ClientSession() as session:

            async def ok(url: str) -> bool:
                async with session.get(url) as r:
                    return r.status == 200

            await wait_until(lambda: ok(f"http://127.0.0.1:{metrics}/healthz"), "epp", 30, epp)
            await wait_until(lambda: ok(f"http://127.0.0.1:{admin}/ready"), "envoy", 30)

    async def __aexit__(self, *exc: object) -> None:
        for child in reversed(self.children):
            await child.stop()

    async def endpoints(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        """`/debug/endpoints` by pod name."""
        async with session.get(self.debug_url) as r:
            rows = (await r.json())["endpoints"]
        return {row["pod"].rsplit("/", 1)[-1]: row for row in rows}


# something to do at a time into the run: (seconds, action)
Event = tuple[float, Callable[[], Awaitable[None]]]


async def load(
    session: aiohttp.ClientSession,
    url: str,
    requests: Iterator[ChatRequest],
    arrivals: Sequence[float],
    events: Sequence[Event] = (),
    drain: float = 60.0,
) -> tuple[list[Sample], dict[float, float]]:
    """Open-loop streaming requests at `arrivals` (seconds from the start), the `events` fired
    at their times on the same clock; the samples, and when each event actually fired."""
    headers = {"content-type": "application/json"}
    bodies = [encode(next(requests), MODEL) for _ in arrivals]
    fired: dict[float, float] = {}
    t0 = time.perf_counter()

    async def fire(at: float, act: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        fired[at] = time.perf_counter() - t0
        await act()

    timers = [asyncio.create_task(fire(at, act)) for at, act in events]
    tasks: list[asyncio.Task[Sample]] = []
    for offset, body in zip(arrivals, bodies, strict=True):
        delay = t0 + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(session, url, body, t0, headers)))
    await asyncio.gather(*timers)
    if tasks:
        await asyncio.wait(tasks, timeout=drain)
    for task in tasks:
        task.cancel()
    return list(await asyncio.gather(*tasks)), fired
