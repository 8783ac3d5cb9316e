"""The routers under test and the simulated cluster they share, as child processes.

`RouterSpec.parse("epp:gpu-aware")` names one router: ours (Envoy + EPP with a scheduling
profile), ours as N replicas behind one Envoy (`epp-replicas:gpu-aware:3` sharing what each
learns over `--peers`, `epp-replicas-alone:gpu-aware:3` sharing nothing), Envoy alone
(`envoy:ROUND_ROBIN` / `envoy:LEAST_REQUEST` on the pool cluster), `vllm-router:POLICY` or
`sglang-router:POLICY` (PyPI wheels, started from .venv/bin). `Children` owns every process:
each runs in its own process group (epp.local.processes) and is stopped on the way out, and
`kill_now()` is the synchronous last resort for an interrupted interpreter; `cpu_shares()` says
how much of one core each used since it started (from /proc), and `epp_requests()` how many
requests (ext_proc streams) each EPP picked for, from its /metrics, and `epp_pick_delays()`
how long its peers' picks took to reach each (from /debug/peers).
All addresses are on 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from epp.local.envoy import EnvoyPorts, envoy_argv, render_bootstrap
from epp.local.processes import ChildProcess, wait_until

REPLICAS = "epp-replicas"  # N EPPs sharing in-flight counts and prefix picks (epp.peers)
REPLICAS_ALONE = "epp-replicas-alone"  # N EPPs that know nothing of each other
KINDS = ("epp", REPLICAS, REPLICAS_ALONE, "envoy", "vllm-router", "sglang-router")
REQUESTS_METRIC = "inference_objective_request_total"
POOL_LABEL = "inference.networking.x-k8s.io/pool"
POOL = "bench-pool"
MODEL = "bench"
SERVED_MODEL = "meta-llama/Llama-2-7b-chat-hf"


@dataclass(frozen=True, slots=True)
class RouterSpec:
    kind: str
    option: str

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.option}"

    @classmethod
    def parse(cls, text: str) -> RouterSpec:
        kind, _, option = text.partition(":")
        if kind not in KINDS or not option:
            raise ValueError(f"bad router {text!r}: want KIND:OPTION with KIND in {KINDS}")
        if kind in (REPLICAS, REPLICAS_ALONE):
            profile, _, count = option.rpartition(":")
            if not profile or not count.isdigit() or int(count) < 1:
                raise ValueError(f"bad router {text!r}: want {kind}:PROFILE:N with N >= 1")
        return cls(kind, option)

    @property
    def is_epp(self) -> bool:
        return self.kind in ("epp", REPLICAS, REPLICAS_ALONE)

    @property
    def profile(self) -> str:
        """The EPP's scheduling profile (the option, less a replica count)."""
        return self.option.rpartition(":")[0] if self.replicas_option else self.option

    @property
    def replicas(self) -> int:
        """How many EPP processes serve behind Envoy."""
        return int(self.option.rpartition(":")[2]) if self.replicas_option else 1

    @property
    def replicas_option(self) -> bool:
        return self.kind in (REPLICAS, REPLICAS_ALONE)

    @property
    def shares(self) -> bool:
        """Whether its EPP replicas share what they learn with each other."""
        return self.kind == REPLICAS

    def unavailable(self) -> str | None:
        """Why this router cannot run here, or None."""
        if self.kind in ("vllm-router", "sglang-router") and not _binary(self.kind):
            return f"`{self.kind}` is not installed (pip install {self.kind})"
        if self.is_epp or self.kind == "envoy":
            try:
                envoy_argv(Path("/dev/null"))
            except RuntimeError as e:
                return str(e)
        return None


def run_labels(names: Sequence[str]) -> list[str]:
    """Each router's label in a run: its name, and `NAME#k` for its k-th repeat, so that one
    router listed twice runs twice as a control (what a rerun of the same code moves)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def repeat_of(label: str) -> str:
    """The router a label names (`epp:gpu-aware#2` -> `epp:gpu-aware`)."""
    return label.partition("#")[0]


@dataclass(frozen=True, slots=True)
class SimPod:
    host: str
    port: int
    name: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def sim_pods(first_ip: str, count: int) -> list[SimPod]:
    """`count` simulated pods on consecutive loopback IPs from `first_ip`, all on port 8000."""
    a, b, c, d = (int(x) for x in first_ip.split("."))
    return [SimPod(f"{a}.{b}.{c}.{d + i}", 8000, f"pod-{i}") for i in range(count)]


def _binary(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Children:
    """Every process the benchmark started, stopped together."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.children: list[ChildProcess] = []
        self.started: dict[int, float] = {}  # id(child) -> time.monotonic() at start
        self.epp_metrics: dict[str, int] = {}  # EPP child's name -> its metrics port

    async def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> ChildProcess:
        child = ChildProcess(name, argv, self.run_dir / f"{name}.log", env)
        self.children.append(child)
        self.started[id(child)] = time.monotonic()
        await child.start()
        return child

    def cpu_shares(self) -> list[tuple[str, float]]:
        """Per running child: CPU seconds used since it started, per wall second."""
        out = []
        for child in self.children:
            seconds = cpu_seconds(child.proc.pid) if child.proc is not None else None
            if seconds is not None:
                elapsed = time.monotonic() - self.started.get(id(child), time.monotonic())
                out.append((child.name, seconds / max(elapsed, 1e-9)))
        return out

    async def epp_requests(self) -> tuple[tuple[str, int], ...]:
        """Per running EPP: the requests it picked for (one ext_proc stream each)."""
        out = []
        for name, port in sorted(self.epp_metrics.items()):
            timeout = aiohttp.ClientTimeout(total=2.0)
            url = f"http://127.0.0.1:{port}/metrics"
            async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
                out.append((name, counter_total(await r.text(), REQUESTS_METRIC)))
        return tuple(out)

    async def epp_pick_delays(self) -> tuple[tuple[str, float, float, int], ...]:
        """Per running EPP that shares with peers: how long its peers' picks took to reach it
        (p50 and p99 ms, from its /debug/peers) and how many it learned."""
        out = []
        for name, port in sorted(self.epp_metrics.items()):
            timeout = aiohttp.ClientTimeout(total=2.0)
            url = f"http://127.0.0.1:{port}/debug/peers"
            async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
                doc = await r.json()
            delay = doc.get("pick_delay_ms") if doc.get("sharing") else None
            if isinstance(delay, dict):
                out.append((name, delay["p50"], delay["p99"], int(doc.get("picks_learned", 0))))
        return tuple(out)

    async def stop(self, child: ChildProcess) -> None:
        await child.stop(grace=3.0)
        if child in self.children:
            self.children.remove(child)
        self.started.pop(id(child), None)
        self.epp_metrics.pop(child.name, None)

    async def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            await self.stop(child)

    def kill_now(self) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)


def cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """User + system CPU seconds of process `pid` and its reaped children; None if unknown."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is fields[0]
    try:
        ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    except (ValueError, IndexError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def counter_total(text: str, name: str) -> int:
    """The sum over every label set of counter `name` in Prometheus text exposition `text`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, value = line.rpartition(" ")
        if metric.split("{", 1)[0].strip() == name:
            total += float(value)
    return round(total)


async def _ok(url: str) -> bool:
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
        return r.status == 200


def _probe(url: str) -> Callable[[], Awaitable[bool]]:
    return lambda: _ok(url)


async def start_sim(children: Children, pods: Sequence[SimPod], args: Sequence[str]) -> None:
    argv = [sys.executable, "-m", "epp", "--log-level", "WARNING", "sim"]
    argv += ["--pods", ",".join(p.address for p in pods), "--accept-any-model", *args]
    child = await children.start("sim", argv)
    for pod in pods:
        await wait_until(_probe(f"http://{pod.address}/health"), "sim pods", 30, child)


def _model(name: str, strategy: str, priority: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
        "kind": "InferenceModel",
        "metadata": {"name": name},
        "spec": {
            "poolRef": {"name": POOL},
            "routing": {"priority": priority, "loadBalancing": {"strategy": strategy}},
        },
    }


def epp_manifests(
    pods: Sequence[SimPod], strategy: str, priorities: bool = False, max_num_seqs: int = 0
) -> list[dict[str, Any]]:
    """One seed-shape pool owning the simulated pods and the model `bench` with `strategy`.

    With `priorities`, `bench` is critical (high) and `bench-sheddable` is sheddable (low).
    With `max_num_seqs`, the pods' container args say `--max-num-seqs`, as a deployment that
    sets it does (the EPP takes it as each server's batch size until it learns one)."""
    args = ["--model", SERVED_MODEL] + (
        ["--max-num-seqs", str(max_num_seqs)] if max_num_seqs else []
    )
    env = [{"name": "MODEL_NAME", "value": SERVED_MODEL}]
    container = {"name": "vllm", "image": "vllm/vllm-openai:latest", "env": env}
    pool = {
        "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": POOL},
        "spec": {
            "targetPortNumber": pods[0].port,
            "deployment": {
                "replicas": len(pods),
                "template": {"spec": {"containers": [container]}},
            },
        },
    }
    models = [_model(MODEL, strategy, "high" if priorities else "medium")]
    if priorities:
        models.append(_model(f"{MODEL}-sheddable", strategy, "low"))
    pod_docs = [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": p.name, "labels": {POOL_LABEL: POOL}},
            "spec": {"containers": [{"name": "vllm", "image": "epp-sim", "args": args}]},
            "status": {"podIP": p.host, "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for p in pods
    ]
    return [pool, *models, *pod_docs]


async def start_envoy(
    children: Children, pods: Sequence[SimPod], lb_policy: str | None, epps: Sequence[int] = ()
) -> str:
    """Envoy in front of `pods`: through the EPPs listening for gRPC on 127.0.0.1 at ports
    `epps` (its ext_proc cluster spreads streams over them round robin and health-checks
    them), or with none, balancing the pods itself with `lb_policy`. The base URL."""
    listener, admin = free_ports(2)
    fallback = [(p.host, p.port) for p in pods]
    upstreams = tuple(("127.0.0.1", port) for port in epps)
    config = render_bootstrap(EnvoyPorts(listener, admin, epps=upstreams), fallback=fallback)
    if not epps:
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        filters = hcm["typed_config"]["http_filters"]
        filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.ext_proc"]
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] == "pool_fallback":
                cluster["lb_policy"] = lb_policy
    path = children.run_dir / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    child = await children.start("envoy", envoy_argv(path))
    await wait_until(lambda: _ok(f"http://127.0.0.1:{admin}/ready"), "Envoy", 30, child)
    return f"http://127.0.0.1:{listener}"


async def start_router(
    children: Children,
    spec: RouterSpec,
    pods: Sequence[SimPod],
    priorities: bool = False,
    epp_args: Sequence[str] = (),
    max_num_seqs: int = 0,
    log_level: str = "WARNING",
) -> str:
    """Start `spec` in front of `pods`; the base URL clients use (`log_level`: the EPP's)."""
    if spec.kind == "envoy":
        return await start_envoy(children, pods, spec.option)
    if spec.is_epp:
        manifests = children.run_dir / "manifests.yaml"
        manifests.write_text(
            yaml.safe_dump_all(epp_manifests(pods, spec.profile, priorities, max_num_seqs))
        )
        grpcs = await start_epps(
            children, manifests, spec.replicas, spec.shares, epp_args, log_level
        )
        return await start_envoy(children, pods, None, grpcs)
    port, prom = free_ports(2)
    urls = [f"http://{p.address}" for p in pods]
    binary = _binary(spec.kind) or spec.kind
    if spec.kind == "vllm-router":
        argv = [binary, "--log-level", "warning"]
    else:
        argv = [binary, "launch", "--log-level", "warn"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--policy", spec.option]
    argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(prom)]
    argv += ["--worker-urls", *urls]
    child = await children.start(spec.kind, argv)
    url = f"http://127.0.0.1:{port}"
    await wait_until(lambda: _ok(f"{url}/health"), spec.kind, 60, child)
    return url


async def start_epps(
    children: Children,
    manifests: Path,
    count: int,
    share: bool,
    epp_args: Sequence[str] = (),
    log_level: str = "WARNING",
) -> list[int]:
    """`count` `epp serve` processes on `manifests` (`epp`, or `epp-1` .. `epp-N`), each on its
    own ports on 127.0.0.1; with `share`, each lists the others' UDP peer ports in `--peers`
    (epp.peers). Waits until every one is ready; their gRPC (ext_proc) ports."""
    ports = free_ports(4 * count)
    grpcs = ports[0::4]
    peer_ports = ports[3::4]
    for i in range(count):
        grpc, health, metrics, peer = ports[4 * i : 4 * i + 4]
        name = "epp" if count == 1 else f"epp-{i + 1}"
        argv = [sys.executable, "-m", "epp", "--log-level", log_level, "serve"]
        argv += ["--manifests", str(manifests), "--grpc-port", str(grpc)]
        argv += ["--health-port", str(health), "--metrics-port", str(metrics), *epp_args]
        others = [f"127.0.0.1:{p}" for p in peer_ports if p != peer]
        if share and others:
            argv += ["--peer-port", str(peer), "--peers", ",".join(others)]
            argv += ["--replica-name", name]
        child = await children.start(name, argv)
        children.epp_metrics[name] = metrics
        await wait_until(_probe(f"http://127.0.0.1:{metrics}/healthz"), name, 30, child)
    return grpcs


async def settle(seconds: float) -> None:
    """Let freshly started routers scrape and connect before load starts."""
    await asyncio.sleep(seconds)
