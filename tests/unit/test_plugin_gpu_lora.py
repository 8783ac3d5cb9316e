"""GPU-utilization scorer/filter against model ceilings; LoRA-affinity scorer/filter."""

from __future__ import annotations

import random

import pytest

from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.gpu_utilization import GpuUtilizationFilter, GpuUtilizationScorer
from epp.scheduling.plugins.lora_affinity import LoraAffinityFilter, LoraAffinityScorer
from epp.types import Endpoint, EndpointMetrics, EndpointState, GpuMetrics

NOW = 1000.0


def clock() -> float:
    return NOW


def gpu_ep(
    address: str, util: float | None, mem: float | None = None, age: float = 1.0
) -> EndpointState:
    return EndpointState(
        Endpoint(address, address, "ns/pool"),
        EndpointMetrics(scraped_at=NOW),
        GpuMetrics(util, mem, NOW - age),
    )


def lora_ep(
    address: str, active: tuple[str, ...] = (), waiting: tuple[str, ...] = (), max_lora: int = 2
) -> EndpointState:
    metrics = EndpointMetrics(
        max_lora=max_lora,
        lora_active=frozenset(active),
        lora_waiting=frozenset(waiting),
        scraped_at=NOW,
    )
    return EndpointState(Endpoint(address, address, "ns/pool"), metrics)


GPU80 = SchedulingRequest("r", "m", ceilings=(("gpu_utilization", 80.0),))


def test_gpu_scorer_is_headroom_under_ceiling() -> None:
    states = [gpu_ep("a", 20.0), gpu_ep("b", 60.0), gpu_ep("c", 95.0)]
    assert GpuUtilizationScorer(clock=clock).score(GPU80, states) == pytest.approx(
        [0.75, 0.25, 0.0]
    )


def test_gpu_scorer_without_ceiling_uses_full_scale() -> None:
    plain = SchedulingRequest("r", "m")
    states = [gpu_ep("a", 20.0), gpu_ep("b", 100.0)]
    assert GpuUtilizationScorer(clock=clock).score(plain, states) == pytest.approx([0.8, 0.0])


def test_gpu_scorer_tightest_ceiling_wins() -> None:
    both = SchedulingRequest(
        "r", "m", ceilings=(("gpu_utilization", 80.0), ("memory_utilization", 50.0))
    )
    states = [gpu_ep("a", 40.0, mem=0.45)]  # gpu room 0.5, memory room 0.1
    assert GpuUtilizationScorer(clock=clock).score(both, states) == pytest.approx([0.1])


def test_gpu_unknown_or_stale_is_neutral() -> None:
    states = [gpu_ep("a", None), gpu_ep("b", 10.0, age=120.0), gpu_ep("c", 40.0)]
    assert GpuUtilizationScorer(clock=clock).score(GPU80, states) == pytest.approx([0.5, 0.5, 0.5])
    none_known = [gpu_ep("a", None), gpu_ep("b", None)]
    assert GpuUtilizationScorer(clock=clock).score(GPU80, none_known) == [0.5, 0.5]


def test_gpu_filter_drops_pods_over_ceiling_keeps_unknown() -> None:
    states = [gpu_ep("a", 85.0), gpu_ep("b", 50.0), gpu_ep("c", None)]
    kept = GpuUtilizationFilter(clock=clock).filter(GPU80, states)
    assert [s.address for s in kept] == ["b", "c"]


def test_gpu_filter_without_ceilings_keeps_all() -> None:
    states = [gpu_ep("a", 99.0)]
    assert (
        list(GpuUtilizationFilter(clock=clock).filter(SchedulingRequest("r", "m"), states))
        == states
    )


def test_lora_scorer_upstream_values() -> None:
    req = SchedulingRequest("r", "m", lora_adapter="sql")
    states = [
        lora_ep("active", active=("sql", "x")),
        lora_ep("free", active=("x",)),
        lora_ep("waiting", active=("x",), waiting=("sql",)),
        lora_ep("full", active=("x", "y")),
    ]
    assert LoraAffinityScorer().score(req, states) == [1.0, 0.8, 0.6, 0.0]


def test_lora_scorer_neutral_for_base_model() -> None:
    states = [lora_ep("a", active=("x",)), lora_ep("b")]
    assert LoraAffinityScorer().score(SchedulingRequest("r", "m"), states) == [1.0, 1.0]


def test_lora_filter_prefers_affinity_then_free_slots() -> None:
    req = SchedulingRequest("r", "m", lora_adapter="sql")
    active, free, full = (
        lora_ep("a", active=("sql", "x")),
        lora_ep("f"),
        lora_ep("u", active=("x", "y")),
    )
    flt = LoraAffinityFilter(threshold=1.0, rng=random.Random(1))
    assert list(flt.filter(req, [active, free, full])) == [active]
    assert list(flt.filter(req, [free, full])) == [free]
    assert list(flt.filter(req, [full])) == [full]  # nothing fits: all kept


def test_lora_filter_escape_probability() -> None:
    req = SchedulingRequest("r", "m", lora_adapter="sql")
    active, free = lora_ep("a", active=("sql",)), lora_ep("f")
    flt = LoraAffinityFilter(threshold=0.9, rng=random.Random(7))
    escapes = sum(list(flt.filter(req, [active, free])) == [free] for _ in range(2000))
    assert 120 < escapes < 280  # ~10 %
