"""Two EPP builds side by side, request by request: the added latency of each, paired in time.

The extproc latency bench (`test_bench_extproc.py`) alternates 5-second rounds between Envoy +
EPP and Envoy least-request; on this shared VM the machine's speed drifts between rounds, and
the same code reads +0.91 to +1.39 ms added at p50. Here two gateways (each an Envoy + EPP
over the same zero-latency backends, one also with a least-request Envoy) take turns request by
request in one open loop: least-request, EPP A, EPP B, least-request, ... so that A and B see
the same moments of the machine. B runs the EPP from another source tree (`--b-tree`, e.g. a
`git worktree` of the base commit); with no `--b-tree` both run this tree (an A/A run shows
the noise of the difference).

Run: flock /tmp/bench.lock .venv/bin/python -m tests.bench.paired_latency [--b-tree PATH]
     [--seconds 20] [--rate 300]   (rate: requests/s over all three paths together)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.bench.gateways import EPP, LEAST_REQUEST, GatewayPair, paced
from tests.bench.test_bench_extproc import BACKENDS, BODY, start_backends

WARM_UP_SECONDS = 2.0


def epp_command(tree: Path | None) -> list[str]:
    """`python -m epp`, from `tree` when given (its sources first on the path)."""
    prefix = [] if tree is None else ["env", f"PYTHONPATH={tree.resolve()}"]
    return [*prefix, sys.executable, "-m", "epp"]


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


async def run(seconds: float, rate: float, b_tree: Path | None) -> dict[str, list[float]]:
    runners = await start_backends()
    args = ["--grpc-server", "lean"]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            a_dir, b_dir = Path(tmp, "a"), Path(tmp, "b")
            a_dir.mkdir()
            b_dir.mkdir()
            async with (
                GatewayPair(a_dir, BACKENDS, epp_args=args) as a,
                GatewayPair(b_dir, BACKENDS, epp_args=args, epp_command=epp_command(b_tree)) as b,
                aiohttp.ClientSession() as session,
            ):
                paths = [("LR", a.urls[LEAST_REQUEST]), ("A", a.urls[EPP]), ("B", b.urls[EPP])]
                latencies: dict[str, list[float]] = {name: [] for name, _ in paths}

                async def one(name: str, url: str, keep: bool) -> None:
                    start = time.perf_counter()
                    async with session.post(
                        f"{url}/v1/chat/completions",
                        data=BODY,
                        headers={"content-type": "application/json"},
                    ) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(f"path {name} answered {r.status}")
                    if keep:
                        latencies[name].append(time.perf_counter() - start)

                for span, keep in ((WARM_UP_SECONDS, False), (seconds, True)):
                    tasks = [
                        asyncio.create_task(one(*paths[i % len(paths)], keep))
                        async for i in paced(rate, int(rate * span))
                    ]
                    await asyncio.gather(*tasks)
                return latencies
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--b-tree", type=Path, help="source tree of EPP B (default: this one)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=300.0)
    opts = parser.parse_args()
    latencies = asyncio.run(run(opts.seconds, opts.rate, opts.b_tree))
    print(f"{opts.rate:.0f} req/s over three paths, {opts.seconds:.0f} s, 2 KB bodies")
    for name, values in latencies.items():
        print(
            f"  {name:3s} n={len(values)}  p50 {pct(values, 50):6.3f}  p90 {pct(values, 90):6.3f}"
            f"  p99 {pct(values, 99):6.3f} ms"
        )
    base = latencies["LR"]
    for name in ("A", "B"):
        p50, p99 = (pct(latencies[name], q) - pct(base, q) for q in (50, 99))
        print(f"  added by EPP {name}: p50 {p50:+.3f} ms, p99 {p99:+.3f} ms")
    diff = pct(latencies["B"], 50) - pct(latencies["A"], 50)
    print(f"  B - A at p50: {diff:+.3f} ms")


if __name__ == "__main__":
    main()
