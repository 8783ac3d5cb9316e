"""Sessions: a signed token (or an agent's own session header) keeps a conversation on its pod
while that pod is healthy and has room; a forged or foreign token is only ignored; a session
whose pod saturates or leaves moves to the profile's pick and says why."""

from __future__ import annotations

import orjson

from epp.datastore import Datastore
from epp.director import Decision, Director
from epp.extproc.stream import RequestStream
from epp.observability import EppMetrics
from epp.request import Body
from epp.sessions import MOVED_SATURATED, MOVED_UNAVAILABLE, TOKEN_HEADER, Sessions
from epp.settings import ProtocolSettings
from epp.tracking.tracker import Tracking
from tests.factories import director, fresh, seed_store
from tests.unit.test_extproc_stream import body, headers, response_headers, set_headers

BODY = orjson.dumps({"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}]})
PODS = ("127.0.0.2:8000", "127.0.0.3:8000", "127.0.0.4:8000")


def setup(header: str | None = None) -> tuple[Director, Datastore]:
    store = seed_store()
    for address in PODS:
        store.set_metrics(address, fresh())
    d = director(store)
    d.sessions = Sessions(b"k" * 32, header)
    return d, store


async def ask(d: Director, **headers: str) -> Decision:
    decision = await d.handle(headers, BODY)
    decision.lease.release()
    return decision


def busy_except(store: Datastore, address: str, waiting: int = 3) -> None:
    """Every pod but `address` shows a queue: the profile would pick `address`."""
    for other in PODS:
        store.set_metrics(other, fresh(waiting=0 if other == address else waiting))


async def test_a_token_holds_the_session_on_its_pod_against_the_profiles_choice() -> None:
    d, store = setup()
    first = await ask(d)
    assert first.session_token and first.session_moved is None
    home = first.endpoints[0]
    other = next(a for a in PODS if a != home)
    busy_except(store, other)  # the profile alone would now go elsewhere
    assert (await ask(d)).endpoints[0] == other
    for _ in range(5):
        held = await ask(d, **{TOKEN_HEADER: first.session_token})
        assert held.endpoints[0] == home and held.session_moved is None
        assert held.session_token == first.session_token  # same pod, same token


async def test_forged_foreign_and_garbage_tokens_are_ignored() -> None:
    d, store = setup()
    home = (await ask(d)).endpoints[0]
    other = next(a for a in PODS if a != home)
    busy_except(store, other)
    elsewhere = Sessions(b"another key" * 3).token({}, "default/llama2-gpu-pool", home)
    body, _, signature = d.sessions.token({}, "default/llama2-gpu-pool", home).partition(".")
    retargeted = Sessions(b"k" * 32).token({}, "default/other-pool", "10.0.0.1:8000")
    for token in (elsewhere, f"{body}.{signature[:-2]}AA", "not-a-token", "..", retargeted):
        decision = await ask(d, **{TOKEN_HEADER: token})
        assert decision.endpoints[0] == other and decision.session_moved is None


async def test_a_saturated_pod_lets_the_session_move_and_says_so() -> None:
    d, store = setup()
    first = await ask(d)
    home = first.endpoints[0]
    store.set_metrics(home, fresh(waiting=20))  # a queue past the saturation mark
    moved = await ask(d, **{TOKEN_HEADER: first.session_token or ""})
    assert moved.endpoints[0] != home and moved.session_moved == MOVED_SATURATED
    assert moved.session_token != first.session_token
    store.set_metrics(home, fresh())  # the old pod has room again: the session stays moved
    busy_except(store, home)
    again = await ask(d, **{TOKEN_HEADER: moved.session_token or ""})
    assert again.endpoints[0] == moved.endpoints[0] and again.session_moved is None
    store.set_metrics(again.endpoints[0], fresh(kv=0.95))  # a full KV cache is saturated too
    assert (await ask(d, **{TOKEN_HEADER: moved.session_token or ""})).session_moved == (
        MOVED_SATURATED
    )


async def test_a_drained_or_failed_pod_lets_the_session_move() -> None:
    d, store = setup()
    first = await ask(d)
    store.set_health(first.endpoints[0], False)
    moved = await ask(d, **{TOKEN_HEADER: first.session_token or ""})
    assert moved.endpoints[0] != first.endpoints[0]
    assert moved.session_moved == MOVED_UNAVAILABLE


async def test_an_agents_own_session_header_holds_like_a_token() -> None:
    d, store = setup(header="X-Session-Id")
    first = await ask(d, **{"x-session-id": "agent-1"})
    home = first.endpoints[0]
    busy_except(store, next(a for a in PODS if a != home))
    for _ in range(3):
        assert (await ask(d, **{"x-session-id": "agent-1"})).endpoints[0] == home
    assert (await ask(d, **{"x-session-id": "agent-2"})).endpoints[0] != home  # a new session
    store.set_metrics(home, fresh(waiting=20))
    moved = await ask(d, **{"x-session-id": "agent-1"})
    assert moved.session_moved == MOVED_SATURATED and moved.endpoints[0] != home
    store.set_metrics(home, fresh())
    assert (await ask(d, **{"x-session-id": "agent-1"})).endpoints[0] == moved.endpoints[0]


async def test_requests_without_a_body_carry_no_session() -> None:
    d, _ = setup()
    decision = await d.handle({}, Body.NONE)
    assert decision.session_token is None


async def test_the_answer_carries_the_token_and_why_it_moved() -> None:
    d, store = setup()
    first = await ask(d)
    store.set_metrics(first.endpoints[0], fresh(waiting=20))
    stream = RequestStream(Tracking(d, store, EppMetrics()), ProtocolSettings())
    path = {":path": "/v1/chat/completions", TOKEN_HEADER: first.session_token or ""}
    await stream.on_message(headers(path))
    await stream.on_message(body(BODY, True))
    (reply,) = await stream.on_message(response_headers({":status": "200"}))
    sets = set_headers(reply, "response_headers")
    assert sets["x-session-moved"] == MOVED_SATURATED
    token = sets[TOKEN_HEADER]
    assert token != first.session_token
    assert d.sessions.held({TOKEN_HEADER: token}, "default/llama2-gpu-pool", lambda: []).moved == (
        MOVED_UNAVAILABLE
    )  # it names a pod; among no candidates it is unavailable
    stream.close()


def test_a_pods_token_is_signed_once_and_stays_the_same_token() -> None:
    """Tokens are kept per (pool, pod), bounded: each is what a fresh signer with the same key
    gives, and every one of them holds its session, past the bound too."""
    sessions, signer = Sessions(b"k" * 32), Sessions(b"k" * 32)
    pool = "default/llama2-gpu-pool"
    state = seed_store().candidates(pool)[0]
    first = sessions.token({}, pool, state.address)
    assert sessions.token({}, pool, state.address) == first
    for i in range(5000):  # more pods than are kept: older tokens are signed again
        address = f"10.1.{i // 256}.{i % 256}:8000"
        assert sessions.token({}, pool, address) == signer.token({}, pool, address)
    again = sessions.token({}, pool, state.address)
    assert again == first
    assert signer.held({TOKEN_HEADER: again}, pool, lambda: [state]).endpoint == state
