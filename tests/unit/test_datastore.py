from __future__ import annotations

from dataclasses import fields, replace

import pytest

from epp.api.model import PodInfo, ResourceSet
from epp.datastore import Datastore, endpoints_of
from epp.types import EndpointState, GpuMetrics
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


def test_an_engines_inter_token_latency_counters_become_its_pace() -> None:
    store = store_with(pod("a", "10.0.0.1"))
    address = "10.0.0.1:8000"

    def scrape(seconds: float, tokens: float) -> float:
        store.set_metrics(address, replace(fresh(), itl_seconds=seconds, itl_count=tokens))
        return store.candidates("default/llama2-gpu-pool")[0].tpot

    assert not store.engine_paced(address)
    assert scrape(50.0, 1000) == 0.0  # the first page is only where counting starts
    assert store.engine_paced(address)  # from now on responses need not be read for it
    assert scrape(50.2, 1010) == 0.0  # 10 tokens: too few to tell
    assert scrape(50.9, 1024) == pytest.approx(0.9 / 24)  # first sample as soon as 24 tokens
    assert scrape(52.0, 1124) == pytest.approx(0.9 / 24)  # later ones every 128 tokens
    assert scrape(54.5, 1152) == pytest.approx(0.9 / 24 + 0.2 * (3.6 / 128 - 0.9 / 24))
    assert scrape(0.1, 5) == pytest.approx(0.9 / 24 + 0.2 * (3.6 / 128 - 0.9 / 24))  # restarted
    store.set_metrics(address, fresh())  # an engine without the histogram: pace as it was
    assert store.candidates("default/llama2-gpu-pool")[0].tpot > 0


def test_pools_that_share_a_pod_share_its_scrape_and_its_leases() -> None:
    store = Datastore()
    a, b = pool("a"), pool("b")
    shared = PodInfo("default", "shared", (("app", "a"), ("app2", "b")), "10.0.0.5", True)
    b = replace(b, selector=(("app2", "b"),))
    store.apply_resources(ResourceSet((a, b), (model(pool_name="a"),), (shared,)))
    address = "10.0.0.5:8000"
    store.set_metrics(address, fresh(waiting=4))  # one scrape, one parse
    store.lease(address, 10)
    for key in ("default/a", "default/b"):
        (state,) = store.candidates(key)
        assert (state.metrics.waiting, state.in_flight) == (4, 1), key


def test_peer_in_flight_adds_to_own_and_is_replaced_whole() -> None:
    store = store_with(pod("a", "10.0.0.1"), pod("b", "10.0.0.2"))
    woken: list[str] = []
    shared: list[dict[str, tuple[int, int]]] = []
    store.add_listener(woken.append)
    store.add_in_flight_listener(lambda: shared.append(store.own_in_flight()))
    lease = store.lease("10.0.0.1:8000", 100)
    assert shared[-1] == {"10.0.0.1:8000": (1, 100)}
    store.set_peer_in_flight({"10.0.0.1:8000": (2, 50), "10.0.0.2:8000": (3, 30)})
    flights = {
        s.address: (s.in_flight, s.in_flight_tokens)
        for s in store.candidates("default/llama2-gpu-pool")
    }
    assert flights == {"10.0.0.1:8000": (3, 150), "10.0.0.2:8000": (3, 30)}
    assert store.own_in_flight() == {"10.0.0.1:8000": (1, 100)}  # peers' never re-shared
    woken.clear()
    store.set_peer_in_flight({"10.0.0.1:8000": (1, 20)})  # b's peer requests ended
    flights = {s.address: s.in_flight for s in store.candidates("default/llama2-gpu-pool")}
    assert flights == {"10.0.0.1:8000": 2, "10.0.0.2:8000": 0}
    assert set(woken) == {"default/llama2-gpu-pool"}
    lease.release()
    assert shared[-1] == {}
    assert store.candidates("default/llama2-gpu-pool")[0].in_flight == 1  # the peer's remains
    store.set_peer_in_flight({"10.9.9.9:8000": (5, 5)})  # not an endpoint here: ignored
    assert [s.in_flight for s in store.candidates("default/llama2-gpu-pool")] == [0, 0]


def test_a_lease_that_ends_frees_its_slot_before_the_next_scrape() -> None:
    """The scraped total counts requests the EPP has since ended (or not yet counted ones it
    started): load is that total moved by the EPP's own changes since the scrape."""
    store = store_with(pod("a", "10.0.0.1"))
    address = "10.0.0.1:8000"
    leases = [store.lease(address, 10) for _ in range(3)]
    store.set_metrics(address, fresh(running=5))  # two from another gateway, say
    (state,) = store.candidates("default/llama2-gpu-pool")
    assert state.load == 5
    leases[0].release()
    (state,) = store.candidates("default/llama2-gpu-pool")
    assert (state.in_flight, state.load) == (2, 4)
    more = store.lease(address, 10)
    (state,) = store.candidates("default/llama2-gpu-pool")
    assert state.load == 5
    more.release()
    leases[1].release()
    leases[2].release()
    store.set_metrics(address, fresh(running=0))  # and a scrape that already missed ours
    (state,) = store.candidates("default/llama2-gpu-pool")
    assert state.load == 0
    again = store.lease(address, 10)
    (state,) = store.candidates("default/llama2-gpu-pool")
    assert state.load == 1
    again.release()


IN_FLIGHT_FIELDS = {
    "in_flight",
    "in_flight_tokens",
    "in_flight_since_scrape",
    "tokens_since_scrape",
}


def test_a_lease_and_its_release_keep_every_other_field_of_the_state() -> None:
    """Leases rebuild the state positionally (cheaper than `replace`): a field added to
    `EndpointState` must be added there too, or each lease would reset it."""
    assert [f.name for f in fields(EndpointState)] == [
        "endpoint",
        "metrics",
        "gpu",
        "in_flight",
        "in_flight_tokens",
        "healthy",
        "limit",
        "tpot",
        "prefill_pace",
        "in_flight_since_scrape",
        "tpot_spread",
        "tokens_since_scrape",
        "cache_hit",
    ], "a new EndpointState field: copy it in Datastore._set_in_flight"
    store = store_with(pod("a", "10.0.0.1"))
    address, pool_key = "10.0.0.1:8000", "default/llama2-gpu-pool"
    store.set_metrics(address, fresh(running=3, waiting=1))
    store.set_gpu("default/a", GpuMetrics(utilization=60.0))
    store.set_health(address, False)
    store.record_tokens(address, 1.0, 101)
    (before,) = store.candidates(pool_key)
    lease = store.lease(address, 40)
    (leased,) = store.candidates(pool_key)
    assert (
        leased.in_flight,
        leased.in_flight_tokens,
        leased.in_flight_since_scrape,
        leased.tokens_since_scrape,
    ) == (1, 40, 1, 40)
    lease.release()
    (after,) = store.candidates(pool_key)
    assert after == before and after is not before
    for f in fields(EndpointState):
        if f.name not in IN_FLIGHT_FIELDS:
            assert getattr(leased, f.name) is getattr(before, f.name), f.name


def test_load_changes_count_every_start_and_end_of_own_and_peer_requests() -> None:
    store = store_with(pod("a", "10.0.0.1"), pod("b", "10.0.0.2"))
    a, b = "10.0.0.1:8000", "10.0.0.2:8000"
    assert (store.load_changes(a), store.load_changes(b)) == (0, 0)
    lease = store.lease(a, 10)
    store.set_metrics(a, fresh(running=1))  # a scrape is not a change the EPP made
    assert (store.load_changes(a), store.load_changes(b)) == (1, 0)
    lease.release()
    lease.release()  # released once: counted once
    assert store.load_changes(a) == 2
    store.set_peer_in_flight({b: (1, 5)})
    store.set_peer_in_flight({b: (1, 5)})  # the same figures: no change
    assert (store.load_changes(a), store.load_changes(b)) == (2, 1)
    store.lease("10.9.9.9:8000", 1).release()  # not an endpoint here: nothing kept
    assert store.load_changes("10.9.9.9:8000") == 0


def test_flights_count_own_and_peer_requests_in_flight() -> None:
    store = store_with(pod("a", "10.0.0.1"), pod("b", "10.0.0.2"))
    a, b = "10.0.0.1:8000", "10.0.0.2:8000"
    lease = store.lease(a, 10)
    store.set_peer_in_flight({a: (2, 5), b: (1, 5)})
    assert (store.flights(a), store.flights(b)) == (3, 1)
    lease.release()
    store.set_peer_in_flight({})
    assert (store.flights(a), store.flights(b)) == (0, 0)
