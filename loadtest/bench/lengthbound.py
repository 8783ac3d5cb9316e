"""`python -m loadtest.bench.lengthbound`: the p90 e2e that hidden answer lengths allow.

Issue 24 asks, on the ShareGPT-like cell with production lengths (`sharegpt-cap`: every request
sends the same cap, the true length is hidden from every router), for a p90 e2e at most 0.9x
the best peer's at ~90 % load. When no router can know a request's length, the only levers are
which pod a request goes to and when; this tool measures how far those levers reach.

It replays a matrix cell's exact requests (its recorded command, seed and rate:
`poisson_arrivals`, `requests_of`) through the simulator's own engines (`epp.sim.engine`, the
code the bench's pods run: continuous batching, the GPU profile's step times, each pod's speed
and batch limit) on a virtual clock, under dispatch policies that see what a router sees (pods,
their speeds, requests in flight, the order of arrival) and never a length:

- `least-request`: each arrival to the pod with the fewest requests in flight (ties: the
  first), queued inside that pod behind a full batch (vLLM's own FCFS queue);
- `power-of-two`: two pods drawn at random, the one with fewer in flight (Envoy's
  least-request, vllm-router's power_of_two);
- `free-slot`: one queue in the router, first come first served; the head goes to a free batch
  slot as soon as one exists, the fastest pod's first (what our admission intends when lengths
  are hidden, done perfectly: the EPP's load scorers sometimes prefer a slower free slot);
- `threshold-K`: the same, but a pod slower than the fastest takes the head only while K or more
  requests wait (the policy family known to be optimal for two server speeds and a mean
  response time; K from 2 to 16 is searched, the best p90 reported).

Per cell and seed it prints each policy's p90 e2e, p90 and p99 TTFT and the slow pods' share,
each p90 e2e as a ratio to the better peer model (least-request, power-of-two), the best policy
whose p99 TTFT is no worse than that peer model's (the issue's second condition), and the p90
e2e the bench measured for each router in that run. `--draws N` adds N more draws of the same
cell (other seeds, same rate; `--seconds` of arrivals, default the cell's) and prints the spread
of the ratios: what a single run of the bench can show. Times here are the engines' own (no
network, no event loop), so absolute numbers run a few percent below the bench's; the ratios
are the point.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import orjson

from epp.sim.blockhash import BlockHasher
from epp.sim.engine import Engine, Seq
from epp.sim.main import build_specs
from epp.sim.main import make_parser as sim_parser
from epp.sim.openai import parse_request
from epp.sim.pod import engine_config
from epp.sim.spec import SimPodSpec
from epp.sim.tokenizer import byte_ids
from loadtest.bench.__main__ import requests_of, sim_args
from loadtest.bench.coldfloor import cell_args
from loadtest.bench.routers import sim_pods
from loadtest.bench.stats import percentile
from loadtest.record import describe_commit
from loadtest.workloads import poisson_arrivals

BLIND_PEERS = ("least-request", "power-of-two")
THRESHOLDS = (2, 3, 4, 6, 8, 12, 16)


@dataclass(frozen=True, slots=True)
class Request:
    at: float  # arrival, seconds from the run's start
    prompt_tokens: int
    output_tokens: int
    hashes: tuple[int, ...] = ()  # the prompt's block hashes, for prefix caching (none: off)


@dataclass(frozen=True, slots=True)
class Outcome:
    at: float
    first: float
    end: float
    pod: int
    prompt_tokens: int = 0
    cached: int = 0  # prompt tokens the pod's prefix cache held


@dataclass(frozen=True, slots=True)
class Result:
    policy: str
    e2e_p90: float
    ttft_p90: float
    ttft_p99: float
    slow_share: float  # requests served by pods slower than the fastest


# ---- the cell ---------------------------------------------------------------------------------
def pods_of(a: argparse.Namespace) -> list[SimPodSpec]:
    """Each pod of a bench command's cluster, as the simulator it starts builds them (its own
    flags from `sim_args`, `--pod-option` included)."""
    addresses = ",".join(p.address for p in sim_pods(a.first_ip, a.pods))
    return build_specs(sim_parser().parse_args([*sim_args(a), "--pods", addresses]))


def trace(
    a: argparse.Namespace,
    seed: int,
    rate: float,
    duration: float,
    blocks: BlockHasher | None = None,
) -> list[Request]:
    """The requests a bench run of this cell sends: arrivals and chats as the bench draws them,
    prompt tokens as the simulator counts them (its own request parser); with `blocks`, each
    prompt's block hashes as the simulator's pods compute them (its byte tokenizer)."""
    arrivals = poisson_arrivals(seed, rate, duration)
    chats = islice(requests_of(a, a.workloads.split(",")[0], seed, arrivals), len(arrivals))
    out = []
    for at, chat in zip(arrivals, chats, strict=True):
        body = orjson.dumps(chat.body("bench", True, a.lengths, a.length_cap))
        parsed = parse_request(body, chat=True)
        hashes = tuple(blocks.hashes(byte_ids(parsed.prompt))) if blocks is not None else ()
        out.append(Request(at, parsed.prompt_tokens, chat.max_tokens, hashes))
    return out


# ---- policies ---------------------------------------------------------------------------------
@dataclass(slots=True)
class Pod:
    index: int
    spec: SimPodSpec
    engine: Engine
    in_flight: int = 0
    step_end: float | None = None

    @property
    def free(self) -> bool:
        return self.in_flight < self.spec.max_num_seqs


Policy = Callable[[float, deque[Request], list[Pod]], Iterator[tuple[Request, Pod]]]


def least_request(
    now: float, queue: deque[Request], pods: list[Pod]
) -> Iterator[tuple[Request, Pod]]:
    while queue:
        yield queue.popleft(), min(pods, key=lambda p: p.in_flight)


def power_of_two(rng: random.Random) -> Policy:
    def policy(now: float, queue: deque[Request], pods: list[Pod]) -> Iterator[tuple[Request, Pod]]:
        while queue:
            a, b = rng.sample(pods, 2)
            yield queue.popleft(), (b if b.in_flight < a.in_flight else a)

    return policy


def threshold(k: int) -> Policy:
    """Free slots, fastest pod first; a slower pod takes the head only while `k` wait (k=1:
    every free slot, `free-slot`)."""

    def policy(now: float, queue: deque[Request], pods: list[Pod]) -> Iterator[tuple[Request, Pod]]:
        fastest = max(p.spec.speed for p in pods)
        while queue:
            free = [p for p in pods if p.free]
            fast = [p for p in free if p.spec.speed >= fastest]
            if fast:
                pod = min(fast, key=lambda p: p.in_flight)
            elif free and len(queue) >= k:
                pod = max(free, key=lambda p: (p.spec.speed, -p.in_flight))
            else:
                return
            yield queue.popleft(), pod

    return policy


def policies(seed: int) -> dict[str, Policy]:
    found: dict[str, Policy] = {
        "least-request": least_request,
        "power-of-two": power_of_two(random.Random(seed)),
        "free-slot": threshold(1),
    }
    found |= {f"threshold-{k}": threshold(k) for k in THRESHOLDS}
    return found


Started = dict[int, tuple[Request, int]]  # id(seq) -> (request, pod index)


def dispatch(
    now: float, queue: deque[Request], pods: list[Pod], policy: Policy, started: Started
) -> None:
    """Submit what `policy` takes from `queue`, each counted on its pod before the policy
    picks the next (a policy reads the counts)."""
    for r, pod in policy(now, queue, pods):
        seq = Seq(f"r{len(started)}", r.prompt_tokens, r.output_tokens, list(r.hashes))
        pod.engine.submit(seq, now)
        pod.in_flight += 1
        started[id(seq)] = (r, pod.index)


# ---- the virtual clock ------------------------------------------------------------------------
def simulate(
    specs: Sequence[SimPodSpec], requests: Sequence[Request], policy: Policy
) -> list[Outcome]:
    """Every request through engines of `specs` on one virtual clock, routed by `policy`."""
    pods = [Pod(n, s, Engine(engine_config(s))) for n, s in enumerate(specs)]
    queue: deque[Request] = deque()
    started: Started = {}
    outcomes: list[Outcome] = []
    steps: list[tuple[float, int]] = []  # (end, pod index)
    i, now = 0, 0.0

    def plan() -> None:
        for n, pod in enumerate(pods):
            if pod.step_end is None:
                d = pod.engine.plan_step(now)
                if d is not None:
                    pod.step_end = now + d
                    heapq.heappush(steps, (pod.step_end, n))

    while i < len(requests) or steps or queue:
        arrival = requests[i].at if i < len(requests) else math.inf
        step = steps[0][0] if steps else math.inf
        if arrival == step == math.inf:
            raise RuntimeError("requests wait with nothing running: the policy never dispatches")
        if arrival <= step:
            now = arrival
            queue.append(requests[i])
            i += 1
        else:
            now, n = heapq.heappop(steps)
            pod = pods[n]
            pod.step_end = None
            for seq in pod.engine.finish_step(now):
                if seq.done:
                    r, where = started.pop(id(seq))
                    pod.in_flight -= 1
                    first = seq.first_token_at or now
                    outcomes.append(
                        Outcome(r.at, first, now, where, r.prompt_tokens, seq.cached_tokens)
                    )
        dispatch(now, queue, pods, policy, started)
        plan()
    return outcomes


def result(name: str, outcomes: Sequence[Outcome], specs: Sequence[SimPodSpec]) -> Result:
    fastest = max(s.speed for s in specs)
    slow = {n for n, s in enumerate(specs) if s.speed < fastest}
    e2e = [o.end - o.at for o in outcomes]
    ttft = [o.first - o.at for o in outcomes]
    share = sum(o.pod in slow for o in outcomes) / len(outcomes) if outcomes else math.nan
    return Result(name, percentile(e2e, 90), percentile(ttft, 90), percentile(ttft, 99), share)


def replay(specs: Sequence[SimPodSpec], requests: Sequence[Request], seed: int) -> list[Result]:
    return [
        result(name, simulate(specs, requests, policy), specs)
        for name, policy in policies(seed).items()
    ]


def best_threshold(results: Sequence[Result]) -> Result:
    return min((r for r in results if r.policy.startswith("threshold-")), key=lambda r: r.e2e_p90)


def blind_peer(results: Sequence[Result]) -> Result:
    """The better of the two peer models on p90 e2e (its p99 TTFT is the bar's)."""
    return min((r for r in results if r.policy in BLIND_PEERS), key=lambda r: r.e2e_p90)


def best_admissible(results: Sequence[Result]) -> Result | None:
    """The router-side policy (free-slot or a threshold) with the lowest p90 e2e among those
    whose p99 TTFT is no worse than the best peer model's (issue 24's second condition)."""
    bar = blind_peer(results).ttft_p99
    ours = [r for r in results if r.policy not in BLIND_PEERS and r.ttft_p99 <= bar]
    return min(ours, key=lambda r: r.e2e_p90) if ours else None


@dataclass(frozen=True, slots=True)
class Draw:
    """One more draw of a cell: p90 e2e of each router-side choice / the best peer model's."""

    free_slot: float
    best_threshold: float  # the best K of this draw, chosen after the fact
    admissible: float  # the best with p99 TTFT no worse than the peer's (inf: none is)


def draw_of(results: Sequence[Result]) -> Draw:
    peer = blind_peer(results).e2e_p90
    free = next(r for r in results if r.policy == "free-slot")
    ok = best_admissible(results)
    return Draw(
        free.e2e_p90 / peer,
        best_threshold(results).e2e_p90 / peer,
        ok.e2e_p90 / peer if ok is not None else math.inf,
    )


# ---- the report -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CellBound:
    cell: str
    seed: int
    requests: int
    results: list[Result]
    measured: dict[str, float]  # router -> p90 e2e the bench measured
    draws: list[Draw]
    draw_seconds: float
    commit: str  # the cell run's (its record's)


def bound_of(path: Path, draws: int, seconds: float | None) -> CellBound:
    data = json.loads(path.read_text())
    a = cell_args(data["record"]["command"])
    rate = data["points"][0]["rate"]
    specs = pods_of(a)
    requests = trace(a, a.seed, rate, a.duration)
    results = replay(specs, requests, a.seed)
    duration = seconds or a.duration
    extra = []
    for n in range(draws):
        seed = 1000 + 7 * n + a.seed
        extra.append(draw_of(replay(specs, trace(a, seed, rate, duration), seed)))
    measured = {p["router"]: p["stats"]["e2e"]["p90"] for p in data["points"]}
    cell = path.stem.rsplit("-s", 1)[0]
    commit = data["record"]["commit"]
    return CellBound(cell, a.seed, len(requests), results, measured, extra, duration, commit)


def _spread(values: Sequence[float]) -> str:
    """Median and p10-p90 by nearest rank (a draw where no policy is admissible is infinite and
    sorts last), and how many draws reach the 0.9x mark."""
    ordered = sorted(values)

    def at(q: float) -> str:
        v = ordered[round(q * (len(ordered) - 1))]
        return f"{v:.2f}x" if math.isfinite(v) else "none"

    none = sum(not math.isfinite(v) for v in values)
    return (
        f"median {at(0.5)}, p10-p90 {at(0.1)}-{at(0.9)}, at most 0.9x in "
        f"{sum(v <= 0.9 for v in values)} of {len(values)}"
        + (f" (none admissible in {none})" if none else "")
    )


def render(bounds: Sequence[CellBound], tool_commit: str = "") -> str:
    lines = ["# What hidden answer lengths allow (`python -m loadtest.bench.lengthbound`)", ""]
    if tool_commit:
        lines += [f"Replayed at `{tool_commit}`.", ""]
    for b in bounds:
        peer = blind_peer(b.results)
        best = best_threshold(b.results)
        ok = best_admissible(b.results)
        lines += [
            f"## {b.cell}, seed {b.seed} ({b.requests} requests)",
            "",
            f"- commit: `{b.commit}` (the cell's run; its requests and rate)",
            "",
            "| policy | p90 e2e s | / best peer model | p90 TTFT s | p99 TTFT s "
            "| slow pods' share |",
            "|---|---|---|---|---|---|",
        ]
        for r in b.results:
            mark = " (best threshold)" if r is best else ""
            lines.append(
                f"| {r.policy}{mark} | {r.e2e_p90:.2f} | {r.e2e_p90 / peer.e2e_p90:.2f}x | "
                f"{r.ttft_p90:.3f} | {r.ttft_p99:.3f} | {r.slow_share:.0%} |"
            )
        lines += [
            "",
            "Best router-side policy with p99 TTFT no worse than the best peer model's: "
            + (
                f"{ok.policy}, {ok.e2e_p90 / peer.e2e_p90:.2f}x"
                if ok is not None
                else "none of them"
            ),
        ]
        if b.measured:
            best_measured = min(v for k, v in b.measured.items() if not k.startswith("epp"))
            lines += ["", "Measured by the bench in this run (p90 e2e, s; / the best peer):", ""]
            lines += [f"- {k}: {v:.2f} ({v / best_measured:.2f}x)" for k, v in b.measured.items()]
        if b.draws:
            lines += [
                "",
                f"Over {len(b.draws)} more draws of this cell (other seeds, same rate, "
                f"{b.draw_seconds:g} s of arrivals), p90 e2e / the best peer model's:",
                "",
                f"- free-slot: {_spread([d.free_slot for d in b.draws])}",
                "- the best threshold of each draw (chosen after the fact): "
                + _spread([d.best_threshold for d in b.draws]),
                "- the best with p99 TTFT no worse than the peer model's (after the fact): "
                + _spread([d.admissible for d in b.draws]),
            ]
        lines.append("")
    return "\n".join(lines)


def cell_runs(matrix: Path, cells: str) -> list[Path]:
    """The JSON reports of the named cells (comma-separated), every seed, in a matrix run
    folder; none found is said on stderr."""
    paths = [path for cell in cells.split(",") for path in sorted(matrix.glob(f"{cell}-s*.json"))]
    if not paths:
        print(f"no cell of {cells!r} in {matrix}", file=sys.stderr)
    return paths


def publish(text: str, folder: Path | None, name: str) -> None:
    """Print a tool's report and, given a folder, write it there as `name`."""
    print(text)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.lengthbound", description=__doc__)
    p.add_argument("--matrix", type=Path, required=True, help="a matrix run folder")
    p.add_argument("--cells", default="sharegpt-cap", help="comma-separated cell names")
    p.add_argument("--draws", type=int, default=0, help="extra draws of each cell (other seeds)")
    p.add_argument(
        "--seconds", type=float, help="seconds of arrivals per extra draw (default: the cell's)"
    )
    p.add_argument("--out", type=Path, help="write lengthbound.md here (default: the folder)")
    a = p.parse_args(argv)
    paths = cell_runs(a.matrix, a.cells)
    if not paths:
        return 2
    text = render([bound_of(path, a.draws, a.seconds) for path in paths], describe_commit())
    publish(text, a.out or a.matrix, "lengthbound.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
