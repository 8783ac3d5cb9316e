"""KV room: a free batch slot counts as room only where the pod's free KV cache takes the
prompt's new tokens (`epp.admission.kv_room`), learned from what the engine reports and what
the EPP sent since (`epp.cache_hits`, the datastore's counts)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import orjson
import pytest

from epp.admission.controller import AdmissionController
from epp.admission.flow_control import FlowControl
from epp.admission.kv_room import RoomColumn, room_tokens
from epp.admission.rooms import CRITICAL_QUEUE_AFTER, FREE, CriticalRoom, RoomView, StandardRoom
from epp.cache_hits import CacheHits
from epp.request import read_body
from epp.scheduling.service_time import ServiceTime
from epp.settings import SaturationSettings
from epp.types import Endpoint, EndpointMetrics, EndpointState
from tests.factories import ManualClock as Clock
from tests.factories import store_of_two

A, B = "10.0.0.1:8000", "10.0.0.2:8000"


def kv_state(
    address: str,
    usage: float,
    blocks: int | None = 100,
    load: int = 1,
    limit: int = 8,
    waiting: int = 0,
    **changes: object,
) -> EndpointState:
    """An endpoint with `load` requests (the EPP's), a batch `limit` of 8 and a KV cache of
    `blocks` 16-token blocks, `usage` of it taken at the last scrape."""
    metrics = EndpointMetrics(
        waiting=waiting,
        kv_usage=usage,
        block_size=16,
        num_gpu_blocks=blocks,
        scraped_at=100.0,
    )
    ep = Endpoint(address, address, "default/pool", max_num_seqs=limit)
    state = EndpointState(ep, metrics, in_flight=load, limit=limit, tpot=0.02)
    return replace(state, **changes) if changes else state  # type: ignore[arg-type]


def test_room_is_the_free_blocks_less_what_was_sent_since_the_scrape() -> None:
    assert room_tokens(kv_state(A, 0.75)) == 400.0  # 25 free blocks of 16 tokens
    assert room_tokens(kv_state(A, 0.75, blocks=None)) == math.inf  # no KV size reported
    never = replace(kv_state(A, 0.0), metrics=EndpointMetrics(num_gpu_blocks=100))
    assert room_tokens(never) == math.inf  # never scraped: nothing known
    # 300 prompt tokens started there since the scrape claim their blocks first
    sent = kv_state(A, 0.75, in_flight_since_scrape=1, tokens_since_scrape=300)
    assert room_tokens(sent) == 100.0
    # ended requests are not credited before the scrape shows their blocks free
    ended = kv_state(A, 0.75, in_flight_since_scrape=-1, tokens_since_scrape=-300)
    assert room_tokens(ended) == 400.0
    assert room_tokens(kv_state(A, 0.99, tokens_since_scrape=900)) == 0.0


def test_the_engines_own_queue_claims_blocks_at_the_mean_prompt_there() -> None:
    # two requests in flight with 200 prompt tokens between them: 100 each
    queued = kv_state(A, 0.5, load=2, waiting=2, in_flight_tokens=200)
    assert room_tokens(queued) == 800.0 - 200.0
    # one request ended since the scrape: one of the queued took its place
    moved = replace(queued, in_flight_since_scrape=-1)
    assert room_tokens(moved) == 800.0 - 100.0


def test_a_prompt_claims_only_what_its_engine_does_not_hold_cached() -> None:
    warm = kv_state(A, 0.75, cache_hit=0.75)  # 25 free blocks; a quarter of a prompt is new
    assert room_tokens(warm) == 1600.0
    assert 1600 <= room_tokens(warm) < 1601
    assert room_tokens(kv_state(A, 0.75)) < 401
    assert room_tokens(kv_state(A, 0.75, cache_hit=1.0)) == math.inf


def test_cache_hits_are_learned_from_the_engines_counters() -> None:
    hits = CacheHits(min_tokens=100, smoothing=0.5)

    def scrape(prompt: float | None, cached: float | None) -> float | None:
        return hits.observe(A, EndpointMetrics(prompt_tokens=prompt, cached_tokens=cached))

    assert scrape(None, None) is None and hits.get(A) == 0.0  # not exported: nothing
    assert scrape(1000, 0) is None  # the first page only marks the counters
    assert scrape(1050, 40) is None  # 50 tokens: too few for a sample
    assert scrape(1100, 80) == 0.8  # 80 of 100
    assert scrape(1300, 80) == pytest.approx(0.4)  # none of 200: halfway there
    assert scrape(10, 0) is None and hits.get(A) == pytest.approx(0.4)  # a restart starts over
    with pytest.raises(ValueError):
        CacheHits(min_tokens=0)
    hits.forget(A)
    assert hits.get(A) == 0.0


POOL = "default/llama2-gpu-pool"
PA, PB = "127.0.0.2:8000", "127.0.0.3:8000"


def scraped(usage: float, prompt: float = 0.0, cached: float = 0.0) -> EndpointMetrics:
    return EndpointMetrics(
        kv_usage=usage,
        block_size=16,
        num_gpu_blocks=100,
        scraped_at=time.monotonic(),
        prompt_tokens=prompt,
        cached_tokens=cached,
    )


def test_the_datastore_counts_prompt_tokens_sent_since_the_scrape_and_cache_hits() -> None:
    store = store_of_two(8)
    store.set_metrics(PA, scraped(0.5, 0, 0))
    lease = store.lease(PA, 300)
    state = next(s for s in store.candidates(POOL) if s.address == PA)
    assert (state.tokens_since_scrape, room_tokens(state)) == (300, 500.0)
    store.set_metrics(PA, scraped(0.7, 1000, 600))  # the scrape counts it now
    state = next(s for s in store.candidates(POOL) if s.address == PA)
    assert (state.tokens_since_scrape, state.cache_hit) == (0, 0.6)
    lease.release()
    state = next(s for s in store.candidates(POOL) if s.address == PA)
    assert state.tokens_since_scrape == -300 and state.cache_hit == 0.6  # a lease keeps it


def test_a_free_slot_on_a_pod_whose_kv_is_taken_is_not_room() -> None:
    clock = Clock()
    full_kv, roomy = kv_state(A, 0.98, load=2), kv_state(B, 0.5, load=7)
    view = RoomView([full_kv, roomy])
    assert view.mask(FREE)[0] == [True, True]  # batch slots on both
    assert view.mask(FREE, 500)[0] == [False, True]  # KV for 500 tokens on B only
    assert view.mask(FREE, 20)[0] == [True, True]  # a short prompt fits both
    assert [c.address for c in view.with_room(0, True, 500)] == [B]
    assert [c.address for c in view.with_room(0, False, 500)] == [B]
    # a request of unknown length takes the first free slot whose KV takes its prompt
    room = StandardRoom(lambda: view, ServiceTime(200), None, clock, free_first=True)
    assert room(True, True)
    long_prompt = StandardRoom(
        lambda: view, ServiceTime(200), None, clock, free_first=True, prompt_tokens=1000
    )
    assert not long_prompt(True, True)  # fits nowhere: it waits here, not in an engine
    assert not long_prompt(True, False)
    clock.now += CRITICAL_QUEUE_AFTER
    assert not long_prompt(False, True)  # behind others it keeps waiting
    assert long_prompt(True, True)  # the head of the line probes at last: it goes
    # and is offered the free slots, KV or not
    assert [c.address for c in view.with_room(0, True, 1000)] == [A, B]


def test_a_critical_request_wants_a_free_slot_its_prompt_fits() -> None:
    clock = Clock()
    view = RoomView([kv_state(A, 0.98, load=2), kv_state(B, 0.98, load=3)])
    critical = CriticalRoom(lambda: view, clock, prompt_tokens=500)
    assert not critical(True, True)
    assert CriticalRoom(lambda: view, clock, prompt_tokens=20)(True, True)
    clock.now += CRITICAL_QUEUE_AFTER
    assert critical(True, True)


def test_a_warm_holder_keeps_room_for_a_long_shared_prompt() -> None:
    """A pod that finds most prompts cached has room for a prompt whose new part fits, where
    a cold pod with the same free blocks does not."""
    warm = kv_state(A, 0.9, cache_hit=0.95)
    cold = kv_state(B, 0.9)
    view = RoomView([warm, cold])
    assert view.mask(FREE, 2000)[0] == [True, False]


def test_a_holder_of_the_prompt_has_room_for_its_new_part() -> None:
    """The pod-wide cache-hit share judges every prompt alike; a pod holding this prompt's
    prefix needs blocks for the rest only, so it keeps its room for it (asked lazily)."""
    holder = kv_state(A, 0.9, cache_hit=0.5)  # 160 free tokens: ~320 prompt tokens at 0.5
    other = kv_state(B, 0.2, cache_hit=0.5)  # 1,280 free tokens: 2,560 at 0.5
    view = RoomView([holder, other])
    assert view.mask(FREE, 2000)[0] == [False, True]
    asked: list[int] = []

    def cached(held: dict[str, int]) -> Callable[[], Mapping[str, int]]:
        def ask() -> Mapping[str, int]:
            asked.append(1)
            return held

        return ask

    assert [c.address for c in view.with_room(0, True, 2000, cached({A: 1900}))] == [A, B]
    assert [c.address for c in view.with_room(0, False, 2000, cached({A: 1900}))] == [A, B]
    # holding too little of it (400 new tokens against 160 free) or nothing: still no room
    assert [c.address for c in view.with_room(0, False, 2000, cached({A: 1600}))] == [B]
    assert [c.address for c in view.with_room(0, False, 2000, cached({B: 2000}))] == [B]
    # where the KV room narrows nothing the holders are not asked for
    assert len(asked) == 4
    assert [c.address for c in view.with_room(0, False, 100, cached({A: 100}))] == [A, B]
    assert len(asked) == 4


BODY = read_body(orjson.dumps({"model": "m", "prompt": "x " * 800}), 1 << 20)


async def test_admit_holds_a_prompt_until_a_scrape_shows_kv_for_it() -> None:
    store = store_of_two(8)
    store.set_metrics(PA, scraped(0.99))
    store.set_metrics(PB, scraped(0.99))
    admission = AdmissionController(store, SaturationSettings(), FlowControl(store, timeout=5))
    assert BODY.prompt_tokens > 32  # more than the two blocks left on each
    waiting = asyncio.create_task(admission.admit(BODY, POOL, 0))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # batch slots free on both, KV on neither
    store.set_metrics(PB, scraped(0.2))  # B's answers ended: its blocks are free
    offered = await asyncio.wait_for(waiting, 1)
    assert [c.address for c in offered] == [PB]


def test_the_room_column_remembers_each_state_and_recomputes_a_new_one() -> None:
    column = RoomColumn()
    states = [kv_state(A, 0.5), kv_state(B, 0.75)]
    assert column.of(states) == [800.0, 400.0]
    moved = replace(states[1], in_flight_since_scrape=1, tokens_since_scrape=100)
    assert column.of([states[0], moved]) == [800.0, 300.0]  # a new state is computed afresh
    equal_but_new = replace(states[0])
    assert equal_but_new is not states[0]
    assert column.of([equal_but_new, moved]) == [800.0, 300.0]
    # states replaced many times over do not pile up
    for n in range(200):
        column.of([replace(states[0], in_flight_tokens=n), moved])
    assert len(column._known) <= 4 * 2 + 64 + 1
