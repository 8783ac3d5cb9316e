"""The GPU layer in virtual time: a GPU that throttles, a maintenance taint, a whole GPU beside
three MIG slices, scheduled by the gpu-aware profile on simulated engines (`epp.sim.engine`).

No sockets, no wall clock (the harness of test_bench_pick_quality): engines advance on a shared
virtual clock, every 50 ms a "scrape" copies their queue/KV, in-flight counts are exact, and each
endpoint's pace is measured from finished answers as the EPP's tracker measures it (moving
average, 0.2). The GPU layer's values reach the endpoint states the way the datastore builds
them: `Endpoint.capacity` and `device_health` (DRA), `GpuMetrics.health` (DCGM). A drained
endpoint is left out of the candidates, as `Datastore.ready` does.
Run: pytest -m bench -s -k gpu_layer
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from epp.admission.limits import BatchLimitLearner
from epp.hardware import HEALTH_DEGRADED, HEALTH_DRAIN, HEALTH_OK, capacity_of
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.registry import build_default_profiles
from epp.sim.engine import Engine, EngineConfig, Seq
from epp.sim.profiles import get_profile
from epp.types import Endpoint, EndpointMetrics, EndpointState, GpuMetrics
from tests.sim_hashes import block_hashes

pytestmark = pytest.mark.bench

SCRAPE_S = 0.05
SECONDS = 30.0
MODEL = "m"
PACE_SMOOTHING = 0.2


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    prompt: bytes
    prompt_tokens: int
    output_tokens: int


def sharegpt(rate: float, rng: random.Random, seconds: float = SECONDS) -> list[Arrival]:
    out, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        p = int(min(1500, max(8, rng.lognormvariate(5.3, 1.0))))
        o = int(min(800, max(4, rng.lognormvariate(5.0, 0.9))))
        out.append(Arrival(t, rng.randbytes(4 * p), p, o))
    return out


@dataclass
class Pod:
    engine: Engine
    endpoint: Endpoint
    gpu_health: str = HEALTH_OK
    tpot: float = 0.0
    limit: int = 0  # learned batch limit, as the datastore learns it
    flights: int = 0
    tokens: int = 0
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)
    step_end: float | None = None


# an event at a virtual time: (at, what it does to the pods)
Event = tuple[float, Callable[[list[Pod]], None]]


@dataclass(slots=True)
class Run:
    picks: list[tuple[float, int]]  # (time, pod index) of every pick
    e2e: list[float]
    arrived: list[float]  # the arrival of each request in `e2e`
    completed: int
    submitted: int
    in_flight_at: dict[float, int]  # requests on pod 0 when each event fired

    def share(self, pod: int, start: float, end: float) -> float:
        window = [k for t, k in self.picks if start <= t < end]
        return sum(k == pod for k in window) / len(window) if window else 0.0

    def p90(self, start: float = 0.0) -> float:
        ordered = sorted(e for e, at in zip(self.e2e, self.arrived, strict=True) if at >= start)
        return ordered[int(len(ordered) * 0.9)]


def simulate(pods: list[Pod], arrivals: list[Arrival], events: list[Event], seed: int = 1) -> Run:
    now = [0.0]
    scheduler = build_default_profiles(random.Random(seed), lambda: now[0])["gpu-aware"]
    learner = BatchLimitLearner()
    owner: dict[str, int] = {}
    seqs: list[Seq] = []
    picks: list[tuple[float, int]] = []
    pending = sorted(events, key=lambda e: e[0])
    in_flight_at: dict[float, int] = {}
    next_scrape, i, completed = 0.0, 0, 0
    while True:
        for pod in pods:
            if pod.step_end is None and (d := pod.engine.plan_step(now[0])) is not None:
                pod.step_end = now[0] + d
        steps = min((p.step_end for p in pods if p.step_end is not None), default=math.inf)
        arrival = arrivals[i].at if i < len(arrivals) else math.inf
        event = pending[0][0] if pending else math.inf
        if steps == arrival == math.inf:
            break
        now[0] = min(arrival, steps, next_scrape, event)
        if now[0] == event:
            at, act = pending.pop(0)
            in_flight_at[at] = pods[0].flights
            act(pods)
        elif now[0] == next_scrape:
            for pod in pods:
                e = pod.engine
                pod.metrics = EndpointMetrics(
                    len(e.waiting), len(e.running), e.kv.usage(), block_size=16,
                    num_gpu_blocks=e.kv.num_blocks, scraped_at=now[0],
                )  # fmt: skip
                pod.limit = learner.learn(pod.endpoint, pod.metrics, pod.limit) or pod.limit
            next_scrape += SCRAPE_S
        elif now[0] == steps:
            for pod in pods:
                if pod.step_end == steps:
                    pod.step_end = None
                    for seq in pod.engine.finish_step(now[0]):
                        if seq.finished_at is None:
                            continue
                        owner.pop(seq.rid)
                        pod.flights -= 1
                        pod.tokens -= seq.prompt_tokens
                        completed += 1
                        if seq.generated >= 2 and seq.first_token_at is not None:
                            sample = (seq.finished_at - seq.first_token_at) / (seq.generated - 1)
                            old = pod.tpot
                            pod.tpot = sample if not old else old + PACE_SMOOTHING * (sample - old)
        else:
            a = arrivals[i]
            i += 1
            states = [
                EndpointState(p.endpoint, p.metrics, GpuMetrics(health=p.gpu_health),
                              p.flights, p.tokens, limit=p.limit, tpot=p.tpot)
                for p in pods
                if p.endpoint.device_health != HEALTH_DRAIN
            ]  # fmt: skip
            request = SchedulingRequest(str(i), MODEL, 0, a.prompt_tokens, a.prompt)
            chosen = scheduler.schedule(request, states, 1)[0].endpoint
            k = next(j for j, p in enumerate(pods) if p.endpoint.address == chosen.address)
            seq = Seq(str(i), a.prompt_tokens, a.output_tokens,
                      block_hashes(a.prompt, a.prompt_tokens, 16, MODEL))  # fmt: skip
            pods[k].engine.submit(seq, now[0])
            seqs.append(seq)
            owner[seq.rid] = k
            pods[k].flights += 1
            pods[k].tokens += a.prompt_tokens
            picks.append((now[0], k))
    done = [s for s in seqs if s.finished_at is not None]
    e2e = [s.finished_at - s.arrival for s in done if s.finished_at is not None]
    return Run(picks, e2e, [s.arrival for s in done], completed, len(seqs), in_flight_at)


def a100s(n: int) -> list[Pod]:
    gpu = get_profile("A100-80G")
    return [
        Pod(Engine(EngineConfig(gpu, max_model_len=8192)),
            Endpoint(f"10.0.0.{k + 2}:8000", f"ns/p{k}", "ns/pool", capacity=1.0))
        for k in range(n)
    ]  # fmt: skip


# ShareGPT-like arrivals per second; four A100s sustain about 58 (`CAPACITY`), so this is an
# overload (~125 %) even while all are healthy: queues grow over the run
RATE = 72.0
T = 10.0  # when the fault happens
MIG_RATE = 16.0


def throttle(signal: bool) -> Event:
    def act(pods: list[Pod]) -> None:
        pods[0].engine.speed = 0.5
        if signal:
            pods[0].gpu_health = HEALTH_DEGRADED  # DCGM: thermal slowdown in the clock reasons

    return (T, act)


def test_bench_gpu_layer_throttling() -> None:
    arrivals = sharegpt(RATE, random.Random(7))
    healthy = simulate(a100s(4), arrivals, [])
    signalled = simulate(a100s(4), arrivals, [throttle(True)])
    blind = simulate(a100s(4), arrivals, [throttle(False)])
    print(
        f"\nthrottling: pod 0 at half speed from t={T:.0f}s, ShareGPT-like {RATE:.0f}/s on 4 A100s"
    )
    for name, r in (("all healthy", healthy), ("health signal", signalled),
                    ("no signal", blind)):  # fmt: skip
        print(
            f"  {name:14s} pod-0 share of new requests: before {r.share(0, 0, T):4.0%}"
            f"  first 2 s {r.share(0, T, T + 2):4.0%}  after {r.share(0, T + 2, SECONDS):4.0%}"
            f"   e2e p90 {r.p90():5.2f}s ({r.p90() / healthy.p90():4.2f}x healthy)"
        )
    for r in (healthy, signalled, blind):
        assert r.completed == r.submitted == len(arrivals)
    # the signal alone moves traffic in the first two seconds; without it, nothing does yet
    assert signalled.share(0, T, T + 2) < 0.85 * signalled.share(0, 0, T)
    assert blind.share(0, T, T + 2) > signalled.share(0, T, T + 2)
    # and it does not starve the throttled pod: it keeps about its half-speed share (1/7)
    assert signalled.share(0, T + 2, SECONDS) > 0.1


def test_bench_gpu_layer_maintenance_taint() -> None:
    arrivals = sharegpt(RATE * 0.75, random.Random(8))
    untaint_at = 20.0

    def taint(pods: list[Pod]) -> None:  # a NoSchedule taint on pod 0's device (DRA)
        p = pods[0]
        p.endpoint = Endpoint(p.endpoint.address, p.endpoint.pod, p.endpoint.pool,
                              capacity=1.0, device_health=HEALTH_DRAIN)  # fmt: skip

    def untaint(pods: list[Pod]) -> None:
        p = pods[0]
        p.endpoint = Endpoint(p.endpoint.address, p.endpoint.pod, p.endpoint.pool, capacity=1.0)

    r = simulate(a100s(4), arrivals, [(T, taint), (untaint_at, untaint)])
    during = [k for t, k in r.picks if T <= t < untaint_at]
    print(
        f"\nmaintenance taint on pod 0 from t={T:.0f}s to t={untaint_at:.0f}s: "
        f"{r.in_flight_at[T]} requests in flight on it finished, "
        f"{sum(k == 0 for k in during)} new ones reached it while tainted, "
        f"{r.submitted - r.completed} failed; pod-0 share before {r.share(0, 0, T):4.0%}, "
        f"after the taint is removed {r.share(0, untaint_at, SECONDS):4.0%}"
    )
    assert r.in_flight_at[T] > 0
    assert 0 not in during
    assert r.completed == r.submitted == len(arrivals)
    assert r.share(0, untaint_at, SECONDS) > 0.1


def mig_pool(priors: bool) -> list[Pod]:
    gpu = get_profile("A100-80G")
    whole = Pod(Engine(EngineConfig(gpu, max_model_len=8192)),
                Endpoint("10.0.0.2:8000", "ns/gpu", "ns/pool"))  # fmt: skip
    pods = [whole]
    for k in range(3):
        config = EngineConfig(gpu, speed=1 / 7, num_gpu_blocks=gpu.num_gpu_blocks // 7,
                              max_model_len=8192)  # fmt: skip
        capacity = capacity_of("NVIDIA A100-SXM4-80GB", "1g.10gb") / 1.31 if priors else 1.0
        pods.append(Pod(Engine(config),
                        Endpoint(f"10.0.0.{k + 3}:8000", f"ns/mig{k}", "ns/pool",
                                 capacity=capacity)))  # fmt: skip
    return pods


def test_bench_gpu_layer_mig_split() -> None:
    # one A100 and three 1g slices of another (1/7 of its speed and KV cache each): e2e p90
    # climbs steeply past ~17 req/s on this pool, so 16/s is about 90 % of what it sustains
    arrivals = sharegpt(MIG_RATE, random.Random(9))
    with_priors = simulate(mig_pool(True), arrivals, [])
    without = simulate(mig_pool(False), arrivals, [])
    want = [0.7, 0.1, 0.1, 0.1]
    print(f"\nwhole A100 + three 1g slices, capacity 7:1:1:1, {MIG_RATE:.0f} req/s")
    for name, r in (("priors", with_priors), ("no priors", without)):
        first = [r.share(k, 0, 2.0) for k in range(4)]
        whole = [r.share(k, 0, SECONDS) for k in range(4)]
        print(
            f"  {name:9s} first 2 s "
            + " ".join(f"{s:4.0%}" for s in first)
            + "   whole run "
            + " ".join(f"{s:4.0%}" for s in whole)
            + f"   e2e p90 {r.p90():5.2f}s"
        )
    # from the first request: the first 2 s, before answers have been measured (later the
    # measured paces and the time model decide, with or without priors alike)
    assert [with_priors.share(k, 0, 2.0) for k in range(4)] == pytest.approx(want, abs=0.1)
    assert without.share(0, 0, 2.0) < 0.5  # blind, the slices get a whole GPU's share at first


# What four simulated A100s sustain on these arrivals: healthy p90 e2e is the same over 90 s and
# 180 s runs up to 50 req/s (9.7 s at 40, 14.8 s at 50) and grows at 56 (20.1 s -> 21.4 s)
CAPACITY = 58.0


def test_bench_gpu_layer_throttling_by_load_and_length() -> None:
    """Is p90 <= 1.1x healthy reachable? One of four pods at half speed leaves 87.5 % of the
    pool: at 90 % demand the pool is overloaded and its queues grow with the run; at 80 % it
    is not, but every pod runs fuller batches. p90 e2e of the requests after the fault."""
    print(
        f"\nthrottling by load and run length: {CAPACITY:.0f} req/s sustained, pod 0 at half "
        f"speed from t={T:.0f}s; p90 e2e of requests after it (x healthy), pod-0 share after"
    )
    kinds = (("signal", [throttle(True)]), ("no signal", [throttle(False)]))
    for load in (0.8, 0.9):
        for seconds in (40.0, 120.0):
            arrivals = sharegpt(CAPACITY * load, random.Random(7), seconds)
            healthy = simulate(a100s(4), arrivals, [])
            base = healthy.p90(T)
            cells = [f"healthy {base:6.2f}s"]
            for name, events in kinds:
                r = simulate(a100s(4), arrivals, events)
                assert r.completed == len(arrivals)
                cells.append(f"{name} {r.p90(T):6.2f}s {r.p90(T) / base:4.2f}x "
                             f"{r.share(0, T + 2, seconds):4.0%}")  # fmt: skip
            print(f"  load {load:.0%} {seconds:4.0f}s: " + " | ".join(cells), flush=True)
