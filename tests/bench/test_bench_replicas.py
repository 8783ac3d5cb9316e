"""1 EPP replica vs 3 that share their in-flight counts vs 3 that share nothing, in virtual time.

The same simulated engines as test_bench_pick_quality (5 A100s and one at half speed, scraped
every 50 ms). Arrivals go round robin to the replicas, as Envoy spreads ext_proc streams. Each
replica has its own scheduler (its own gpu-aware profile, so its own approximate prefix index,
learned from its own picks) and its own in-flight counts. Sharing replicas see the others'
counts, and learn the others' picks into their prefix index and queued prefill, as `epp.peers`
delivers them: a change is sent `FLUSH_S` after it happens (the changes within that window
together) and arrives `NETWORK_S` later; "3 no prefill" shares counts and picks' blocks but not the
prefill they queued (as before commit 5204fb6), "3 counts only" shares in-flight counts but not
picks. Printed side by side: TTFT p50/p90, e2e p90, prefix-cache hit rate, and the pile-on: the
share of picks whose replica did not know of a request already on the pod it chose (how often
replicas fight over a pod with different views), with the requests missed per pick.
Run: pytest -m bench -s -k replicas
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.prefix_cache import PrefixCacheScorer
from epp.scheduling.registry import build_default_profiles
from epp.sim.engine import Engine, EngineConfig, Seq
from epp.sim.profiles import get_profile
from epp.types import Endpoint, EndpointMetrics, EndpointState
from tests.bench.test_bench_pick_quality import (
    MODEL,
    SCRAPE_S,
    SPEEDS,
    WORKLOADS,
    Arrival,
    Result,
    clock_of,
)
from tests.sim_hashes import block_hashes

pytestmark = pytest.mark.bench

FLUSH_S = 0.002  # PeerSettings.flush_delay
NETWORK_S = 0.0005  # one datagram between replicas (same zone)


@dataclass(slots=True)
class Quality:
    result: Result
    picks: int
    blind: int  # picks whose replica missed a request already on the chosen pod
    missed: int  # requests missed over all picks


def simulate(
    replicas: int,
    share: bool,
    arrivals: list[Arrival],
    share_picks: bool = True,
    share_prefill: bool = True,
) -> Quality:
    now = [0.0]
    profiles = [
        build_default_profiles(random.Random(1 + j), clock_of(now))["gpu-aware"]
        for j in range(replicas)
    ]
    scorers = [
        next(ws.scorer for ws in p.scorers if isinstance(ws.scorer, PrefixCacheScorer))
        for p in profiles
    ]
    # (address, hashes, prefill seconds) not yet told
    picks: list[list[tuple[str, list[int], float]]] = [[] for _ in range(replicas)]
    if share and share_picks:
        for j, scorer in enumerate(scorers):
            scorer.on_add = lambda address, hashes, prefill, j=j: picks[j].append(
                (address, hashes, prefill)
            )
    gpu = get_profile("A100-80G")
    engines = [Engine(EngineConfig(gpu, speed=s, max_model_len=8192)) for s in SPEEDS]
    n = len(engines)
    endpoints = [Endpoint(f"10.0.0.{k + 2}:8000", f"ns/p{k}", "ns/pool") for k in range(n)]
    metrics = [EndpointMetrics() for _ in engines]
    own = [[0] * n for _ in range(replicas)]  # replica → engine → its requests in flight
    own_tokens = [[0] * n for _ in range(replicas)]
    told = [([0] * n, [0] * n) for _ in range(replicas)]  # what each replica last told peers
    deliver: list[float | None] = [None] * replicas  # when its pending announcement lands
    step_end: list[float | None] = [None] * n
    owner: dict[str, tuple[int, int]] = {}
    seqs: list[Seq] = []
    next_scrape, i, picked, blind, missed = 0.0, 0, 0, 0, 0

    def changed(j: int) -> None:
        if share and deliver[j] is None:
            deliver[j] = now[0] + FLUSH_S + NETWORK_S

    while True:
        for k, engine in enumerate(engines):
            if step_end[k] is None and (d := engine.plan_step(now[0])) is not None:
                step_end[k] = now[0] + d
        steps = min((s for s in step_end if s is not None), default=math.inf)
        arrival = arrivals[i].at if i < len(arrivals) else math.inf
        told_at = min((d for d in deliver if d is not None), default=math.inf)
        if steps == arrival == math.inf:
            break
        now[0] = min(arrival, steps, next_scrape, told_at)
        if now[0] == next_scrape:
            for k, e in enumerate(engines):
                metrics[k] = EndpointMetrics(
                    len(e.waiting), len(e.running), e.kv.usage(), block_size=16,
                    num_gpu_blocks=e.kv.num_blocks, scraped_at=now[0],
                )  # fmt: skip
            next_scrape += SCRAPE_S
        elif now[0] == told_at:
            for j in range(replicas):
                if deliver[j] == told_at:
                    deliver[j] = None
                    told[j] = (list(own[j]), list(own_tokens[j]))
                    for address, hashes, prefill in picks[j]:
                        for other, scorer in enumerate(scorers):
                            if other != j:
                                scorer.index.add(address, hashes, now[0])
                                if share_prefill:
                                    scorer.prefill.add_seconds(address, prefill, now[0])
                    picks[j].clear()
        elif now[0] == steps:
            for k, engine in enumerate(engines):
                if step_end[k] == steps:
                    step_end[k] = None
                    for seq in engine.finish_step(now[0]):
                        if seq.finished_at is not None:
                            j, kk = owner.pop(seq.rid)
                            own[j][kk] -= 1
                            own_tokens[j][kk] -= seq.prompt_tokens
                            changed(j)
        else:
            a = arrivals[i]
            i += 1
            j = i % replicas  # Envoy's round robin over the replicas' streams
            flights = list(own[j])
            tokens = list(own_tokens[j])
            if share:
                for other in range(replicas):
                    if other != j:
                        for k in range(n):
                            flights[k] += told[other][0][k]
                            tokens[k] += told[other][1][k]
            states = [
                EndpointState(endpoints[k], metrics[k], in_flight=flights[k],
                              in_flight_tokens=tokens[k])
                for k in range(n)
            ]  # fmt: skip
            request = SchedulingRequest(str(i), MODEL, 0, a.prompt_tokens, a.prompt)
            k = endpoints.index(profiles[j].schedule(request, states, 1)[0].endpoint)
            truth = sum(own[r][k] for r in range(replicas))
            picked += 1
            if truth > flights[k]:
                blind += 1
                missed += truth - flights[k]
            seq = Seq(str(i), a.prompt_tokens, a.output_tokens,
                      block_hashes(a.prompt, a.prompt_tokens, 16, MODEL))  # fmt: skip
            engines[k].submit(seq, now[0])
            seqs.append(seq)
            owner[seq.rid] = (j, k)
            own[j][k] += 1
            own_tokens[j][k] += a.prompt_tokens
            changed(j)
    queries = sum(e.stats.prefix_queries for e in engines)
    hits = sum(e.stats.prefix_hits for e in engines)
    ttft = [s.first_token_at - s.arrival for s in seqs if s.first_token_at is not None]
    e2e = [s.finished_at - s.arrival for s in seqs if s.finished_at is not None]
    result = Result(ttft, e2e, now[0], hits / queries if queries else 0.0, {0: ttft}, 0)
    return Quality(result, picked, blind, missed)


# ~90 % of what the cluster sustains (test_bench_pick_quality's rates)
@pytest.mark.parametrize(("workload", "rate"), [("sharegpt", 100.0), ("shared-prefix", 25.0)])
def test_bench_replicas(workload: str, rate: float) -> None:
    arrivals = WORKLOADS[workload](rate, random.Random(7))
    runs = {
        "1 replica": simulate(1, True, arrivals),
        "3 sharing": simulate(3, True, arrivals),
        "3 no prefill": simulate(3, True, arrivals, share_prefill=False),
        "3 counts only": simulate(3, True, arrivals, share_picks=False),
        "3 alone": simulate(3, False, arrivals),
    }
    for name, q in runs.items():
        r = q.result
        print(
            f"\n{workload:13s} {rate:5.0f}/s {name:13s} ttft p50 {r.pct(r.ttft, 0.5):6.3f}s"
            f" p90 {r.pct(r.ttft, 0.9):6.3f}s  e2e p90 {r.pct(r.e2e, 0.9):6.2f}s"
            f"  prefix hits {r.hit_rate:4.0%}  pile-on {q.blind / q.picks:5.1%}"
            f" ({q.missed / q.picks:.2f} missed/pick)",
            end="",
        )
        assert len(r.e2e) == len(arrivals)
    print()
    one, shared, alone = runs["1 replica"], runs["3 sharing"], runs["3 alone"]
    assert one.blind == 0  # one replica knows all it sent
    assert shared.blind < alone.blind  # sharing is what keeps replicas off each other's pods
