"""`python -m loadtest.bench.kvcells`: precise against approximate prefix routing (issue 18).

Every (cell, router) point gets a fresh simulator whose pods publish vLLM's KV events over ZMQ
and tokenize with the tiny tokenizer the EPP uses, then the router, then open-loop Poisson
arrivals of the shared-prefix workload for a fixed time. Cells:

- `a` evictions: shared prefixes whose working set is about twice the pods' KV memory;
- `b` restart: `a`, with one pod's engine restarted halfway (`POST /sim/config {"restart":
  true}`: its requests fail, its cache empties, its event sequence starts again);
- `c` replicas: `a`, through two EPP replicas behind one Envoy (ext_proc streams spread round
  robin), each seeing half the picks;
- `d` plain: the shared-prefix workload, prefixes that fit;
- `e` foreign: `d`, plus clients that reach the pods directly (not through the router) with the
  same system prompts, at `--foreign-share` of the router's rate; only routed requests count.

Routers: `approximate` (profile prefix-cache-aware: prefix-cache-scorer 3, queue 2, KV use 2),
`gpu-aware` (our default profile, as `epp serve` runs it with no scheduler config),
`precise` (the same profile with precise-prefix-cache-scorer in place of prefix-cache-scorer;
`precise-no-gate`, `precise-load-gate`, `precise-gate-500ms`, `precise-home`,
`precise-home-spread`, `precise-no-spread` and `precise-no-memory`: without its token-aware
gate, with the load gate, with a 500 ms budget instead of 2 s, with cold-prompt homes
instead of the spread (the default until 2026-12-06), with both, with neither, without the
memory of its own picks (the events alone)),
`approximate-peers` and `precise-peers` (in `c` only: the replicas share their picks over
`--peers`),
`envoy:LEAST_REQUEST`, and the peers' cache-aware policies (not in `c`: one process each).
The rate is `--fraction` of each shape's capacity (a closed loop through Envoy least-request).
`kvcells_report` writes the run folder's `kv-cells.md|json`. Children are stopped on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import yaml

from loadtest.bench import client, kvcells_report, stats
from loadtest.bench.kvcells_report import APPROXIMATE
from loadtest.bench.routers import (
    REPLICAS,
    REPLICAS_ALONE,
    Children,
    RouterSpec,
    settle,
    sim_pods,
    start_router,
    start_sim,
)
from loadtest.record import Record, command_text, run_folder
from loadtest.workloads import ChatRequest, poisson_arrivals, system_prompts, text

TOKENIZER = "epp/assets/tiny-tokenizer"
HASH_SEED = "0"
CELLS = ("a", "b", "c", "d", "e")
ROUTERS = ("approximate", "precise", "envoy:LEAST_REQUEST", "vllm-router:cache_aware",
           "sglang-router:cache_aware")  # fmt: skip
# the precise router, and variants without its token-aware gate, its homes for cold prompts or
# its memory of its own picks
PRECISE: dict[str, dict[str, object]] = {
    "precise": {},
    "precise-no-gate": {"ttftBudget": 0},
    "precise-load-gate": {"loadGate": True},
    "precise-gate-500ms": {"ttftBudget": "500ms"},
    "precise-home": {"coldPromptHome": 0.5, "coldPromptSpread": 0},
    "precise-home-spread": {"coldPromptHome": 0.5},
    "precise-no-spread": {"coldPromptSpread": 0},
    "precise-no-memory": {"rememberPicks": False},
}
# a router whose two replicas share their picks and in-flight counts (epp.peers), and the
# router it is otherwise; only in `c`, elsewhere it is that router
SHARING = {"approximate-peers": "approximate", "precise-peers": "precise"}
# our default profile, as `epp serve` runs it with no scheduler config
GPU_AWARE = "gpu-aware"
EPP_ROUTERS = ("approximate", GPU_AWARE, *SHARING, *PRECISE)


@dataclass(frozen=True, slots=True)
class Shape:
    groups: int
    system_chars: int
    question_chars: int = 400
    output: tuple[int, int] = (32, 64)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.kvcells", description=__doc__)
    p.add_argument("--cells", default=",".join(CELLS), help="comma-separated, of a,b,c,d,e")
    p.add_argument("--routers", default=",".join(ROUTERS))
    p.add_argument("--pods", type=int, default=4)
    p.add_argument("--num-gpu-blocks", type=int, default=600, help="KV blocks of 16 tokens")
    p.add_argument("--speed", type=float, default=0.25)
    p.add_argument("--system-chars", type=int, default=4000, help="each shared system prompt")
    p.add_argument("--plain-groups", type=int, default=8, help="d, e: system prompts")
    p.add_argument("--evicting-groups", type=int, default=0,
                   help="a-c: system prompts (0: twice the pods' KV memory)")  # fmt: skip
    p.add_argument("--fraction", type=float, default=0.8, help="rate, of capacity")
    p.add_argument("--capacity", type=float, default=0.0, help="req/s, skip measuring it")
    p.add_argument("--capacity-seconds", type=float, default=15.0)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals")
    p.add_argument("--drain", type=float, default=15.0)
    p.add_argument("--foreign-share", type=float, default=0.5, help="e: foreign rate / rate")
    p.add_argument("--ttft-budget", default="2s", help="precise: the affinity gate's budget")
    p.add_argument("--first-ip", default="127.0.78.2")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epp-log-level", default="WARNING", help="DEBUG logs every pick's scores")
    p.add_argument("--samples", action="store_true", help="also write each request's sample")
    p.add_argument("--budget-minutes", type=float, default=20.0)
    p.add_argument(
        "--out",
        type=Path,
        help="run folder (default loadtest/results/<date>-<HHMM>-bench-kv-cells)",
    )
    return p


def block_tokens_of(chars: int) -> int:
    """KV blocks a system prompt of `chars` takes with the tiny tokenizer (about 2.24 chars a
    token on this workload's words)."""
    return round(chars / 2.24 / 16)


def shapes(a: argparse.Namespace) -> dict[str, Shape]:
    evicting = a.evicting_groups or round(
        2 * a.pods * a.num_gpu_blocks / block_tokens_of(a.system_chars)
    )
    plain = Shape(a.plain_groups, a.system_chars)
    return {"plain": plain, "evicting": Shape(evicting, a.system_chars)}


def shape_of(cell: str) -> str:
    return "evicting" if cell in ("a", "b", "c") else "plain"


def requests(shape: Shape, seed: int, stream: int) -> Iterator[ChatRequest]:
    """Endless requests: a uniformly chosen system prompt, then a new question. The prompts
    depend on `seed` only; `stream` picks another sequence of groups and questions."""
    prompts = system_prompts(seed, shape.groups, shape.system_chars // 4)
    rng = random.Random(seed * 1_000_003 + stream)
    i = 0
    while True:
        g = rng.randrange(shape.groups)
        question = f"q{stream}.{i} " + text(rng, shape.question_chars // 4)
        yield ChatRequest((("system", prompts[g]), ("user", question)), rng.randint(*shape.output),
                          f"group-{g}")  # fmt: skip
        i += 1


def precise_config(a: argparse.Namespace, variant: str = "precise") -> dict[str, object]:
    """The approximate router's profile with the precise scorer in place of the approximate."""
    params = {"tokenizer": TOKENIZER, "hashSeed": HASH_SEED, "kvEventsReplayPort": 5558,
              "ttftBudget": a.ttft_budget, **PRECISE[variant]}  # fmt: skip
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {"type": "precise-prefix-cache-scorer", "parameters": params},
            {"type": "queue-scorer"},
            {"type": "kv-cache-utilization-scorer"},
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [
            {
                "name": APPROXIMATE,
                "plugins": [
                    {"pluginRef": "precise-prefix-cache-scorer", "weight": 3},
                    {"pluginRef": "queue-scorer", "weight": 2},
                    {"pluginRef": "kv-cache-utilization-scorer", "weight": 2},
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
    }


class Cells:
    def __init__(self, args: argparse.Namespace, children: Children) -> None:
        self.a = args
        self.children = children
        self.pods = sim_pods(args.first_ip, args.pods)
        self.shapes = shapes(args)
        self.deadline = time.monotonic() + args.budget_minutes * 60
        self.samples: list[client.Sample] = []  # the last point's
        self.configs: dict[str, Path] = {}
        for variant in PRECISE:
            self.configs[variant] = children.run_dir / f"{variant}.yaml"
            self.configs[variant].write_text(yaml.safe_dump(precise_config(args, variant)))

    def sim_args(self) -> list[str]:
        events = {"enable_kv_cache_events": True, "publisher": "zmq",
                  "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}  # fmt: skip
        a = self.a
        return [
            "--speed", str(a.speed), "--max-num-seqs", "8", "--num-gpu-blocks",
            str(a.num_gpu_blocks), "--seed", str(a.seed), "--name-prefix", "pod",
            "--kv-events-config", orjson.dumps(events).decode(), "--tokenizer", TOKENIZER,
            "--hash-seed", HASH_SEED,
        ]  # fmt: skip

    async def start(self, cell: str, router: str) -> str:
        await start_sim(self.children, self.pods, self.sim_args())
        if router in EPP_ROUTERS:
            config = self.configs.get(SHARING.get(router, router))
            extra = ["--scheduler-config", str(config)] if config else []
            profile = GPU_AWARE if router == GPU_AWARE else APPROXIMATE
            spec = RouterSpec("epp", profile)
            if cell == "c":  # two replicas behind one Envoy, sharing or not
                spec = RouterSpec(REPLICAS if router in SHARING else REPLICAS_ALONE, profile + ":2")
            url = await start_router(
                self.children, spec, self.pods, False, extra, 8, self.a.epp_log_level
            )
        else:
            url = await start_router(self.children, RouterSpec.parse(router), self.pods)
        await settle(1.5)  # scrapes, and the precise EPP's subscriptions
        return url + "/v1/chat/completions"

    async def capacity(self, shape: str) -> float:
        a = self.a
        try:
            url = await self.start("d", "envoy:LEAST_REQUEST")
            async with client.make_session(60.0) as session:
                samples = await client.closed_loop(
                    session, url, requests(self.shapes[shape], a.seed, 1000), "bench",
                    a.pods * 16, a.capacity_seconds,
                )  # fmt: skip
        finally:
            await self.children.stop_all()
        return stats.completion_rate(samples, a.capacity_seconds / 3, a.capacity_seconds)

    async def point(self, cell: str, router: str, rate: float) -> kvcells_report.CellPoint:
        a = self.a
        try:
            url = await self.start(cell, router)
            arrivals = poisson_arrivals(a.seed, rate, a.duration)
            shape = self.shapes[shape_of(cell)]
            async with client.make_session(60.0) as session:
                side: list[asyncio.Task[object]] = []
                if cell == "b":
                    side.append(asyncio.create_task(self._restart_at(session, a.duration / 2)))
                if cell == "e":
                    side.append(asyncio.create_task(self._foreign(session, shape, rate)))
                samples = await client.open_loop(
                    session, url, requests(shape, a.seed, 0), arrivals, "bench", a.drain
                )
                await asyncio.gather(*side)
                self.samples = samples
        finally:
            await self.children.stop_all()
        return kvcells_report.CellPoint(cell, router, rate, stats.summarize(samples))

    async def _restart_at(self, session: aiohttp.ClientSession, delay: float) -> object:
        await asyncio.sleep(delay)
        pod = self.pods[1]
        async with session.post(f"http://{pod.address}/sim/config", json={"restart": True}) as r:
            r.raise_for_status()
        print(f"  restarted {pod.name} at {delay:.0f} s", flush=True)
        return None

    async def _foreign(self, session: aiohttp.ClientSession, shape: Shape, rate: float) -> object:
        """Clients that reach the pods directly, round robin, at `--foreign-share` x `rate`."""
        a = self.a
        arrivals = poisson_arrivals(a.seed + 7, rate * a.foreign_share, a.duration)
        reqs = requests(shape, a.seed, 1)
        headers = {"content-type": "application/json"}
        t0 = time.perf_counter()
        tasks = []
        for i, offset in enumerate(arrivals):
            await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
            url = f"http://{self.pods[i % len(self.pods)].address}/v1/chat/completions"
            body = client.encode(next(reqs), "foreign")
            tasks.append(asyncio.create_task(client.send(session, url, body, t0, headers)))
        done = await asyncio.gather(*tasks)
        print(f"  foreign clients: {sum(s.ok for s in done)}/{len(done)} ok", flush=True)
        return None


async def amain(a: argparse.Namespace, children: Children) -> int:
    cells = Cells(a, children)
    a.out = a.out or run_folder("bench", "kv-cells")
    command = command_text(".venv/bin/python -m loadtest.bench.kvcells", sys.argv[1:])
    profiles = kvcells_report.profiles(a.routers.split(","), cells.configs)
    record = Record.now("bench", command, profiles, "kv-cells " + a.cells)
    wanted = a.cells.split(",")
    routers = a.routers.split(",")
    capacities: dict[str, float] = {}
    points: list[kvcells_report.CellPoint] = []
    skipped: list[str] = []
    for cell in wanted:
        shape = shape_of(cell)
        if shape not in capacities:
            capacities[shape] = a.capacity or await cells.capacity(shape)
            print(f"[{shape}] capacity {capacities[shape]:.2f} req/s", flush=True)
        rate = capacities[shape] * a.fraction
        for router in routers:
            kind = router.partition(":")[0]
            if cell == "c" and kind in ("vllm-router", "sglang-router"):
                continue  # one process each: no replicas to compare
            if cell != "c" and router in SHARING:
                continue  # one replica: the same as the router without sharing
            why = RouterSpec.parse(router).unavailable() if ":" in router else None
            if why or time.monotonic() > cells.deadline:
                skipped.append(f"{cell} {router}: {why or 'time budget spent'}")
                continue
            point = await cells.point(cell, router, rate)
            s = point.stats
            print(
                f"[{cell}] {router:26s} {rate:5.2f} req/s ok {s.ok}/{s.sent} ttft p90 "
                f"{s.ttft.p90:.3f}s hit {s.hit_rate:.0%} pods/group {s.group_pods:.1f} "
                f"per pod {s.pods_text()}",
                flush=True,
            )
            points.append(point)
            if a.samples:
                a.out.mkdir(parents=True, exist_ok=True)
                lines = (orjson.dumps(dataclasses.asdict(s)) + b"\n" for s in cells.samples)
                (a.out / f"samples-{cell}-{router.replace(':', '-')}.jsonl").write_bytes(
                    b"".join(lines)
                )
    path = kvcells_report.write(a, record, cells.shapes, capacities, points, skipped)
    print(f"wrote {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    for r in args.routers.split(","):
        if r not in EPP_ROUTERS:
            RouterSpec.parse(r)
    run_dir = Path(tempfile.mkdtemp(prefix="epp-kvcells-"))
    children = Children(run_dir)
    print(f"logs in {run_dir}", flush=True)
    try:
        return asyncio.run(_guarded(args, children))
    finally:
        children.kill_now()


async def _guarded(a: argparse.Namespace, children: Children) -> int:
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    try:
        return await amain(a, children)
    except asyncio.CancelledError:
        print("interrupted: stopping every child process", file=sys.stderr, flush=True)
        return 130
    finally:
        await children.stop_all()


if __name__ == "__main__":
    sys.exit(main())
