"""Gateways side by side for the cost benchmarks: Envoy + EPP and Envoy least-request.

`GatewayPair` starts, over the same backends, one EPP (`epp serve`, from manifests or a list of
endpoints) and two Envoys from `gateway/envoy.yaml`: one with the ext_proc filter, one without
it (the pool cluster's fallback policy is least-request). `cpu_seconds` reads a process's user +
system time from /proc; `open_loop` sends requests at a fixed rate and returns their latencies.
Used by `tests/bench/test_bench_extproc.py`.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from epp.local.envoy import EnvoyPorts, envoy_argv, render_bootstrap
from epp.local.processes import ChildProcess, wait_until
from tests.ports import free_ports

EPP = "envoy+epp"
LEAST_REQUEST = "envoy least-request"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def pid_of(child: ChildProcess) -> int:
    assert child.proc is not None
    return child.proc.pid


def seed_manifests(pods: Sequence[tuple[str, int]], model: str, served: str) -> list[Any]:
    """A seed-shape pool serving `served` on `pods`, and the model `model` routed to it (a
    request for `model` is rewritten to `served`; one for `served` itself is not)."""
    container = {"name": "vllm", "image": "vllm", "env": [{"name": "MODEL_NAME", "value": served}]}
    pool = {
        "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": "bench-pool"},
        "spec": {
            "targetPortNumber": pods[0][1],
            "deployment": {
                "replicas": len(pods),
                "template": {"spec": {"containers": [container]}},
            },
        },
    }
    inference_model = {
        "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": model},
        "spec": {"poolRef": {"name": "bench-pool"}},
    }
    pod_docs = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"bench-{i}",
                "labels": {"inference.networking.x-k8s.io/pool": "bench-pool"},
            },
            "spec": {"containers": [{"name": "vllm", "image": "sim"}]},
            "status": {"podIP": host, "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for i, (host, _) in enumerate(pods)
    ]
    return [pool, inference_model, *pod_docs]


class GatewayPair:
    """One EPP and two Envoys in front of `pods`; `urls[EPP]` and `urls[LEAST_REQUEST]`."""

    def __init__(
        self,
        run_dir: Path,
        pods: Sequence[tuple[str, int]],
        manifests: list[Any] | None = None,
        epp_args: Sequence[str] = (),
        epp_command: Sequence[str] = (sys.executable, "-m", "epp"),
        envoy_patch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.pods = list(pods)
        self.manifests = manifests
        self.epp_args = list(epp_args)
        self.epp_command = list(epp_command)  # experiments run the EPP under a wrapper
        self.envoy_patch = envoy_patch  # experiments change the ext_proc filter
        self.children: list[ChildProcess] = []
        self.urls: dict[str, str] = {}
        self.envoys: dict[str, ChildProcess] = {}
        self.epp: ChildProcess | None = None
        self.metrics_port = 0

    async def __aenter__(self) -> GatewayPair:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        l_epp, a_epp, l_lr, a_lr, grpc, health, metrics = free_ports(7)
        self.metrics_port = metrics
        argv = [*self.epp_command, "--log-level", "WARNING", "serve"]
        if self.manifests is not None:
            path = self.run_dir / "manifests.yaml"
            path.write_text(yaml.safe_dump_all(self.manifests))
            argv += ["--manifests", str(path)]
        else:
            argv += ["--endpoints", ",".join(f"{h}:{p}" for h, p in self.pods)]
        argv += ["--grpc-port", str(grpc), "--health-port", str(health)]
        argv += ["--metrics-port", str(metrics), *self.epp_args]
        self.epp = ChildProcess("epp", argv, self.run_dir / "epp.log")
        with_epp = render_bootstrap(EnvoyPorts(l_epp, a_epp, grpc), fallback=self.pods)
        if self.envoy_patch is not None:
            self.envoy_patch(with_epp)
        least = render_bootstrap(EnvoyPorts(l_lr, a_lr, grpc), fallback=self.pods)
        hcm = least["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        filters = hcm["typed_config"]["http_filters"]
        filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.ext_proc"]
        self.children.append(self.epp)
        for name, config, listener in ((EPP, with_epp, l_epp), (LEAST_REQUEST, least, l_lr)):
            path = self.run_dir / f"envoy-{len(self.envoys)}.yaml"
            path.write_text(yaml.safe_dump(config))
            log = self.run_dir / f"envoy-{len(self.envoys)}.log"
            self.envoys[name] = ChildProcess(name, envoy_argv(path), log)
            self.children.append(self.envoys[name])
            self.urls[name] = f"http://127.0.0.1:{listener}"
        for child in self.children:
            await child.start()
        async with aiohttp.ClientSession() as session:

            async def ok(url: str) -> bool:
                async with session.get(url) as r:
                    return r.status == 200

            await wait_until(lambda: ok(f"http://127.0.0.1:{metrics}/healthz"), "epp", 30, self.epp)
            for port in (a_epp, a_lr):
                await wait_until(lambda p=port: ok(f"http://127.0.0.1:{p}/ready"), "envoy", 30)

    async def __aexit__(self, *exc: object) -> None:
        for child in reversed(self.children):
            await child.stop()

    def cpu(self, path: str) -> dict[str, float]:
        """CPU seconds so far of the processes on `path` (the EPP counts only on its path)."""
        out = {"envoy": cpu_seconds(pid_of(self.envoys[path]))}
        if path == EPP and self.epp is not None:
            out["epp"] = cpu_seconds(pid_of(self.epp))
        return out

    def epp_cpu(self) -> float:
        assert self.epp is not None
        return cpu_seconds(pid_of(self.epp))


Send = Callable[[aiohttp.ClientSession, str], Awaitable[bool]]


async def paced(rate: float, count: int) -> AsyncIterator[int]:
    """0, 1, ... count - 1 at `rate` per second from now (open loop: a late tick goes at once)."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i


async def open_loop(
    session: aiohttp.ClientSession, url: str, send: Send, rate: float, seconds: float
) -> tuple[list[float], int]:
    """`rate` requests/s for `seconds` (open loop); latencies of the good ones, and the errors."""
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        start = time.perf_counter()
        try:
            ok = await send(session, url)
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if ok:
            latencies.append(time.perf_counter() - start)
        else:
            errors += 1

    tasks = [asyncio.create_task(one()) async for _ in paced(rate, int(rate * seconds))]
    await asyncio.gather(*tasks)
    return latencies, errors


def run_h2load(argv: list[str], counts: str) -> tuple[list[int], float]:
    """Run h2load (`argv` after the program name) to its end: the integers of the first match
    of `counts` in its report, and the CPU seconds h2load itself used."""
    proc = subprocess.Popen(
        ["h2load", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    with proc.stdout:
        out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, out
    found = re.search(counts, out)
    assert found is not None, out
    return [int(g) for g in found.groups()], usage.ru_utime + usage.ru_stime
