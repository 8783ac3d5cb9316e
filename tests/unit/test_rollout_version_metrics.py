"""Per-version signals in the EPP: requests, failures, TTFT, TPOT and tokens with a version label,
and sticky users who stay on their version as a rollout's weights move."""

from __future__ import annotations

import orjson
from prometheus_client import generate_latest

from epp.api.model import ResourceSet, SplitTarget
from epp.datastore import Datastore
from epp.observability import EppMetrics
from epp.settings import ProtocolSettings
from epp.tracking.tracker import Tracking
from tests.factories import SERVED, director, model, pod, pool

CHAT = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}], "stream": True}
BODY = orjson.dumps(CHAT)


def split_store(stable: int, canary: int) -> Datastore:
    splits = (
        SplitTarget(stable, "default/llama2-gpu-pool", version="stable"),
        SplitTarget(canary, "default/canary", version="canary"),
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


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_streamed_answer_counts_its_version_ttft_tpot_and_tokens() -> None:
    store = split_store(0, 100)
    clock = Clock()
    tracking = Tracking(director(store, clock=clock), store, EppMetrics(), clock=clock)
    tracker = await tracking.start({}, orjson.dumps(CHAT))
    assert tracker.decision.version == "canary"
    # followed although nothing else needs the body: the version's first byte is a signal
    assert tracker.response_headers(200, "text/event-stream", None).value == "chunks"
    clock.now += 0.25
    event = {"model": SERVED, "choices": [{"delta": {"content": "x"}}]}
    tracker.response_body(b"data: " + orjson.dumps(event) + b"\n\n", False)
    clock.now += 0.5
    usage = {"prompt_tokens": 7, "completion_tokens": 11}
    last = orjson.dumps({"model": SERVED, "choices": [], "usage": usage})
    tracker.response_body(b"data: " + last + b"\n\ndata: [DONE]\n\n", True)
    m = tracking.metrics
    labels = ("llama2-7b-chat", "canary")
    assert m.version_completed.labels(*labels)._value.get() == 1
    assert m.version_output_tokens.labels(*labels)._value.get() == 11
    assert m.version_input_tokens.labels(*labels)._value.get() == 7
    assert m.version_ttft.labels(*labels)._sum.get() == 0.25
    assert abs(m.version_tpot.labels(*labels)._sum.get() - 0.05) < 1e-9  # 0.5 s / 10 tokens
    text = generate_latest(m.registry).decode()
    assert (
        'inference_model_version_completed_total{model_name="llama2-7b-chat",version="canary"}'
        in (text)
    )


async def test_a_server_error_and_a_cut_answer_are_failures_of_the_version() -> None:
    store = split_store(100, 0)
    tracking = Tracking(director(store), store, EppMetrics())
    failed = await tracking.start({}, orjson.dumps(CHAT))
    failed.response_headers(500, "application/json", None)
    failed.response_body(b'{"error": {"message": "boom"}}', True)
    cut = await tracking.start({}, orjson.dumps(CHAT))
    cut.response_headers(200, "text/event-stream", None)
    cut.response_body(b"data: {}\n\n", False)
    cut.complete()  # the stream ended before its last event
    refused = await tracking.start({}, orjson.dumps({**CHAT, "stream": False}))
    refused.response_headers(400, "application/json", None)
    refused.response_body(b"{}", True)
    m = tracking.metrics
    labels = ("llama2-7b-chat", "stable")
    assert m.version_completed.labels(*labels)._value.get() == 3
    assert m.version_errors.labels(*labels, "ModelServerError500")._value.get() == 1
    assert m.version_errors.labels(*labels, "Incomplete")._value.get() == 1
    assert m.version_ttft.labels(*labels)._sum.get() == 0  # no answer was a good stream


async def test_sticky_users_keep_their_version_within_a_step_and_only_move_forward() -> None:
    protocol = ProtocolSettings(sticky_header="x-user-id")
    users = [f"user-{i}" for i in range(200)]
    before: dict[str, str | None] = {}
    for stable, canary in ((90, 10), (75, 25), (50, 50), (0, 100)):
        d = director(split_store(stable, canary), protocol=protocol)
        now = {}
        for user in users:
            seen = {(await d.handle({"x-user-id": user}, BODY)).version for _ in range(3)}
            assert len(seen) == 1  # within a step a user stays on one version
            now[user] = seen.pop()
        share = sum(v == "canary" for v in now.values()) / len(users)
        assert abs(share - canary / 100) < 0.1
        # a user on the canary stays there as its weight grows
        assert all(now[u] == "canary" for u, v in before.items() if v == "canary")
        before = now
    d = director(split_store(100, 0), protocol=protocol)  # rolled back: all on stable
    assert {(await d.handle({"x-user-id": u}, BODY)).version for u in users} == {"stable"}
