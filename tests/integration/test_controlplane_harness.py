"""A gateway under test: simulated pods, EPP processes, the control plane and a real Envoy.

The control plane runs in the test's event loop (so tests can read its xDS state and status) and
follows a manifests folder with `FolderSource`; Envoy gets the minimal ADS bootstrap of
`gateway/envoy-xds.yaml`. Each EPP is a `python -m epp serve` child reading its own manifests.
Shared by the tests/integration/test_controlplane_*.py modules and the xDS benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import yaml

from epp.api.load import load_paths
from epp.controlplane.clusters import TranslateOptions
from epp.controlplane.plane import ControlPlane
from epp.controlplane.xds import start_server
from epp.local.envoy import envoy_binary
from epp.local.pods import plan_pods
from epp.local.processes import ChildProcess, wait_until
from epp.sim.cluster import SimCluster, SimPodSpec
from epp.sources.files import FolderSource
from tests.ports import free_ports

REPO = Path(__file__).resolve().parents[2]
HOST = "api.ai-platform.example.com"
CHAT = {
    "model": "llama2-7b-chat",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
}


def xds_bootstrap(
    xds_port: int, admin_port: int, node: str = "test-envoy", api_type: str = "GRPC"
) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO / "gateway" / "envoy-xds.yaml").read_text())
    config["node"]["id"] = node
    config["dynamic_resources"]["ads_config"]["api_type"] = api_type
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    endpoint = config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]
    endpoint["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"] = xds_port
    return config


CANARY = REPO / "examples" / "canary"


def canary_manifests(run_dir: Path, first_pod_ip: int) -> tuple[Path, list[SimPodSpec]]:
    """A copy of examples/canary plus Pods for its pools on 127.0.0.<first_pod_ip>… (fast sims)."""
    manifests = run_dir / "manifests"
    shutil.copytree(CANARY, manifests)
    specs, pods = plan_pods(
        load_paths([manifests]), first_pod_ip=first_pod_ip, sim_options={"speed": 10.0}
    )
    (manifests / "pods.yaml").write_text(yaml.safe_dump_all(pods))
    return manifests, list(specs)


def pod_manifest(name: str, ip: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(labels)},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


async def start_envoy(
    run_dir: Path, xds_port: int, name: str = "envoy", api_type: str = "GRPC"
) -> tuple[ChildProcess, int]:
    (admin_port,) = free_ports(1)
    path = run_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(xds_bootstrap(xds_port, admin_port, name, api_type)))
    argv = [envoy_binary(), "-c", str(path), "--log-level", "warning", "--concurrency", "1"]
    argv += ["--disable-hot-restart", "--base-id-path", str(run_dir / f"{name}.base-id")]
    envoy = ChildProcess(name, argv, run_dir / f"{name}.log")
    await envoy.start()
    return envoy, admin_port


@dataclass
class Epp:
    name: str
    manifests: tuple[Path, ...]
    grpc_port: int = 0
    metrics_port: int = 0
    process: ChildProcess | None = None


class Gateway:
    """Everything for one test module; `async with Gateway(...) as gw:`."""

    def __init__(
        self,
        run_dir: Path,
        manifests: Path,
        pods: Sequence[SimPodSpec],
        epps: Mapping[str, Sequence[Path]],
        pool_epps: Mapping[str, str] | None = None,
        epp_tls: bool = False,
        api_type: str = "GRPC",  # or "DELTA_GRPC": incremental xDS
    ) -> None:
        self.epp_tls = epp_tls
        self.api_type = api_type
        self.run_dir = run_dir
        self.manifests = manifests
        self.pods = list(pods)
        self.epps = {name: Epp(name, tuple(paths)) for name, paths in epps.items()}
        self.pool_epps = dict(pool_epps or {})
        self.https_port, self.http_port = free_ports(2)
        self.plane: ControlPlane | None = None
        self.sim: SimCluster | None = None
        self.envoy: ChildProcess | None = None
        self.admin_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._follow: asyncio.Task[None] | None = None
        self.source: FolderSource | None = None

    @property
    def ca(self) -> Path:
        return self.run_dir / "certs" / "ca.crt"

    async def __aenter__(self) -> Gateway:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self) -> None:
        self.sim = SimCluster(self.pods)
        await self.sim.__aenter__()
        for epp in self.epps.values():
            epp.grpc_port, epp.metrics_port = free_ports(2)
        for name in self.epps:
            await self.start_epp(name)
        first = next(iter(self.epps.values()))
        options = TranslateOptions(
            default_epp=f"127.0.0.1:{first.grpc_port}",
            pool_epps={p: f"127.0.0.1:{self.epps[e].grpc_port}" for p, e in self.pool_epps.items()},
            ignore_extension_refs=True,
            epp_tls=self.epp_tls,
            listen_host="127.0.0.1",
            port_map={443: self.https_port, 80: self.http_port},
            plain_http_port=None,
        )
        self.plane = ControlPlane(options, self.run_dir / "certs")
        self.source = FolderSource([self.manifests], interval=0.1)
        self.plane.apply(self.source.current())
        self._grpc, xds_port = await start_server(self.plane.server, "127.0.0.1", 0)
        self._follow = asyncio.create_task(self.plane.follow(self.source.watch()))
        self.envoy, self.admin_port = await start_envoy(
            self.run_dir, xds_port, api_type=self.api_type
        )
        await self.plane.server.wait_synced(timeout=30)
        await wait_until(self._listening, "Envoy's gateway listener", 30, self.envoy)

    async def _listening(self) -> bool:
        with contextlib.suppress(OSError):
            _r, writer = await asyncio.open_connection("127.0.0.1", self.https_port)
            writer.close()
            return True
        return False

    async def start_epp(self, name: str) -> None:
        epp = self.epps[name]
        health = free_ports(1)[0]
        argv = [sys.executable, "-m", "epp", "serve", "--grpc-port", str(epp.grpc_port)]
        argv += ["--health-port", str(health), "--metrics-port", str(epp.metrics_port)]
        for path in epp.manifests:
            argv += ["--manifests", str(path)]
        if self.epp_tls:
            argv.append("--secure-serving")
        epp.process = ChildProcess(f"epp-{name}", argv, self.run_dir / f"epp-{name}.log")
        await epp.process.start()
        url = f"http://127.0.0.1:{epp.metrics_port}/healthz"
        await wait_until(lambda: _ok(url), f"EPP {name}", 30, epp.process)

    async def stop_epp(self, name: str) -> None:
        process = self.epps[name].process
        if process is not None:
            await process.kill()

    async def stop(self) -> None:
        if self.envoy is not None:
            await self.envoy.stop()
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        if self._grpc is not None:
            await self._grpc.stop(0.5)
        for epp in self.epps.values():
            if epp.process is not None:
                await epp.process.stop()
        if self.sim is not None:
            with contextlib.suppress(Exception):
                await self.sim.__aexit__(None, None, None)
            self.sim = None

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(verify=ssl.create_default_context(cafile=self.ca), timeout=20.0)

    async def post(
        self, client: httpx.AsyncClient, path: str, headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        url = f"https://127.0.0.1:{self.https_port}{path}"
        sent = {"host": HOST, "x-model-name": "llama2-7b-chat", **(headers or {})}
        return await client.post(url, json=CHAT, headers=sent)

    async def pods_hit(
        self, path: str, headers: Mapping[str, str] | None, count: int
    ) -> dict[str, int]:
        """Sends `count` requests (8 at a time); returns pod name (or status code) -> hits.

        A pod's answer counts only when it is a 200: anything else is counted by its status.
        """
        hits: dict[str, int] = {}
        gate = asyncio.Semaphore(8)
        async with self.client() as client:

            async def one() -> None:
                async with gate:
                    response = await self.post(client, path, headers)
                pod = response.headers.get("x-inference-pod", "")
                pod = pod if response.status_code == 200 else str(response.status_code)
                hits[pod] = hits.get(pod, 0) + 1

            await asyncio.gather(*(one() for _ in range(count)))
        return hits

    async def synced_after(self, change: Path, text: str, timeout: float = 10.0) -> None:
        """Writes a manifest and waits until Envoy answered the config generation it causes."""
        assert self.plane is not None
        before = self.plane.cache.generation
        change.write_text(text)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.plane.cache.generation == before:
            assert loop.time() < deadline, "the control plane did not pick up the change"
            await asyncio.sleep(0.05)
        await self.plane.server.wait_synced(timeout=timeout)


async def _ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as client:
        return (await client.get(url)).status_code == 200
