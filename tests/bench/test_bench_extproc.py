"""The cost of the EPP on the request path: Envoy direct-to-pod vs Envoy + EPP, side by side.

Zero-latency backends (a fixed chat completion, answered at once), 2 KB request bodies, an
open-loop load at a fixed rate, alternating the two paths in rounds so machine noise hits both.
Prints requests/s, p50/p99 latency of each path and what the EPP adds, then the EPP's CPU cost
per decision measured from /proc under a closed-loop load. Run: make bench (or pytest -m bench -s).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from epp.local.envoy import EnvoyPorts, envoy_argv, render_bootstrap
from epp.local.processes import ChildProcess, wait_until
from tests.ports import free_ports

pytestmark = pytest.mark.bench

BACKENDS = [("127.0.0.60", 8000), ("127.0.0.61", 8000)]
RATE = 200.0  # requests/s, open loop
ROUND_SECONDS = 5.0
ROUNDS = 2
MESSAGE = {"role": "assistant", "content": "ok"}
ANSWER = orjson.dumps({
    "id": "cmpl-1", "object": "chat.completion", "model": "m",
    "choices": [{"index": 0, "message": MESSAGE, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 500, "completion_tokens": 1, "total_tokens": 501},
})  # fmt: skip
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]})


async def start_backends() -> list[web.AppRunner]:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            text='vllm:num_requests_waiting{model_name="m"} 0\n'
            'vllm:num_requests_running{model_name="m"} 0\n'
            'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'
        )

    runners = []
    for host, port in BACKENDS:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", answer)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    return runners


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_loop(session: aiohttp.ClientSession, url: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        start = time.perf_counter()
        async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as r:
            await r.read()
            if r.status != 200:
                errors += 1
        latencies.append(time.perf_counter() - start)

    tasks = []
    start = time.perf_counter()
    n = int(RATE * seconds)
    for i in range(n):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    assert errors == 0
    return latencies


async def closed_loop(
    session: aiohttp.ClientSession, url: str, seconds: float, workers: int
) -> int:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with session.post(url, data=BODY) as r:
                await r.read()
                assert r.status == 200
            done += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


async def test_epp_overhead_side_by_side(tmp_path: Path) -> None:
    runners = await start_backends()
    l_epp, a_epp, l_direct, a_direct, grpc, health, metrics = free_ports(7)
    addresses = ",".join(f"{h}:{p}" for h, p in BACKENDS)
    epp = ChildProcess("epp", [sys.executable, "-m", "epp", "--log-level", "WARNING", "serve",
                               "--endpoints", addresses, "--grpc-port", str(grpc),
                               "--health-port", str(health), "--metrics-port", str(metrics)],
                       tmp_path / "epp.log")  # fmt: skip
    with_epp = render_bootstrap(EnvoyPorts(l_epp, a_epp, grpc), fallback=BACKENDS)
    direct = render_bootstrap(EnvoyPorts(l_direct, a_direct, grpc), fallback=BACKENDS)
    hcm = direct["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = hcm["typed_config"]["http_filters"]
    filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.ext_proc"]
    children = [epp]
    for name, config in (("envoy-epp", with_epp), ("envoy-direct", direct)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        children.append(ChildProcess(name, envoy_argv(path), tmp_path / f"{name}.log"))
    try:
        for child in children:
            await child.start()
        async with aiohttp.ClientSession() as session:

            async def ok(url: str) -> bool:
                async with session.get(url) as r:
                    return r.status == 200

            await wait_until(lambda: ok(f"http://127.0.0.1:{metrics}/healthz"), "epp", 30, epp)
            for port in (a_epp, a_direct):
                await wait_until(lambda p=port: ok(f"http://127.0.0.1:{p}/ready"), "envoy", 30)
            urls = {
                "envoy+epp": f"http://127.0.0.1:{l_epp}/v1/chat/completions",
                "envoy direct": f"http://127.0.0.1:{l_direct}/v1/chat/completions",
            }
            for url in urls.values():  # warm up connections and code paths
                await open_loop(session, url, 1.0)
            lat: dict[str, list[float]] = {name: [] for name in urls}
            for _ in range(ROUNDS):
                for name, url in urls.items():
                    lat[name] += await open_loop(session, url, ROUND_SECONDS)
            print(
                f"\nopen loop at {RATE:.0f} req/s, 2 KB bodies, "
                f"{ROUNDS} rounds of {ROUND_SECONDS:.0f}s per path"
            )
            for name, values in lat.items():
                print(f"  {name:13s} p50 {pct(values, 50):6.2f} ms   p99 {pct(values, 99):6.2f} ms")
            added50 = pct(lat["envoy+epp"], 50) - pct(lat["envoy direct"], 50)
            added99 = pct(lat["envoy+epp"], 99) - pct(lat["envoy direct"], 99)
            print(f"  added by the EPP: p50 {added50:+.2f} ms, p99 {added99:+.2f} ms")
            assert epp.proc is not None
            cpu0 = cpu_seconds(epp.proc.pid)
            t0 = time.perf_counter()
            done = await closed_loop(session, urls["envoy+epp"], 5.0, 32)
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds(epp.proc.pid) - cpu0
            direct_done = await closed_loop(session, urls["envoy direct"], 5.0, 32)
            print(f"closed loop, 32 connections, 5 s: envoy+epp {done / elapsed:.0f} req/s, "
                  f"envoy direct {direct_done / 5.0:.0f} req/s")  # fmt: skip
            print(f"EPP CPU per decision {cpu / done * 1e6:.0f} µs → {done / cpu:.0f} decisions/s "
                  f"per core (EPP used {cpu / elapsed:.0%} of a core)")  # fmt: skip
    finally:
        for child in reversed(children):
            await child.stop()
        for runner in runners:
            await runner.cleanup()
