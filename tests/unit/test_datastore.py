from __future__ import annotations

from epp.api.model import ResourceSet
from epp.datastore import Datastore, endpoints_of
from epp.types import GpuMetrics
from tests.factories import fresh, model, pod, pool


def store_with(*pods: object) -> Datastore:
    store = Datastore()
    store.apply_resources(ResourceSet((pool(),), (model(),), tuple(pods)))  # type: ignore[arg-type]
    return store


def test_endpoints_are_ready_selected_pods_with_an_ip_once_per_port() -> None:
    p = pool()
    pods = [
        pod("a", "10.0.0.1"),
        pod("b", "10.0.0.2", ready=False),
        pod("c", "fd00::3"),
        pod("d", "10.0.0.4", pool_name="other"),
    ]
    assert [e.address for e in endpoints_of(p, pods)] == ["10.0.0.1:8000", "[fd00::3]:8000"]


def test_gpu_metrics_reach_endpoints_by_pod_key_or_bare_name() -> None:
    store = store_with(pod("a", "10.0.0.1"), pod("b", "10.0.0.2"))
    store.set_gpu("default/a", GpuMetrics(utilization=75.0))
    store.set_gpu("b", GpuMetrics(utilization=20.0))
    gpu = {s.address: s.gpu.utilization for s in store.candidates("default/llama2-gpu-pool")}
    assert gpu == {"10.0.0.1:8000": 75.0, "10.0.0.2:8000": 20.0}


def test_signals_survive_a_resource_update_and_gone_endpoints_are_forgotten() -> None:
    store = store_with(pod("a", "10.0.0.1"), pod("b", "10.0.0.2"))
    store.set_metrics("10.0.0.1:8000", fresh(waiting=7))
    lease = store.lease("10.0.0.1:8000", 100)
    store.apply_resources(ResourceSet((pool(),), (model(),), (pod("a", "10.0.0.1"),)))
    (state,) = store.candidates("default/llama2-gpu-pool")
    assert state.metrics.waiting == 7 and state.in_flight == 1 and state.in_flight_tokens == 100
    lease.release()
    lease.release()
    assert store.candidates("default/llama2-gpu-pool")[0].in_flight == 0


def test_snapshot_tuple_is_stable_until_something_changes() -> None:
    store = store_with(pod("a", "10.0.0.1"))
    first = store.candidates("default/llama2-gpu-pool")
    assert store.candidates("default/llama2-gpu-pool") is first
    store.set_metrics("10.0.0.1:8000", fresh(waiting=1))
    second = store.candidates("default/llama2-gpu-pool")
    assert second is not first and first[0].metrics.waiting == 0  # the old one never changes
