"""The EPP's cost per request: Envoy + EPP against Envoy least-request, side by side in one run.

`test_cost_per_request`: one simulated cluster (`epp sim`: 4 H100 pods at full speed for chat,
2 fast pods with room for 1 MiB prompts), one EPP and two Envoys over the same pods. Each
workload runs in alternating rounds on both paths at the same open-loop rate; the CPU time of
every process on the path (from /proc) over the round, per 1,000 requests, is printed with the
ratio to least-request. The EPP's CPU includes its scraping in the round; "request path" takes
off its idle rate (scrapes only), measured while the other path runs. Workloads: streamed chat
(~250-token prompt, 128 output tokens) with and without a model-name rewrite, non-streamed, and
1 MiB prompts (1 output token). It also prints how often the EPP fetched each pod's /metrics
(the simulator counts its pages) in the rounds through it and in least-request's.
`test_added_latency_and_decisions`: zero-latency backends, 2 KB bodies; latency at 200 req/s on
both paths (the EPP's added p50/p99), then EPP decisions per CPU-second under a closed loop.
Both run once per gRPC server of the EPP (`--grpc-server grpcio` and `lean`).
Run: flock /tmp/bench.lock .venv/bin/pytest -m bench -s tests/bench/test_bench_extproc.py
"""

from __future__ import annotations

import asyncio
import io
import itertools
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from epp.local.processes import ChildProcess, wait_until
from tests.bench.gateways import EPP, LEAST_REQUEST, GatewayPair, Send, open_loop, seed_manifests

pytestmark = pytest.mark.bench

SERVED = "meta-llama/Llama-2-7b-chat-hf"
CLIENT_MODEL = "bench"  # an InferenceModel the EPP rewrites to SERVED (and back)
CHAT_PODS = [(f"127.0.91.{i}", 8000) for i in range(2, 6)]
BIG_PODS = [(f"127.0.91.{i}", 8000) for i in range(6, 8)]
FILLER = "the quick brown fox jumps over the lazy dog and keeps running through the field "
ROUNDS = 2
_ids = itertools.count()


def chat(model: str, stream: bool, prompt_chars: int, max_tokens: int) -> Send:
    async def send(session: aiohttp.ClientSession, url: str) -> bool:
        prompt = f"request {next(_ids)}: " + FILLER * (prompt_chars // len(FILLER) + 1)
        body = {"model": model, "messages": [{"role": "user", "content": prompt[:prompt_chars]}],
                "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}  # fmt: skip
        data = io.BytesIO(orjson.dumps(body))  # raw bytes over 1 MiB warn (filterwarnings=error)
        async with session.post(f"{url}/v1/chat/completions", data=data,
                                headers={"content-type": "application/json"}) as r:  # fmt: skip
            answer = await r.read()
            return r.status == 200 and (not stream or answer.rstrip().endswith(b"[DONE]"))

    return send


# name, pods, request, rate (req/s), seconds per round
WORKLOADS: list[tuple[str, list[tuple[str, int]], Send, float, float]] = [
    ("streamed, 128 tokens", CHAT_PODS, chat(SERVED, True, 1000, 128), 10.0, 12.0),
    ("streamed, model rewritten", CHAT_PODS, chat(CLIENT_MODEL, True, 1000, 128), 10.0, 12.0),
    ("non-streamed, 128 tokens", CHAT_PODS, chat(SERVED, False, 1000, 128), 10.0, 12.0),
    ("1 MiB prompts, 1 token", BIG_PODS, chat(SERVED, False, 1 << 20, 1), 2.0, 10.0),
]


async def start_sim(tmp_path: Path) -> ChildProcess:
    pods = CHAT_PODS + BIG_PODS
    argv = [sys.executable, "-m", "epp", "--log-level", "WARNING", "sim", "--accept-any-model",
            "--pods", ",".join(f"{h}:{p}" for h, p in pods)]  # fmt: skip
    for host, _ in BIG_PODS:
        for option in ("speed=64", "max_model_len=400000", "num_gpu_blocks=60000",
                       "max_num_batched_tokens=400000"):  # fmt: skip
            argv += ["--pod-option", f"{host}:{option}"]
    sim = ChildProcess("sim", argv, tmp_path / "sim.log")
    await sim.start()
    async with aiohttp.ClientSession() as session:

        async def ok(url: str) -> bool:
            async with session.get(url) as r:
                return r.status == 200

        for host, port in pods:
            await wait_until(lambda u=f"http://{host}:{port}/health": ok(u), "sim", 30, sim)
    return sim


async def metrics_pages(session: aiohttp.ClientSession, pods: list[tuple[str, int]]) -> int:
    """The /metrics pages the simulated pods have served (the EPP is the only scraper)."""
    total = 0
    for host, port in pods:
        async with session.get(f"http://{host}:{port}/sim/config") as r:
            total += int((await r.json())["metrics_pages"])
    return total


async def run_workload(
    pair: GatewayPair, send: Send, rate: float, seconds: float
) -> dict[str, dict[str, float]]:
    """CPU seconds per 1,000 requests on each path; the EPP's idle rate from the LR rounds; the
    EPP's fetches of each pod's page per second during each path's rounds."""
    cpu: dict[str, dict[str, float]] = {EPP: {}, LEAST_REQUEST: {}}
    done = dict.fromkeys(cpu, 0)
    errors = dict.fromkeys(cpu, 0)
    walls = dict.fromkeys(cpu, 0.0)
    pages = dict.fromkeys(cpu, 0)
    idle_cpu = idle_wall = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for path in cpu:  # warm up connections and code paths
            await open_loop(session, pair.urls[path], send, rate, 1.0)
        for _ in range(ROUNDS):
            for path, url in pair.urls.items():
                pages0 = await metrics_pages(session, pair.pods)
                before, epp0, t0 = pair.cpu(path), pair.epp_cpu(), time.monotonic()
                latencies, failed = await open_loop(session, url, send, rate, seconds)
                after, epp1, wall = pair.cpu(path), pair.epp_cpu(), time.monotonic() - t0
                pages[path] += await metrics_pages(session, pair.pods) - pages0
                for proc, value in after.items():
                    cpu[path][proc] = cpu[path].get(proc, 0.0) + value - before[proc]
                done[path] += len(latencies)
                errors[path] += failed
                walls[path] += wall
                if path == LEAST_REQUEST:
                    idle_cpu, idle_wall = idle_cpu + epp1 - epp0, idle_wall + wall
    idle_rate = idle_cpu / idle_wall
    out: dict[str, dict[str, float]] = {}
    for path, procs in cpu.items():
        n = max(1, done[path])
        row = {proc: seconds_ / n * 1000 for proc, seconds_ in procs.items()}
        row["total"] = sum(row.values())
        if "epp" in procs:  # the EPP's CPU beyond its idle scraping, per request
            row["epp path"] = (procs["epp"] - idle_rate * walls[path]) / n * 1000
        row["requests"], row["errors"] = done[path], errors[path]
        row["fetches"] = pages[path] / walls[path] / len(pair.pods)  # per pod and second
        out[path] = row
    out["idle"] = {"epp cpu share": idle_rate}
    return out


def report(name: str, result: dict[str, dict[str, float]]) -> None:
    ours, least = result[EPP], result[LEAST_REQUEST]
    print(f"\n{name}: {int(ours['requests'])} + {int(least['requests'])} requests "
          f"({int(ours['errors'])} + {int(least['errors'])} errors); "
          f"CPU seconds per 1,000 requests")  # fmt: skip
    print(f"  {LEAST_REQUEST:20s} envoy {least['envoy']:7.2f}"
          f"                                   total {least['total']:7.2f}")  # fmt: skip
    print(f"  {EPP:20s} envoy {ours['envoy']:7.2f}  epp {ours['epp']:7.2f} "
          f"(request path {ours['epp path']:6.2f})  total {ours['total']:7.2f}  "
          f"= {ours['total'] / least['total']:.2f}x least-request")  # fmt: skip
    print(f"  EPP idle (scraping): {result['idle']['epp cpu share']:.1%} of a core; fetches "
          f"per pod and second: {ours['fetches']:.1f} in its rounds, "
          f"{least['fetches']:.1f} in least-request's")  # fmt: skip


SERVERS = ("grpcio", "lean")  # epp serve --grpc-server


@pytest.mark.timeout(900)
@pytest.mark.parametrize("grpc_server", SERVERS)
async def test_cost_per_request(tmp_path: Path, grpc_server: str) -> None:
    sim = await start_sim(tmp_path)
    try:
        for pods in (CHAT_PODS, BIG_PODS):
            run_dir = tmp_path / pods[0][0]
            run_dir.mkdir()
            manifests = seed_manifests(pods, CLIENT_MODEL, SERVED)
            epp_args = ["--grpc-server", grpc_server]
            async with GatewayPair(run_dir, pods, manifests, epp_args=epp_args) as pair:
                await asyncio.sleep(1.0)  # first scrapes
                for name, workload_pods, send, rate, seconds in WORKLOADS:
                    if workload_pods is pods:
                        report(name, await run_workload(pair, send, rate, seconds))
    finally:
        await sim.stop()


# ---- added latency and decisions per CPU-second, zero-latency backends ---------------------------
BACKENDS = [("127.0.0.60", 8000), ("127.0.0.61", 8000)]
RATE = 200.0  # requests/s, open loop
ROUND_SECONDS = 5.0
ANSWER = orjson.dumps({
    "id": "cmpl-1", "object": "chat.completion", "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 500, "completion_tokens": 1, "total_tokens": 501},
})  # fmt: skip
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]})


async def start_backends() -> list[web.AppRunner]:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text='vllm:num_requests_waiting{model_name="m"} 0\n'
                            'vllm:num_requests_running{model_name="m"} 0\n'
                            'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n')  # fmt: skip

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


async def post_small(session: aiohttp.ClientSession, url: str) -> bool:
    async with session.post(f"{url}/v1/chat/completions", data=BODY,
                            headers={"content-type": "application/json"}) as r:  # fmt: skip
        await r.read()
        return r.status == 200


async def closed_loop(
    session: aiohttp.ClientSession, url: str, seconds: float, workers: int
) -> int:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            assert await post_small(session, url)
            done += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


@pytest.mark.parametrize("grpc_server", SERVERS)
async def test_added_latency_and_decisions(tmp_path: Path, grpc_server: str) -> None:
    runners = await start_backends()
    epp_args = ["--grpc-server", grpc_server]
    try:
        async with (
            GatewayPair(tmp_path, BACKENDS, epp_args=epp_args) as pair,
            aiohttp.ClientSession() as session,
        ):
            for url in pair.urls.values():  # warm up connections and code paths
                await open_loop(session, url, post_small, RATE, 1.0)
            lat: dict[str, list[float]] = {name: [] for name in pair.urls}
            for _ in range(ROUNDS):
                for name, url in pair.urls.items():
                    values, errors = await open_loop(session, url, post_small, RATE, ROUND_SECONDS)
                    assert errors == 0
                    lat[name] += values
            print(f"\nopen loop at {RATE:.0f} req/s, 2 KB bodies, {ROUNDS} rounds of "
                  f"{ROUND_SECONDS:.0f} s per path")  # fmt: skip
            for name, values in lat.items():
                print(f"  {name:20s} p50 {pct(values, 50):6.2f} ms   p99 {pct(values, 99):6.2f} ms")
            p50, p99 = (pct(lat[EPP], q) - pct(lat[LEAST_REQUEST], q) for q in (50, 99))
            print(f"  added by the EPP: p50 {p50:+.2f} ms, p99 {p99:+.2f} ms")
            cpu0, t0 = pair.epp_cpu(), time.perf_counter()
            done = await closed_loop(session, pair.urls[EPP], 5.0, 32)
            elapsed, cpu = time.perf_counter() - t0, pair.epp_cpu() - cpu0
            print(f"closed loop, 32 connections, 5 s: envoy+epp {done / elapsed:.0f} req/s; "
                  f"EPP CPU per decision {cpu / done * 1e6:.0f} µs → {done / cpu:.0f} decisions "
                  f"per CPU-second (EPP used {cpu / elapsed:.0%} of a core)")  # fmt: skip
    finally:
        for runner in runners:
            await runner.cleanup()
