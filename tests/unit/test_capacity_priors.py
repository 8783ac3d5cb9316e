"""Capacity priors and GPU health in scheduling: before a pace is measured, and after."""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from dataclasses import replace

import pytest

from epp.admission.limits import BatchLimitLearner
from epp.api.model import PodInfo, Pool, ResourceSet
from epp.datastore import Datastore, Lease
from epp.errors import NoEndpoints
from epp.hardware import HEALTH_DEGRADED, HEALTH_DRAIN, capacity_of
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.registry import build_default_profiles
from epp.scheduling.snapshot import Snapshot
from epp.top import format_table
from epp.types import Endpoint, EndpointMetrics, EndpointState, GpuMetrics

MIG = capacity_of("nvidia-a100", "1g.5gb")
POOL = "default/p"


def state(name: str, capacity: float = 1.0, tpot: float = 0.0, health: str = "ok") -> EndpointState:
    ep = Endpoint(f"{name}:8000", name, POOL, capacity=capacity, device_health=health)
    return EndpointState(ep, EndpointMetrics(scraped_at=time.monotonic()), tpot=tpot)


def store_of(capacities: list[float], max_num_seqs: int | None = None) -> Datastore:
    store = Datastore(BatchLimitLearner())
    pool = Pool("default", "p", (("app", "p"),), (8000,))
    pods = tuple(
        PodInfo("default", f"p{i}", (("app", "p"),), f"10.0.0.{i + 1}", True,
                capacity=c, max_num_seqs=max_num_seqs)
        for i, c in enumerate(capacities)
    )  # fmt: skip
    store.apply_resources(ResourceSet((pool,), (), pods))
    for s in store.candidates(POOL):
        store.set_metrics(s.address, EndpointMetrics(scraped_at=time.monotonic()))
    return store


def picks(store: Datastore, profile: str, n: int, held: int | None) -> list[int]:
    """Schedules `n` requests, each holding its lease until `held` newer ones are out."""
    chosen = build_default_profiles(random.Random(1))[profile]
    counts: Counter[str] = Counter()
    leases: deque[Lease] = deque()
    for i in range(n):
        request = SchedulingRequest(f"r{i}", "m", prompt=f"q{i} ".encode() * 20)
        picked = chosen.schedule(request, store.ready(POOL))[0]
        counts[picked.address] += 1
        leases.append(store.lease(picked.address, 50))
        if held is not None and len(leases) > held:
            leases.popleft().release()
    return [counts[f"10.0.0.{i + 1}:8000"] for i in range(len(store.candidates(POOL)))]


def test_uniform_pools_read_paces_exactly_as_measured() -> None:
    snap = Snapshot([state("a", tpot=0.02), state("b", tpot=0.04), state("c")])
    assert not snap.priors_matter
    assert snap.filled_tpot == [0.02, 0.04, pytest.approx(0.03)]
    assert snap.relative_pace == [1.0, 2.0, 1.0]
    assert snap.fastest_tpot == 0.02
    assert Snapshot([state("a"), state("b")]).fastest_tpot == 0.0


def test_capacity_sets_relative_pace_before_any_measurement() -> None:
    snap = Snapshot([state("gpu"), state("mig1", MIG), state("mig2", MIG)])
    assert snap.priors_matter
    assert snap.relative_pace == pytest.approx([1.0, 7.0, 7.0])
    assert snap.filled_tpot[1] == pytest.approx(7 * snap.filled_tpot[0])
    assert snap.fastest_tpot > 0.0


def test_a_measured_pace_refines_the_unmeasured_priors() -> None:
    # a 1/7 slice beside its measured whole GPU: seven times slower for load-first scoring,
    # but the time model tries it at the measured mean (the loaded GPU's pace over 1/7
    # would overstate an idle slice's and it would never be measured)
    snap = Snapshot([state("gpu", tpot=0.01), state("mig", MIG)])
    assert snap.relative_pace == pytest.approx([1.0, 7.0])
    assert snap.filled_tpot == pytest.approx([0.01, 0.01])
    measured = Snapshot([state("gpu", tpot=0.01), state("mig", MIG, tpot=0.05)])
    assert measured.filled_tpot == pytest.approx([0.01, 0.05])
    # an unmeasured GPU the prior calls faster is taken at its prior: an H100 beside an A100
    faster = Snapshot([state("a100", tpot=0.02), state("h100", capacity_of("nvidia-h100-80gb"))])
    assert faster.filled_tpot == pytest.approx([0.02, 0.02 / 2.15])


def test_a_degraded_gpu_is_slower_at_once_even_where_its_pace_was_measured() -> None:
    healthy = [state(n, tpot=0.02) for n in "abc"]
    snap = Snapshot([*healthy, state("hot", tpot=0.02, health=HEALTH_DEGRADED)])
    assert snap.relative_pace == pytest.approx([1.0, 1.0, 1.0, 2.0])
    # once its measured pace shows more than the assumed slowdown, the measurement wins
    slower = Snapshot([*healthy, state("hot", tpot=0.08, health=HEALTH_DEGRADED)])
    assert slower.relative_pace[3] == pytest.approx(4.0)


def test_a_degraded_gpu_holding_less_than_the_others_is_read_as_measured() -> None:
    # its batch shrank, so its measured pace is what it does now: no floor starves it
    busy = [replace(state(n, tpot=0.02), in_flight=8) for n in "abc"]
    hot = replace(state("hot", tpot=0.025, health=HEALTH_DEGRADED), in_flight=2)
    assert Snapshot([*busy, hot]).relative_pace == pytest.approx([1.0, 1.0, 1.0, 1.25])
    full = replace(hot, in_flight=8)  # as loaded as the others: at least twice their pace
    assert Snapshot([*busy, full]).relative_pace == pytest.approx([1.0, 1.0, 1.0, 2.0])


def test_a_drained_gpu_gets_no_new_request_and_its_leases_finish() -> None:
    store = store_of([1.0, 1.0])
    labels = (("app", "p"),)
    drained = PodInfo("default", "p0", labels, "10.0.0.1", True, device_health=HEALTH_DRAIN)
    lease = store.lease("10.0.0.1:8000", 10)
    pods = (drained, PodInfo("default", "p1", labels, "10.0.0.2", True))
    store.apply_resources(ResourceSet((Pool("default", "p", labels, (8000,)),), (), pods))
    assert [s.address for s in store.ready(POOL)] == ["10.0.0.2:8000"]
    assert store.in_flight("10.0.0.1:8000") == 1  # the in-flight request is still counted
    lease.release()
    assert store.in_flight("10.0.0.1:8000") == 0
    store.set_gpu("default/p1", GpuMetrics(health=HEALTH_DRAIN))
    with pytest.raises(NoEndpoints):
        store.ready(POOL)


def test_a_whole_gpu_and_three_mig_slices_split_by_capacity_from_the_first_request() -> None:
    # load-first profiles: 7:1:1:1 at once, with nothing measured
    assert picks(store_of([1.0, MIG, MIG, MIG]), "critical", 100, None) == [70, 10, 10, 10]
    # gpu-aware under sustained load (150 requests out over batches of 16): 7:1:1:1 within 10 %
    counts = picks(store_of([1.0, MIG, MIG, MIG], max_num_seqs=16), "gpu-aware", 1000, 150)
    shares = [c / sum(counts) for c in counts]
    assert shares == pytest.approx([0.7, 0.1, 0.1, 0.1], rel=0.1)


def test_epp_top_shows_capacity_and_gpu_health() -> None:
    rows = [
        {"pool": POOL, "address": "a:8000", "healthy": True, "capacity": 1.0, "gpu_health": "ok"},
        {"pool": POOL, "address": "b:8000", "healthy": True, "capacity": MIG,
         "gpu_health": HEALTH_DRAIN},
        {"pool": POOL, "address": "c:8000", "healthy": False, "capacity": 2.15},
    ]  # fmt: skip
    lines = format_table(rows).splitlines()
    assert lines[0].split()[2:4] == ["HEALTH", "CAP"]
    assert [line.split()[2:4] for line in lines[1:]] == [
        ["ok", "1.00"],
        ["drain", "0.14"],
        ["DOWN", "2.15"],
    ]
