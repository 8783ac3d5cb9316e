"""Pick latency of the default profile over 8..1,024 endpoints: prints p50/p99, asserts no time.

Goal from issue 7: p99 <= 100 us at 64 endpoints and <= 1 ms at 1,024. The snapshot is
realistic: fresh metrics with varied load, a warm prefix index, and prompts that share system
prompts, so the prefix scorer and its load gate do real work. Run: pytest -m bench -s -k pick
"""

from __future__ import annotations

import gc
import random
import time

import pytest

from epp.scheduling.base import SchedulingRequest
from epp.scheduling.registry import DEFAULT_PROFILE, build_default_profiles
from epp.scheduling.saturation import SaturationDetector
from epp.types import Endpoint, EndpointMetrics, EndpointState

pytestmark = pytest.mark.bench


def snapshot(n: int, rng: random.Random, now: float) -> list[EndpointState]:
    return [
        EndpointState(
            Endpoint(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:8000", f"ns/pod-{i}", "ns/pool"),
            EndpointMetrics(
                waiting=rng.randrange(8),
                running=rng.randrange(32),
                kv_usage=rng.random(),
                scraped_at=now - rng.random() * 0.1,
            ),
            in_flight=rng.randrange(40),
            in_flight_tokens=rng.randrange(40_000),
            limit=rng.choice((0, 16, 32)),  # learned batch limits, some not yet
            tpot=rng.choice((0.0, rng.uniform(0.02, 0.05))),  # measured paces, some not yet
        )
        for i in range(n)
    ]


def prompts(rng: random.Random) -> list[bytes]:
    systems = [(f"You are assistant {k}. " * 120).encode() for k in range(16)]
    return [s + b"user question %d" % rng.randrange(10**6) for s in systems for _ in range(8)]


def pct(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(len(sorted_ns) * q))] / 1000.0


@pytest.mark.parametrize("n", [8, 64, 256, 1024])
def test_bench_pick_default_profile(n: int) -> None:
    rng = random.Random(n)
    now = time.monotonic()
    profile = build_default_profiles(random.Random(1), lambda: now)[DEFAULT_PROFILE]
    states = snapshot(n, rng, now)
    texts = prompts(rng)
    for i, text in enumerate(texts):  # warm the prefix index
        profile.schedule(SchedulingRequest(f"w{i}", "m", prompt=text), states)
    rounds = 3000 if n <= 256 else 1000
    requests = [
        SchedulingRequest(
            str(i),
            "m",
            prompt_tokens=600,
            prompt=texts[i % len(texts)],
            max_output_tokens=rng.choice((None, rng.randrange(1, 1024))),
        )
        for i in range(rounds)
    ]
    timings: list[int] = []
    picked: set[str] = set()
    gc.collect()
    clock = time.perf_counter_ns
    for request in requests:
        start = clock()
        chosen = profile.schedule(request, states)
        timings.append(clock() - start)
        picked.add(chosen[0].address)
    timings.sort()
    print(
        f"\npick gpu-aware n={n:5d}: p50 {pct(timings, 0.5):8.1f} us"
        f"  p99 {pct(timings, 0.99):8.1f} us  max {timings[-1] / 1000:8.1f} us  ({rounds} picks)"
    )
    addresses = {s.address for s in states}
    assert picked <= addresses and picked


@pytest.mark.parametrize("n", [64, 1024])
def test_bench_saturation_detector(n: int) -> None:
    now = time.monotonic()
    states = snapshot(n, random.Random(n), now)
    detector = SaturationDetector(staleness=1.0)
    timings = []
    for _ in range(1000):
        start = time.perf_counter_ns()
        level = detector.saturation(states, now)
        timings.append(time.perf_counter_ns() - start)
    timings.sort()
    print(
        f"\nsaturation n={n:5d}: p50 {pct(timings, 0.5):8.1f} us  p99 {pct(timings, 0.99):8.1f} us"
    )
    assert level > 0.0
