from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from epp.api.model import PRIORITY_CRITICAL, PRIORITY_SHEDDABLE, SplitTarget
from epp.datastore import Datastore
from epp.errors import BadRequest, ModelNotFound, NoEndpoints, RequestTooLarge, Shed
from epp.settings import ProtocolSettings
from tests.factories import SERVED, director, fresh, model, pool, seed_store

CHAT = orjson.dumps({"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "empty"),
        (b'{"messages": []}', "model not found in request body"),
        (b'{"model": 7}', "non-empty string"),
        (b'{"model": ""}', "non-empty string"),
    ],
)
async def test_bad_bodies_are_400_with_a_message(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message) as info:
        await director(seed_store()).handle({}, body)
    assert info.value.status == 400


async def test_body_over_the_limit_is_413() -> None:
    d = director(seed_store(), protocol=ProtocolSettings(max_body_bytes=10))
    with pytest.raises(RequestTooLarge):
        await d.handle({}, CHAT)


async def test_model_is_rewritten_to_the_served_name_only_when_it_differs() -> None:
    d = director(seed_store())
    decision = await d.handle({"x-request-id": "r1"}, CHAT)
    assert decision.target_model == SERVED
    assert orjson.loads(decision.body)["model"] == SERVED
    assert decision.request_id == "r1"
    served_body = orjson.dumps({"model": SERVED, "messages": []})
    assert (await d.handle({}, served_body)).body is served_body  # not re-serialized


async def test_least_loaded_endpoint_wins_and_in_flight_counts_at_once() -> None:
    store = seed_store()
    store.set_metrics("127.0.0.2:8000", fresh(waiting=9, kv=0.9))
    store.set_metrics("127.0.0.3:8000", fresh(waiting=0, kv=0.1))
    store.set_metrics("127.0.0.4:8000", fresh(waiting=4, kv=0.5))
    d = director(store)
    first = await d.handle({}, CHAT)
    assert first.endpoints == ("127.0.0.3:8000",)
    assert store.in_flight("127.0.0.3:8000") == 1
    first.lease.release()
    first.lease.release()  # idempotent
    assert store.in_flight("127.0.0.3:8000") == 0


async def test_burst_spreads_by_in_flight_before_metrics_catch_up() -> None:
    store = seed_store()
    for address in ("127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000"):
        store.set_metrics(address, fresh())
    d = director(store)
    picks = [(await d.handle({}, CHAT)).endpoints[0] for _ in range(9)]
    assert sorted(picks.count(a) for a in set(picks)) == [3, 3, 3]


async def test_unknown_model_is_404_unless_passed_on_or_the_pool_serves_anything() -> None:
    store = seed_store()
    other = orjson.dumps({"model": "someone-else", "prompt": "x"})
    with pytest.raises(ModelNotFound) as info:
        await director(store).handle({}, other)
    assert info.value.status == 404 and "someone-else" in info.value.message
    passing = director(store, protocol=ProtocolSettings(pass_unknown_models=True))
    assert (await passing.handle({}, other)).pool == "default/llama2-gpu-pool"
    served = orjson.dumps({"model": "meta-llama/Llama-2-7b-chat-hf", "prompt": "x"})
    assert (await director(store).handle({}, served)).pool == "default/llama2-gpu-pool"
    strict = director(store, protocol=ProtocolSettings(require_registered_models=True))
    with pytest.raises(ModelNotFound):
        await strict.handle({}, served)


async def test_canary_split_lands_within_one_point_of_its_weight() -> None:
    store = Datastore()
    from epp.api.model import ResourceSet
    from tests.factories import pod

    splits = (
        SplitTarget(90, "default/llama2-gpu-pool", version="stable"),
        SplitTarget(10, "default/canary", version="canary"),
    )
    store.apply_resources(
        ResourceSet(
            (pool(), pool("canary")),
            (model(splits=splits),),
            (pod("a", "127.0.0.2"), pod("b", "127.0.0.3", "canary")),
        )
    )
    d = director(store, seed=7)
    versions = []
    for _ in range(10_000):
        decision = await d.handle({}, CHAT)
        versions.append(decision.version)
        decision.lease.release()
    share = versions.count("canary") / len(versions)
    assert 0.09 <= share <= 0.11
    assert {(await d.handle({}, CHAT)).pool for _ in range(200)} == {
        "default/llama2-gpu-pool",
        "default/canary",
    }


async def test_sheddable_is_shed_when_saturated_but_critical_is_not() -> None:
    for priority, shed in ((PRIORITY_SHEDDABLE, True), (PRIORITY_CRITICAL, False)):
        store = seed_store(models=(model(priority=priority),))
        for address in ("127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000"):
            store.set_metrics(address, fresh(waiting=50, kv=0.95))
        d = director(store)
        if shed:
            with pytest.raises(Shed) as info:
                await d.handle({}, CHAT)
            assert info.value.status == 429
        else:
            assert (await d.handle({}, CHAT)).endpoints


async def test_sheddable_is_admitted_when_one_pod_has_room() -> None:
    store = seed_store(models=(model(priority=PRIORITY_SHEDDABLE),))
    store.set_metrics("127.0.0.2:8000", fresh(waiting=50, kv=0.95))
    store.set_metrics("127.0.0.3:8000", fresh(waiting=1, kv=0.2))
    store.set_metrics("127.0.0.4:8000", fresh(waiting=30, kv=0.9))
    assert (await director(store).handle({}, CHAT)).endpoints == ("127.0.0.3:8000",)


async def test_subset_hint_limits_the_choice_and_empty_match_is_503() -> None:
    d = director(seed_store())
    for _ in range(20):
        decision = await d.handle({}, CHAT, subset=["127.0.0.4:8000"])
        assert decision.endpoints == ("127.0.0.4:8000",)
        decision.lease.release()
    assert (await d.handle({}, CHAT, subset=["127.0.0.3"])).endpoints == ("127.0.0.3:8000",)
    with pytest.raises(NoEndpoints) as info:
        await d.handle({}, CHAT, subset=["10.9.9.9:8000"])
    assert info.value.status == 503
    with pytest.raises(NoEndpoints):
        await d.handle({}, CHAT, subset=[])


async def test_unhealthy_endpoints_are_skipped_and_none_left_is_503() -> None:
    store = seed_store()
    store.set_health("127.0.0.2:8000", False)
    store.set_health("127.0.0.3:8000", False)
    d = director(store)
    assert {(await d.handle({}, CHAT)).endpoints[0] for _ in range(10)} == {"127.0.0.4:8000"}
    store.set_health("127.0.0.4:8000", False)
    with pytest.raises(NoEndpoints):
        await d.handle({}, CHAT)


async def test_fallback_endpoints_follow_the_primary() -> None:
    d = director(seed_store(), protocol=ProtocolSettings(fallback_endpoints=2))
    decision = await d.handle({}, CHAT)
    assert len(decision.endpoints) == 3
    assert len(set(decision.endpoints)) == 3


def canary_store() -> Datastore:
    from epp.api.model import ResourceSet
    from tests.factories import pod

    splits = (
        SplitTarget(50, "default/llama2-gpu-pool", version="stable"),
        SplitTarget(50, "default/canary", version="canary"),
    )
    store = Datastore()
    store.apply_resources(
        ResourceSet(
            (pool(), pool("canary")),
            (model(splits=splits, priority=0),),
            (pod("a", "127.0.0.2"), pod("b", "127.0.0.3", "canary")),
        )
    )
    return store


async def test_sticky_header_keeps_a_user_on_one_version() -> None:
    d = director(canary_store(), protocol=ProtocolSettings(sticky_header="x-user-id"))
    for user in ("alice", "bob", "carol", "dave"):
        versions = {(await d.handle({"x-user-id": user}, CHAT)).version for _ in range(30)}
        assert len(versions) == 1
    spread = {(await d.handle({"x-user-id": f"user-{i}"}, CHAT)).version for i in range(40)}
    assert spread == {"stable", "canary"}  # different users still split


async def test_pool_pin_from_a_trusted_proxy_skips_the_pool_split() -> None:
    headers = {"x-gateway-inference-pool": "default/canary"}
    trusted = director(canary_store(), protocol=ProtocolSettings(trust_control_headers=True))
    assert {(await trusted.handle(headers, CHAT)).pool for _ in range(30)} == {"default/canary"}
    untrusted = director(canary_store())
    assert len({(await untrusted.handle(headers, CHAT)).pool for _ in range(60)}) == 2


@pytest.mark.parametrize(
    ("policy", "client", "model_priority", "expected"),
    [
        ("header=x-request-priority; default=medium; client-override=false", None, 1, 1),
        ("header=x-request-priority; default=medium; client-override=false", "low", 1, -1),
        ("header=x-request-priority; default=medium; client-override=false", "high", 0, 0),
        ("header=x-request-priority; default=medium; client-override=true", "high", -1, 1),
        ("header=x-tier; default=low; client-override=false", None, None, -1),
        ("garbage", "high", 0, 0),
    ],
)
async def test_priority_policy_from_the_route(
    policy: str, client: str | None, model_priority: int | None, expected: int
) -> None:
    models = () if model_priority is None else (model(priority=model_priority),)
    store = seed_store(models=models)
    for address in ("127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000"):
        store.set_metrics(address, fresh())  # room everywhere: nothing is shed
    # without an InferenceModel, the name is one the pool does not declare: passed on to it
    passing = ProtocolSettings(pass_unknown_models=True)
    d = director(store, protocol=replace(passing, trust_control_headers=True))
    headers = {"x-gateway-priority-policy": policy}
    if client is not None:
        headers["x-request-priority"] = client
    assert (await d.handle(headers, CHAT)).priority == expected
    untrusted = director(store, protocol=passing)
    assert (await untrusted.handle(headers, CHAT)).priority == (model_priority or 0)
