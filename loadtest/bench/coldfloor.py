"""`python -m loadtest.bench.coldfloor`: the p90 TTFT no router can beat on a shared-prefix cell.

Every prefix group's first request in a run finds its system prompt in no pod's cache, whatever
routes it: it is a cold prefill. When a run's first sightings are more than a tenth of its
requests, at least that many requests take at least one cold prefill on an idle pod of the
fastest kind, and so does the p90 TTFT of every router (the percentile `loadtest.bench.stats`
takes, by linear interpolation, lies between two requests that both took that long or longer).

For each shared-prefix cell of a matrix run folder (`--matrix`), this tool reads the cell's
bench command, seed and rate from its JSON, replays the exact arrivals and requests the cell
sent (`poisson_arrivals`, `requests_of`), counts the first sightings, and measures a cold
prefill on a fresh simulator started with the cell's own flags: `--probes` first sightings sent
one at a time to each pod, each TTFT timed as the cell times it (first body byte, through the
cell's stream flush interval); the floor is the smallest pod's median. It prints, per cell, the
requests, first sightings, whether the floor binds p90, the floor, the routers' p90 TTFT as the
run measured them and the issue-24 mark (0.8x the best cache-aware peer), and writes
`cold-floor.md|json` into the matrix folder (or `--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import aiohttp
import orjson

from loadtest.bench import client
from loadtest.bench.__main__ import make_parser as bench_parser
from loadtest.bench.__main__ import requests_of, sim_args
from loadtest.bench.routers import Children, sim_pods, start_sim
from loadtest.workloads import ChatRequest, poisson_arrivals

CACHE_AWARE = ("vllm-router:cache_aware", "sglang-router:cache_aware")
MARK = 0.8  # issue 24: shared-prefix p90 TTFT at most 0.8x the best cache-aware peer


@dataclass(frozen=True, slots=True)
class Floor:
    cell: str
    seed: int
    requests: int
    first_sightings: int
    above_p90: int  # requests at or above the p90 position (the floor binds when fewer are cold)
    binds: bool
    cold_ttft: float  # seconds: the fastest pod's median cold prefill, idle
    cold_by_pod: dict[str, float]
    p90_ttft: dict[str, float]  # router -> the run's p90 TTFT
    mark: float  # MARK x the best cache-aware peer's p90 (nan without one)

    @property
    def mark_reachable(self) -> bool:
        return not self.binds or self.mark >= self.cold_ttft


def above_p90(n: int) -> int:
    """How many of `n` sorted values lie at or above their interpolated 90th percentile's lower
    neighbour: the percentile is at least the smallest of them."""
    return n - math.floor((n - 1) * 0.9)


def cell_args(command: str) -> argparse.Namespace:
    """The bench flags a matrix cell ran with (its recorded command)."""
    words = shlex.split(command)
    start = words.index("loadtest.bench") + 1
    return bench_parser().parse_args(words[start:])


def first_sightings(a: argparse.Namespace, rate: float) -> tuple[int, list[ChatRequest]]:
    """(requests the cell sent, the first request of each group, in order)."""
    arrivals = poisson_arrivals(a.seed, rate, a.duration)
    seen: set[str] = set()
    firsts: list[ChatRequest] = []
    for request in islice(requests_of(a, "shared-prefix", a.seed, arrivals), len(arrivals)):
        if request.group not in seen:
            seen.add(request.group)
            firsts.append(request)
    return len(arrivals), firsts


async def cold_prefills(
    a: argparse.Namespace, firsts: list[ChatRequest], probes: int
) -> dict[str, float]:
    """Each pod's median TTFT for first sightings sent one at a time to a fresh simulator."""
    pods = sim_pods(a.first_ip, a.pods)
    with tempfile.TemporaryDirectory(prefix="coldfloor-") as logs:
        children = Children(Path(logs))
        try:
            await start_sim(children, pods, sim_args(a))
            out: dict[str, float] = {}
            async with aiohttp.ClientSession() as session:
                for n, pod in enumerate(pods):
                    url = f"http://{pod.address}/v1/chat/completions"
                    times = []
                    for request in firsts[n * probes : (n + 1) * probes]:
                        body = orjson.dumps(request.body("bench", True, a.lengths, a.length_cap))
                        sample = await client.send(session, url, body, time.perf_counter())
                        if sample.error or sample.cached_tokens:
                            raise RuntimeError(f"probe on {pod.name}: {sample.error or 'cached'}")
                        times.append(sample.ttft)
                    out[pod.name] = statistics.median(times)
            return out
        finally:
            await children.stop_all()


def floor_of(path: Path, probes: int) -> Floor | None:
    data = json.loads(path.read_text())
    a = cell_args(data["record"]["command"])
    if "shared-prefix" not in a.workloads.split(","):
        return None
    points = data["points"]
    rate = points[0]["rate"]
    n, firsts = first_sightings(a, rate)
    groups = len(firsts)
    cold = asyncio.run(cold_prefills(a, firsts, probes))
    p90 = {p["router"]: p["stats"]["ttft"]["p90"] for p in points}
    peers = [v for r, v in p90.items() if r in CACHE_AWARE]
    needed = above_p90(n)
    return Floor(
        path.stem.rsplit("-s", 1)[0], a.seed, n, groups, needed, groups >= needed,
        min(cold.values()), cold, p90, MARK * min(peers) if peers else math.nan,
    )  # fmt: skip


def render(floors: list[Floor]) -> str:
    lines = [
        "# The cold-prefill floor of p90 TTFT (`python -m loadtest.bench.coldfloor`)",
        "",
        "| cell | seed | requests | first sightings | needed to bind p90 | binds | cold prefill, "
        "fastest idle pod | p90 TTFT as run (ours / best cache-aware peer) | 0.8x that peer "
        "| reachable |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in floors:
        ours = next((v for r, v in f.p90_ttft.items() if r.startswith("epp:")), math.nan)
        peer = min((v for r, v in f.p90_ttft.items() if r in CACHE_AWARE), default=math.nan)
        lines.append(
            f"| {f.cell} | {f.seed} | {f.requests} | {f.first_sightings} | {f.above_p90} "
            f"| {'yes' if f.binds else 'no'} | {f.cold_ttft:.3f} s | {ours:.3f} / {peer:.3f} s "
            f"| {f.mark:.3f} s | {'yes' if f.mark_reachable else '**no**'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.coldfloor", description=__doc__)
    p.add_argument("--matrix", type=Path, required=True, help="a matrix run folder")
    p.add_argument("--cells", default="", help="comma-separated cell names (default: all)")
    p.add_argument("--probes", type=int, default=3, help="cold prompts timed per pod")
    p.add_argument("--out", type=Path, help="where cold-floor.md|json go (default: --matrix)")
    a = p.parse_args(argv)
    out = a.out or a.matrix
    out.mkdir(parents=True, exist_ok=True)
    wanted = {c for c in a.cells.split(",") if c}
    floors = []
    for path in sorted(a.matrix.glob("*-s[0-9]*.json")):
        if wanted and path.stem.rsplit("-s", 1)[0] not in wanted:
            continue
        found = floor_of(path, a.probes)
        if found is not None:
            floors.append(found)
            print(render([found]).splitlines()[-1], flush=True)
    text = render(floors)
    (out / "cold-floor.md").write_text(text)
    (out / "cold-floor.json").write_text(json.dumps([asdict(f) for f in floors], indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
