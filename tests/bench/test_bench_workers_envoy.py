"""`epp serve --workers 2` vs one worker behind a real Envoy, with a load source that costs little.

h2load (nghttp2-client, C) sends non-streamed chat completions over HTTP/1.1 to an Envoy with our
ext_proc filter (`gateway/envoy.yaml`, 2 worker threads; at most 16 ext_proc streams per
connection to the EPP, so that Envoy opens several connections and the kernel spreads them over
the workers). The pods are one more Envoy whose listeners answer at once (`direct_response`: a
chat completion, and a vLLM `/metrics` page for the EPP's scraper). Printed for 1 and 2 workers:
decisions/s and the CPU of every process (each worker, the gateway Envoy, the pods' Envoy,
h2load), as a share of a core. Everything shares this machine's cores.
Run: flock /tmp/bench.lock .venv/bin/pytest -m bench -s tests/bench/test_bench_workers_envoy.py
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from epp.local.envoy import EnvoyPorts, envoy_argv, render_bootstrap
from epp.local.processes import ChildProcess, wait_until
from tests.bench.gateways import cpu_seconds, pid_of, run_h2load
from tests.bench.test_bench_workers import PODS, SECONDS, decisions, serving
from tests.ports import free_ports

pytestmark = pytest.mark.bench

CLIENTS = 64  # h2load's HTTP/1.1 connections, each one request at a time
STREAMS_PER_EPP_CONNECTION = 16
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ANSWER = orjson.dumps({
    "id": "cmpl-1", "object": "chat.completion", "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 60, "completion_tokens": 1, "total_tokens": 61},
}).decode()  # fmt: skip
METRICS = (
    'vllm:num_requests_waiting{model_name="m"} 0\n'
    'vllm:num_requests_running{model_name="m"} 0\n'
    'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
)
BODY = orjson.dumps(
    {"model": "m", "messages": [{"role": "user", "content": "question " * 40}], "max_tokens": 16}
)


def answer(body: str, content_type: str) -> dict[str, Any]:
    return {
        "direct_response": {"status": 200, "body": {"inline_string": body}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": content_type}}],
    }


def pods_bootstrap(admin: int) -> dict[str, Any]:
    """An Envoy that is every pod: each address answers at once."""
    routes = [
        {"match": {"prefix": "/metrics"}, **answer(METRICS, "text/plain")},
        {"match": {"prefix": "/"}, **answer(ANSWER, "application/json")},
    ]
    listeners = []
    for i, pod in enumerate(PODS):
        host, port = pod.split(":")
        hcm = {"@type": HCM + "HttpConnectionManager", "stat_prefix": f"pod{i}",
               "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                   "routes": routes}]},
               "http_filters": [{"name": "envoy.filters.http.router",
                                 "typed_config": {"@type": ROUTER}}]}  # fmt: skip
        listeners.append({
            "name": f"pod{i}",
            "address": {"socket_address": {"address": host, "port_value": int(port)}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
        })  # fmt: skip
    admin_address = {"socket_address": {"address": "127.0.0.1", "port_value": admin}}
    return {"admin": {"address": admin_address}, "static_resources": {"listeners": listeners}}


def gateway_bootstrap(listener: int, admin: int, ext_proc: int) -> dict[str, Any]:
    pods = [(p.split(":")[0], int(p.split(":")[1])) for p in PODS]
    config = render_bootstrap(EnvoyPorts(listener, admin, ext_proc), fallback=pods)
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "ext_proc":
            options = cluster["typed_extension_protocol_options"]
            http2 = next(iter(options.values()))["explicit_http_config"]["http2_protocol_options"]
            http2["max_concurrent_streams"] = STREAMS_PER_EPP_CONNECTION
    return config


def envoy(tmp: Path, name: str, config: dict[str, Any], threads: int) -> ChildProcess:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = envoy_argv(path)
    argv[argv.index("--concurrency") + 1] = str(threads)
    return ChildProcess(name, argv, tmp / f"{name}.log")


def h2load(url: str, body: Path, seconds: float) -> tuple[int, float]:
    """h2load over HTTP/1.1 for `seconds`: requests answered 200, and h2load's CPU seconds."""
    argv = ["--h1", "-D", str(round(seconds)), "-c", str(CLIENTS), "-d", str(body),
            "-H", "content-type: application/json", url]  # fmt: skip
    pattern = r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx"
    (ok, _, client_errors, server_errors), cpu = run_h2load(argv, pattern)
    assert client_errors == server_errors == 0, (client_errors, server_errors)
    return ok, cpu


async def ready(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as http:
        return (await http.get(url)).status_code == 200


@pytest.mark.parametrize("grpc_server", ["grpcio", "lean"])
async def test_bench_workers_behind_envoy(tmp_path: Path, grpc_server: str) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(BODY)
    pods_admin, gw_listener, gw_admin = free_ports(3)
    pods = envoy(tmp_path, "pods", pods_bootstrap(pods_admin), threads=1)
    await pods.start()
    rows: dict[int, tuple[float, dict[str, float]]] = {}
    try:
        await wait_until(lambda: ready(f"http://{PODS[-1]}/metrics"), "the pods' Envoy", 30, pods)
        for workers in (1, 2):
            async with serving(tmp_path, workers, ["--grpc-server", grpc_server]) as epp:
                port, pids, metrics = epp
                config = gateway_bootstrap(gw_listener, gw_admin, port)
                gateway = envoy(tmp_path, f"gateway-{workers}", config, threads=2)
                await gateway.start()
                try:
                    admin = f"http://127.0.0.1:{gw_admin}/ready"
                    await wait_until(lambda u=admin: ready(u), "the gateway", 30, gateway)  # type: ignore[misc]
                    url = f"http://127.0.0.1:{gw_listener}/v1/chat/completions"
                    await asyncio.to_thread(h2load, url, body, 1.0)  # warm up
                    procs = {f"worker {i}": p for i, p in enumerate(pids)}
                    procs |= {"gateway envoy": pid_of(gateway), "pods' envoy": pid_of(pods)}
                    cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
                    decided0, t0 = await decisions(metrics), time.perf_counter()
                    ok, load_cpu = await asyncio.to_thread(h2load, url, body, SECONDS)
                    elapsed = time.perf_counter() - t0
                    decided = await decisions(metrics) - decided0
                    assert ok <= decided <= ok + CLIENTS, f"h2load: {ok}, EPP: {decided}"
                    shares = {n: (cpu_seconds(p) - cpu0[n]) / elapsed for n, p in procs.items()}
                    shares["h2load"] = load_cpu / elapsed
                    rows[workers] = (ok / elapsed, shares)
                finally:
                    await gateway.stop()
    finally:
        await pods.stop()
    load = f"h2load --h1 with {CLIENTS} connections, {SECONDS:.0f} s"
    print(f"\n--grpc-server {grpc_server}: non-streamed chat completions through Envoy ({load}); "
          "CPU as a share of a core")  # fmt: skip
    for workers, (rate, shares) in rows.items():
        cpu = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
        print(f"  --workers {workers}: {rate:6.0f} decisions/s  ({cpu})")
    print(f"  2 workers / 1 worker: {rows[2][0] / rows[1][0]:.2f}x")
