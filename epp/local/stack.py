"""The local stack: simulated pods for every pool, the EPP, and Envoy, from a manifests folder.

Pools in the seed's shape ask for `spec.deployment.replicas` pods; pools without a deployment
and without Pod manifests selecting them get `default_replicas`. Pods get their own loopback
addresses (127.0.0.2, 127.0.0.3, …) on the pool's target port, like pod IPs, and are declared
to the EPP as Pod manifests in the run folder, exactly as a cluster would list them. The EPP
runs as `epp_replicas` replicas (`epp.local.replicas`) that Envoy spreads ext_proc streams over.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import yaml

from epp.api.load import load_paths
from epp.api.model import ResourceSet
from epp.datastore import endpoints_of
from epp.local.envoy import EnvoyPorts, envoy_argv, render_bootstrap, render_xds_bootstrap
from epp.local.gateway import (
    controlplane_argv,
    gateway_status,
    gateways_programmed,
    status_lines,
)
from epp.local.pods import plan_pods, split_address
from epp.local.processes import ChildProcess, wait_until
from epp.local.replicas import EppReplicas
from epp.local.rollouts import LocalRollouts, serve_copy, wants_rollouts
from epp.sim.cluster import SimCluster, SimPodSpec

REPO = Path(__file__).resolve().parents[2]
SEED_EXAMPLE = REPO / "examples" / "seed"


@dataclass(frozen=True, slots=True)
class StackConfig:
    manifests: tuple[Path, ...] = (SEED_EXAMPLE,)
    host: str = "127.0.0.1"
    listener_port: int = 8080
    admin_port: int = 9901
    epp_port: int = 9002
    health_port: int = 9003
    metrics_port: int = 9090
    first_pod_ip: int = 2  # 127.0.0.<n>
    default_replicas: int = 2
    run_dir: Path | None = None
    failure_mode_allow: bool = False
    epp_tls: bool = False  # ext_proc over TLS (self-signed), Envoy configured to use it
    # None: use the control plane when the manifests hold a Gateway, else the static bootstrap
    control_plane: bool | None = None
    https_port: int = 8443  # the Gateway's 443 listener, locally
    xds_port: int = 18000
    status_port: int = 18001
    epp_args: tuple[str, ...] = ()
    epp_replicas: int = 1  # EPP processes serving every pool at once
    peer_port: int = 9004  # UDP: the replicas share their in-flight counts on it
    share_peers: bool = True  # False: replicas know nothing of each other (benchmarks compare)
    sim_options: dict[str, Any] = field(default_factory=dict)
    envoy_patch: Callable[[dict[str, Any]], None] | None = None  # tests: adjust the bootstrap
    say: Callable[[str], None] = field(default=partial(print, flush=True))  # rollout steps
    rollout_prometheus: str | None = None  # answers rollout policies' analysis.queries


class LocalStack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir or Path(tempfile.mkdtemp(prefix="epp-up-"))
        self.resources = ResourceSet()
        self.sim: SimCluster | None = None
        self.replicas: EppReplicas | None = None
        self.envoy: ChildProcess | None = None
        self.controlplane: ChildProcess | None = None
        self.pods: list[SimPodSpec] = []
        self.gateway_status: dict[str, Any] = {}
        # what the EPP reads: the user's manifests, or a copy when a rollout runs on them
        self.manifests: tuple[Path, ...] = config.manifests
        self.rollouts: LocalRollouts | None = None

    @property
    def epp(self) -> ChildProcess | None:
        """The first EPP replica (the only one, unless `epp_replicas` asks for more)."""
        return self.replicas.first if self.replicas is not None else None

    @property
    def epp_addresses(self) -> str:
        """Where the EPP replicas serve ext_proc, as the control plane takes it."""
        c = self.config
        if self.replicas is None:
            return f"127.0.0.1:{c.epp_port}"
        return ",".join(f"{h}:{p}" for h, p in self.replicas.ext_proc)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.listener_port}"

    async def __aenter__(self) -> LocalStack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        c = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resources = load_paths(list(c.manifests))
        errors = [p for p in self.resources.problems if p.severity == "error"]
        if not self.resources.pools:
            raise RuntimeError(
                f"no valid InferencePool in {', '.join(map(str, c.manifests))}: "
                + "; ".join(map(str, errors))
            )
        if wants_rollouts(self.resources):
            self.manifests = (serve_copy(c.manifests, self.run_dir),)
        self.pods, manifests = plan_pods(
            self.resources, c.first_pod_ip, c.default_replicas, c.sim_options
        )
        pods_file = self.run_dir / "pods.yaml"
        pods_file.write_text(yaml.safe_dump_all(manifests, sort_keys=False))
        self.sim = SimCluster(self.pods)
        await self.sim.__aenter__()
        await self.start_epp(pods_file)
        if self.uses_control_plane:
            await self.start_controlplane(pods_file)
            await self.start_gateway_envoy()
        else:
            await self.start_envoy()
        if wants_rollouts(self.resources):
            hosts = self.replicas.hosts if self.replicas is not None else ["127.0.0.1"]
            urls = [f"http://{host}:{c.metrics_port}/metrics" for host in hosts]
            self.rollouts = LocalRollouts(self.manifests[0], urls, c.say, c.rollout_prometheus)
            self.rollouts.start()

    @property
    def uses_control_plane(self) -> bool:
        if self.config.control_plane is not None:
            return self.config.control_plane
        return any(doc.get("kind") == "Gateway" for doc in self.resources.other)

    async def start_controlplane(self, pods_file: Path) -> None:
        c = self.config
        argv = controlplane_argv(
            (*self.manifests, pods_file), c.xds_port, c.status_port, self.epp_addresses, c.host,
            c.listener_port, c.https_port, self.run_dir / "certs", c.epp_tls,
        )  # fmt: skip
        self.controlplane = ChildProcess("controlplane", argv, self.run_dir / "controlplane.log")
        await self.controlplane.start()
        ready = f"http://127.0.0.1:{c.status_port}/healthz"
        await wait_until(lambda: _http_ok(ready), "the control plane", 30, self.controlplane)

    async def start_gateway_envoy(self) -> None:
        c = self.config
        config_path = self.run_dir / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(render_xds_bootstrap(c.admin_port, c.xds_port)))
        self.envoy = ChildProcess("envoy", envoy_argv(config_path), self.run_dir / "envoy.log")
        await self.envoy.start()
        ready_url = f"http://{c.host}:{c.admin_port}/ready"
        await wait_until(lambda: _http_ok(ready_url), "Envoy to be ready", 30, self.envoy)
        await wait_until(
            lambda: gateways_programmed(c.status_port), "the Gateway to be programmed", 30,
            self.envoy,
        )  # fmt: skip
        self.gateway_status = await gateway_status(c.status_port)

    async def start_epp(self, pods_file: Path | None = None) -> None:
        """Start every EPP replica (again, after a test killed them) and wait until ready."""
        c = self.config
        pods_file = pods_file or self.run_dir / "pods.yaml"
        argv = [
            "-m",
            "epp",
            "serve",
            "--grpc-port",
            str(c.epp_port),
            "--health-port",
            str(c.health_port),
            "--metrics-port",
            str(c.metrics_port),
            "--peer-port",
            str(c.peer_port),
            *(["--secure-serving"] if c.epp_tls else []),
            # behind the control plane's routes, which strip client copies of the x-gateway-*
            # headers and set the trusted ones (priority policy, pool pin)
            *(["--trust-control-headers"] if self.uses_control_plane else []),
            *(["--drain-seconds", "2"] if c.epp_replicas > 1 else []),  # > Envoy's check period
            *c.epp_args,
        ]
        for path in (*self.manifests, pods_file):
            argv += ["--manifests", str(path)]
        self.replicas = EppReplicas(
            c.epp_replicas, argv, c.epp_port, c.metrics_port, self.run_dir, _http_ok,
            c.peer_port, share=c.share_peers,
        )  # fmt: skip
        await self.replicas.start()

    async def start_envoy(self) -> None:
        c = self.config
        epps = self.replicas.ext_proc if self.replicas is not None else ()
        ports = EnvoyPorts(c.listener_port, c.admin_port, c.epp_port, c.host, epps)
        config_path = self.run_dir / "envoy.yaml"
        # every endpoint the EPP may name (declared pods without a server stay unreachable)
        known = {(p.host, p.port) for p in self.pods}
        for pool in self.resources.pools:
            known.update(split_address(e.address) for e in endpoints_of(pool, self.resources.pods))
        fallback = sorted(known)
        pools = self.resources.pools
        fail_open = c.failure_mode_allow or all(p.failure_mode == "FailOpen" for p in pools)
        bootstrap = render_bootstrap(ports, fail_open, fallback, ext_proc_tls=c.epp_tls)
        if c.envoy_patch is not None:
            c.envoy_patch(bootstrap)
        config_path.write_text(yaml.safe_dump(bootstrap))
        self.envoy = ChildProcess("envoy", envoy_argv(config_path), self.run_dir / "envoy.log")
        await self.envoy.start()
        ready_url = f"http://{c.host}:{c.admin_port}/ready"
        await wait_until(lambda: _http_ok(ready_url), "Envoy to be ready", 30, self.envoy)

    async def stop(self) -> None:
        if self.rollouts is not None:
            await self.rollouts.stop()
        for child in (self.envoy, self.controlplane):
            if child is not None:
                await child.stop()
        if self.replicas is not None:
            await self.replicas.stop(grace=5.0)
        if self.sim is not None:
            with contextlib.suppress(Exception):
                await self.sim.__aexit__(None, None, None)
            self.sim = None

    @property
    def gateway_host(self) -> str:
        """The first hostname an HTTPRoute declares (the seed's api.ai-platform.example.com)."""
        for doc in self.resources.other:
            spec = doc.get("spec")
            if doc.get("kind") == "HTTPRoute" and isinstance(spec, dict):
                hostnames = spec.get("hostnames")
                if isinstance(hostnames, list) and hostnames:
                    return str(hostnames[0])
        return "localhost"

    def banner(self) -> str:
        first = (
            self.resources.models[0].model_name
            if self.resources.models
            else (self.pods[0].model if self.pods else "any")
        )
        lines = [f"Inference gateway ready at {self.url}  (logs and config: {self.run_dir})"]
        for pool in self.resources.pools:
            addrs = [f"{p.host}:{p.port}" for p in self.pods if p.name.startswith(pool.name + "-")]
            lines.append(f"  pool {pool.key}: {', '.join(addrs) or 'declared pods'}")
        lines += [
            f"  model {m.model_name} → pool {m.pool} (priority {m.priority})"
            for m in self.resources.models
        ]
        if self.replicas is not None and self.replicas.count > 1:
            lines.append(
                f"  EPP replicas: {self.epp_addresses} (sharing in-flight counts and prefix "
                f"picks over udp :{self.config.peer_port}; /debug/peers on :"
                f"{self.config.metrics_port} of each)"
            )
        lines += [f"  {p.severity}: {p}" for p in self.resources.problems]
        if self.rollouts is not None:
            lines.append(
                f"  rollouts run on {self.rollouts.served}: "
                f"epp rollout status MODEL --manifests {self.rollouts.served}"
            )
        lines += status_lines(self.gateway_status)
        data = f'{{"model": "{first}", "messages": [{{"role": "user", "content": "Hello"}}]}}'
        lines += [
            "Try:",
            f"  curl -si {self.url}/v1/chat/completions -H 'content-type: application/json' \\",
            f"    -H 'x-model-name: {first}' -d '{data}'",
        ]
        if self.uses_control_plane:
            c = self.config
            lines += [
                "or over HTTPS, as the seed's Gateway terminates TLS (certificate made for it):",
                f"  curl -si --cacert {self.run_dir}/certs/ca.crt "
                f"--resolve {self.gateway_host}:{c.https_port}:{c.host} \\",
                f"    https://{self.gateway_host}:{c.https_port}/v1/chat/completions "
                f"-H 'content-type: application/json' -H 'x-model-name: {first}' -d '{data}'",
            ]
        lines.append(
            "The x-inference-pod response header names the pod that served it. Ctrl-C stops."
        )
        return "\n".join(lines)


async def _http_ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as client:
        return (await client.get(url)).status_code == 200


async def run_stack(config: StackConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with LocalStack(config) as stack:
        print(stack.banner(), flush=True)
        await stop.wait()
        print("stopping…", flush=True)
