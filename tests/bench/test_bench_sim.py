"""CPU cost of the simulator: 8 pods in one process under 40 streaming requests/s.

The simulator runs as `python -m epp.sim.main` in a child process; this process is the load
generator (open loop, fixed rate, round-robin over the pods, ~200 output tokens each). The
child's user+system CPU time over the measured window, divided by the wall time, is the share
of one core it needs. Run: `.venv/bin/pytest -m bench -s tests/bench/test_bench_sim.py`.
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.bench

PODS = 8
RATE = 40.0  # requests per second, all pods together
SECONDS = 15.0
WARMUP = 3.0
TOKENS = 200
TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[2]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def one(http: aiohttp.ClientSession, addr: str, i: int) -> tuple[float, int]:
    body = {
        "model": "meta-llama/Llama-2-7b-chat-hf",
        "messages": [{"role": "user", "content": f"request {i} " + "lorem ipsum " * 60}],
        "max_tokens": TOKENS,
        "stream": True,
    }
    t0 = time.perf_counter()
    ttft = 0.0
    events = 0
    async with http.post(f"http://{addr}/v1/chat/completions", json=body) as r:
        assert r.status == 200
        async for chunk in r.content.iter_any():
            if not ttft:
                ttft = time.perf_counter() - t0
            events += chunk.count(b'"content":"')
    return ttft, events - 1  # the first chunk carries the role with empty content


async def load(addresses: list[str], pid: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        tasks = []
        start = loop.time()
        n = int(RATE * SECONDS)
        cpu0 = wall0 = 0.0
        for i in range(n):
            at = start + i / RATE
            await asyncio.sleep(max(0.0, at - loop.time()))
            if cpu0 == 0.0 and loop.time() - start >= WARMUP:
                cpu0, wall0 = cpu_seconds(pid), loop.time()
            tasks.append(asyncio.ensure_future(one(http, addresses[i % len(addresses)], i)))
        cpu1, wall1 = cpu_seconds(pid), loop.time()
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    ttfts = sorted(r[0] for r in results)
    return {
        "requests": float(len(results)),
        "complete": float(sum(1 for r in results if r[1] == TOKENS)),
        "cpu_share": (cpu1 - cpu0) / (wall1 - wall0),
        "ttft_p50": statistics.median(ttfts),
        "ttft_p99": ttfts[int(len(ttfts) * 0.99) - 1],
    }


def run_bench(extra: list[str]) -> dict[str, float]:
    cmd = [sys.executable, "-m", "epp.sim.main", "--replicas", str(PODS), "--port", "0", *extra]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT) as proc:
        try:
            assert proc.stdout is not None
            addresses = []
            for _ in range(PODS):
                line = proc.stdout.readline()
                m = re.search(r"http://(\S+)", line)
                assert m, line
                addresses.append(m.group(1))
            return asyncio.run(load(addresses, proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def report(stats: dict[str, float], extra: list[str]) -> None:
    print(
        f"\nsim bench {' '.join(extra)}: {PODS} pods, {RATE:.0f} streaming req/s x {TOKENS} tokens "
        f"for {SECONDS:.0f}s: simulator CPU = {stats['cpu_share'] * 100:.1f}% of one core; "
        f"TTFT p50 {stats['ttft_p50'] * 1000:.1f} ms, p99 {stats['ttft_p99'] * 1000:.1f} ms; "
        f"{stats['complete']:.0f}/{stats['requests']:.0f} complete"
    )


def test_cpu_share_of_8_pods_at_40_streaming_rps() -> None:
    stats = run_bench([])
    report(stats, [])
    assert stats["complete"] == stats["requests"]


if __name__ == "__main__":
    report(run_bench(sys.argv[1:]), sys.argv[1:])  # e.g. --flush-interval 0.02
