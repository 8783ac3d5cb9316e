"""Routing quality in virtual time: simulated vLLM engines, scheduled by our profiles and baselines.

No sockets and no wall clock: `epp.sim.engine` engines (5 full-speed A100s and one at half
speed) advance on a shared virtual clock; every 50 ms a "scrape" copies their queue/KV into
EndpointMetrics, and in-flight counts are exact, as the EPP keeps them. Each arrival is
scheduled by a profile (or Envoy's least-request: two random choices, fewer active requests
wins) and submitted to the chosen engine. Prints TTFT p50/p90, end-to-end p90, throughput and
the engines' prefix-cache hit rate side by side. Envoy-level numbers are loadtest/'s job.
Run: pytest -m bench -s -k quality
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import pytest

from epp.scheduling.base import SchedulingRequest
from epp.scheduling.registry import build_default_profiles, select_profile
from epp.scheduling.saturation import SaturationDetector
from epp.sim.engine import Engine, EngineConfig, Seq
from epp.sim.profiles import get_profile
from epp.types import Endpoint, EndpointMetrics, EndpointState
from tests.sim_hashes import block_hashes

pytestmark = pytest.mark.bench

SPEEDS = (1.0, 1.0, 1.0, 1.0, 1.0, 0.5)
SCRAPE_S = 0.05
SECONDS = 30.0
MODEL = "m"


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    prompt: bytes
    prompt_tokens: int
    output_tokens: int
    priority: int = 0


class Scheduler(Protocol):
    def schedule(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState], count: int = 1
    ) -> list[EndpointState]: ...


class EnvoyLeastRequest:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def schedule(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState], count: int = 1
    ) -> list[EndpointState]:
        a, b = self.rng.sample(range(len(candidates)), 2)
        first, second = candidates[a], candidates[b]
        return [first if first.in_flight <= second.in_flight else second]


def sharegpt(rate: float, rng: random.Random) -> list[Arrival]:
    """Unique prompts; lognormal prompt (median ~200) and output (median ~150) lengths."""
    out, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < SECONDS:
        p = int(min(1500, max(8, rng.lognormvariate(5.3, 1.0))))
        o = int(min(800, max(4, rng.lognormvariate(5.0, 0.9))))
        out.append(Arrival(t, rng.randbytes(4 * p), p, o))
    return out


def shared_prefix(rate: float, rng: random.Random) -> list[Arrival]:
    """64 system prompts of 3,000 tokens (more than one pod's cache holds) + 100-token questions."""
    systems = [rng.randbytes(4 * 3000) for _ in range(64)]
    out, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < SECONDS:
        prompt = rng.choice(systems) + rng.randbytes(4 * 100)
        out.append(Arrival(t, prompt, 3100, 120))
    return out


@dataclass(slots=True)
class Result:
    ttft: list[float]
    e2e: list[float]
    end: float
    hit_rate: float
    ttft_by_priority: dict[int, list[float]]
    shed: int

    def pct(self, values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def simulate(
    scheduler: Scheduler | Callable[[int], Scheduler],
    arrivals: list[Arrival],
    now: list[float],
    detector: SaturationDetector | None = None,
) -> Result:
    """Run the arrivals; with a detector, sheddable arrivals are dropped while it says saturated."""
    choose = scheduler if callable(scheduler) else (lambda priority: scheduler)
    gpu = get_profile("A100-80G")
    engines = [Engine(EngineConfig(gpu, speed=s, max_model_len=8192)) for s in SPEEDS]
    endpoints = [
        Endpoint(f"10.0.0.{i + 2}:8000", f"ns/p{i}", "ns/pool") for i in range(len(SPEEDS))
    ]
    metrics = [EndpointMetrics() for _ in engines]
    flights, tokens = [0] * len(engines), [0] * len(engines)
    step_end: list[float | None] = [None] * len(engines)
    owner: dict[str, int] = {}
    seqs: list[tuple[Seq, int]] = []
    next_scrape, i, shed = 0.0, 0, 0
    while True:
        for k, engine in enumerate(engines):
            if step_end[k] is None and (d := engine.plan_step(now[0])) is not None:
                step_end[k] = now[0] + d
        steps = min((s for s in step_end if s is not None), default=math.inf)
        arrival = arrivals[i].at if i < len(arrivals) else math.inf
        if steps == arrival == math.inf:
            break
        now[0] = min(arrival, steps, next_scrape)
        if now[0] == next_scrape:
            for k, e in enumerate(engines):
                metrics[k] = EndpointMetrics(
                    len(e.waiting), len(e.running), e.kv.usage(), block_size=16,
                    num_gpu_blocks=e.kv.num_blocks, scraped_at=now[0],
                )  # fmt: skip
            next_scrape += SCRAPE_S
        elif now[0] == steps:
            for k, engine in enumerate(engines):
                if step_end[k] == steps:
                    step_end[k] = None
                    for seq in engine.finish_step(now[0]):
                        if seq.finished_at is not None:
                            j = owner.pop(seq.rid)
                            flights[j] -= 1
                            tokens[j] -= seq.prompt_tokens
        else:
            a = arrivals[i]
            i += 1
            states = [
                EndpointState(
                    endpoints[k], metrics[k], in_flight=flights[k], in_flight_tokens=tokens[k]
                )
                for k in range(len(engines))
            ]
            if a.priority < 0 and detector is not None and detector.saturated(states, now[0]):
                shed += 1
                continue
            request = SchedulingRequest(str(i), MODEL, a.priority, a.prompt_tokens, a.prompt)
            k = endpoints.index(choose(a.priority).schedule(request, states, 1)[0].endpoint)
            seq = Seq(
                str(i),
                a.prompt_tokens,
                a.output_tokens,
                block_hashes(a.prompt, a.prompt_tokens, 16, MODEL),
            )
            engines[k].submit(seq, now[0])
            seqs.append((seq, a.priority))
            owner[seq.rid] = k
            flights[k] += 1
            tokens[k] += a.prompt_tokens
    queries = sum(e.stats.prefix_queries for e in engines)
    hits = sum(e.stats.prefix_hits for e in engines)
    by_priority: dict[int, list[float]] = {}
    for s, priority in seqs:
        if s.first_token_at is not None:
            by_priority.setdefault(priority, []).append(s.first_token_at - s.arrival)
    return Result(
        [t for values in by_priority.values() for t in values],
        [s.finished_at - s.arrival for s, _ in seqs if s.finished_at is not None],
        now[0],
        hits / queries if queries else 0.0,
        by_priority,
        shed,
    )


def clock_of(now: list[float]) -> Callable[[], float]:
    return lambda: now[0]


WORKLOADS: dict[str, Callable[[float, random.Random], list[Arrival]]] = {
    "sharegpt": sharegpt,
    "shared-prefix": shared_prefix,
}


# rates near 90 % and 120 % of what the cluster sustains under least-request routing
@pytest.mark.parametrize(
    ("workload", "rate"),
    [("sharegpt", 100.0), ("sharegpt", 130.0), ("shared-prefix", 25.0), ("shared-prefix", 35.0)],
)
def test_bench_pick_quality(workload: str, rate: float) -> None:
    arrivals = WORKLOADS[workload](rate, random.Random(7))
    results: dict[str, Result] = {}
    for name in ("round-robin", "envoy-least-request", "least-request", "gpu-aware"):
        now = [0.0]
        scheduler: Scheduler
        if name == "envoy-least-request":
            scheduler = EnvoyLeastRequest(random.Random(1))
        else:
            scheduler = build_default_profiles(random.Random(1), clock_of(now))[name]
        results[name] = r = simulate(scheduler, arrivals, now)
        print(
            f"\n{workload:13s} {rate:5.0f}/s {name:19s} ttft p50 {r.pct(r.ttft, 0.5):6.3f}s"
            f" p90 {r.pct(r.ttft, 0.9):6.3f}s  e2e p90 {r.pct(r.e2e, 0.9):6.2f}s"
            f"  {len(r.e2e) / r.end:5.1f} req/s  prefix hits {r.hit_rate:4.0%}",
            end="",
        )
        assert len(r.e2e) == len(arrivals) and r.shed == 0  # every request completed
    print()
    if workload == "shared-prefix":
        assert results["gpu-aware"].hit_rate > results["envoy-least-request"].hit_rate


@pytest.mark.parametrize("rate", [30.0, 100.0, 130.0])
def test_bench_pick_quality_priorities(rate: float) -> None:
    """A third each of critical, standard and sheddable; sheddable is shed when saturated."""
    rng = random.Random(7)
    arrivals = [replace(a, priority=rng.choice((1, 0, -1))) for a in sharegpt(rate, rng)]
    now = [0.0]
    profiles = build_default_profiles(random.Random(1), clock_of(now))
    r = simulate(
        lambda priority: select_profile(profiles, "gpu-aware", priority),
        arrivals,
        now,
        SaturationDetector(),
    )
    line = "  ".join(
        f"{name} ttft p90 {r.pct(r.ttft_by_priority[p], 0.9):6.3f}s"
        for name, p in (("critical", 1), ("standard", 0), ("sheddable", -1))
    )
    print(f"\nsharegpt {rate:5.0f}/s gpu-aware + shedding: {line}  shed {r.shed}")
    sheddable = sum(a.priority < 0 for a in arrivals)
    assert len(r.e2e) + r.shed == len(arrivals) and r.shed <= sheddable
