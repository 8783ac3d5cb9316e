"""Prefix-cache scorer and index: hashing, LRU/reverse map, auto-tune, and the load gate."""

from __future__ import annotations

import logging
import random
from dataclasses import replace

import pytest

from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins import prefix_index
from epp.scheduling.plugins.prefix_cache import PrefixCacheScorer, PrefixStats
from epp.scheduling.plugins.prefix_index import PrefixIndex, block_hashes
from epp.scheduling.registry import build_default_profiles
from epp.types import Endpoint, EndpointMetrics, EndpointState

NOW = 1000.0
BLOCK = 64  # 16 tokens x 4 chars


def clock() -> float:
    return NOW


def ep(
    address: str, in_flight: int = 0, block_size: int | None = None, blocks: int | None = None
) -> EndpointState:
    metrics = EndpointMetrics(block_size=block_size, num_gpu_blocks=blocks, scraped_at=NOW - 0.01)
    return EndpointState(Endpoint(address, address, "ns/pool"), metrics, in_flight=in_flight)


def req(prompt: bytes, model: str = "m", rid: str = "r") -> SchedulingRequest:
    return SchedulingRequest(rid, model, prompt=prompt)


SYSTEM = b"S" * (BLOCK * 8)


def test_block_hashes_chain_and_drop_partial_block() -> None:
    a = block_hashes("m", SYSTEM + b"tail", BLOCK, 256)
    assert len(a) == 8
    b = block_hashes("m", SYSTEM[: BLOCK * 3] + b"X" * (BLOCK * 5), BLOCK, 256)
    assert a[:3] == b[:3] and a[3] != b[3]
    assert block_hashes("other", SYSTEM, BLOCK, 256)[0] != a[0]  # model seeds the chain
    assert block_hashes("m", b"short", BLOCK, 256) == []
    assert len(block_hashes("m", SYSTEM, BLOCK, 5)) == 5


def test_index_match_walks_until_first_unknown_block() -> None:
    index = PrefixIndex()
    index.add("a", [1, 2, 3])
    index.add("b", [1, 2])
    assert index.match([1, 2, 3, 4]) == {"a": 3, "b": 2}
    assert index.match([9, 1]) == {}


def test_index_match_counts_every_block_of_every_holder_across_runs() -> None:
    rng = random.Random(5)
    for _ in range(200):
        index = PrefixIndex(default_capacity=rng.randrange(2, 12))
        for _ in range(rng.randrange(1, 8)):  # holders change along the chain, some evicted
            start = rng.randrange(0, 4)
            index.add(rng.choice("abcd"), list(range(start, rng.randrange(start + 1, 14))))
        chain = list(range(14))
        expected: dict[str, int] = {}
        for h in chain:  # block by block, as the index defines a match
            holders = [a for a in "abcd" if index.holds(a, h)]
            if not holders:
                break
            for a in holders:
                expected[a] = expected.get(a, 0) + 1
        assert index.match(chain) == expected


def test_index_lru_evicts_deepest_blocks_first_and_updates_reverse_map() -> None:
    index = PrefixIndex(default_capacity=3)
    index.add("a", [1, 2, 3])
    index.add("a", [10, 11])  # over capacity: the oldest entries go
    assert len(index) == 3
    assert index.match([10, 11]) == {"a": 2}
    # within one prompt the root was inserted last, so it outlives the deeper blocks
    assert index.match([1]) == {"a": 1}
    assert index.match([1, 2, 3]) == {"a": 1}
    index.forget("a")
    assert len(index) == 0 and index.match([10]) == {}


def _holders_in_step(index: PrefixIndex, pods: str) -> None:
    """Every block a pod's LRU holds is credited to it, and no other."""
    held = {a: {h for s in index._lru[a].sets for h in s} for a in pods if a in index._lru}
    for a, blocks in held.items():
        for h in blocks:
            assert a in index.match([h])
    every = set().union(*held.values())
    assert sum(len(shard) for shard in index._holders) == len(every)


SET_BLOCKS = 1024  # sets this small in the tests below (the default makes them of 32k blocks)


def test_a_large_lru_is_cut_into_sets_each_kept_to_its_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prefix_index, "LRU_SET_BLOCKS", SET_BLOCKS)
    rng = random.Random(7)
    capacity = 5 * SET_BLOCKS  # four sets of 1,280 blocks
    index = PrefixIndex(default_capacity=capacity)
    kept = [rng.getrandbits(64) for _ in range(64)]
    for _ in range(100):  # 20k blocks a pod: every set full
        for a in "ab":
            index.add(a, [rng.getrandbits(64) for _ in range(200)])
            index.add(a, kept)  # touched every time: never the oldest of its set
    lru = index._lru["a"]
    assert len(lru.sets) == 4 and sum(lru.caps) == capacity
    assert all(len(s) <= cap for s, cap in zip(lru.sets, lru.caps, strict=True))
    assert len(lru) == capacity and index.room("a") == 0
    assert index.match(kept) == {"a": 64, "b": 64}
    _holders_in_step(index, "ab")


def test_capacity_changes_move_an_lru_between_one_set_and_several(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prefix_index, "LRU_SET_BLOCKS", SET_BLOCKS)
    rng = random.Random(8)
    index = PrefixIndex(default_capacity=1_000)
    old = [rng.getrandbits(64) for _ in range(900)]
    index.add("a", old)
    index.add("b", old[:10])
    index.set_capacity("a", 3 * SET_BLOCKS)  # two sets: every block stays
    assert len(index._lru["a"].sets) == 2 and index.match(old) == {"a": 900, "b": 10}
    index.add("a", [rng.getrandbits(64) for _ in range(4 * SET_BLOCKS)])
    lru = index._lru["a"]
    assert all(len(s) <= cap for s, cap in zip(lru.sets, lru.caps, strict=True))
    assert len(lru) <= 3 * SET_BLOCKS
    index.set_capacity("a", 500)  # one set again, trimmed to the capacity
    assert len(index._lru["a"].sets) == 1 and len(index._lru["a"]) == 500
    assert index.room("a") == 0
    _holders_in_step(index, "ab")


def test_index_purges_idle_endpoints() -> None:
    index = PrefixIndex()
    index.add("old", [1], now=10.0)
    index.add("new", [1], now=500.0)
    assert index.purge_idle(before=100.0) == ["old"]
    assert index.match([1]) == {"new": 1}


def test_scorer_ratio_of_matched_blocks() -> None:
    scorer = PrefixCacheScorer(clock=clock)
    a, b = ep("a"), ep("b")
    first = req(SYSTEM)
    assert scorer.score(first, [a, b]) == [0.0, 0.0]
    scorer.picked(first, a)
    half = req(SYSTEM[: BLOCK * 4] + b"Q" * (BLOCK * 4), rid="2")
    assert scorer.score(half, [a, b]) == [0.5, 0.0]
    assert scorer.stats.picks == 1 and scorer.stats.prompt_blocks == 8


def test_scorer_hit_stats_follow_the_pick() -> None:
    scorer = PrefixCacheScorer(clock=clock)
    a, b = ep("a"), ep("b")
    scorer.score(req(SYSTEM), [a, b])
    scorer.picked(req(SYSTEM), a)
    second = req(SYSTEM, rid="2")
    scorer.score(second, [a, b])
    scorer.picked(second, a)
    assert scorer.stats.hit_ratio == pytest.approx(0.5)


def test_load_gate_breaks_affinity_for_overloaded_holder() -> None:
    scorer = PrefixCacheScorer(gate_slack=4, gate_ratio=0.5, clock=clock, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("a"))
    # within the gate: 0 * 1.5 + 4 >= 4
    assert scorer.score(req(SYSTEM, rid="2"), [ep("a", 4), ep("b", 0)]) == [1.0, 0.0]
    assert scorer.score(req(SYSTEM, rid="3"), [ep("a", 5), ep("b", 0)]) == [0.0, 0.0]
    # the gate is relative to the least-loaded candidate: 10 * 1.5 + 4 = 19
    assert scorer.score(req(SYSTEM, rid="4"), [ep("a", 19), ep("b", 10)]) == [1.0, 0.0]


def test_a_holder_with_a_free_batch_slot_keeps_its_affinity() -> None:
    """Sticky until saturated: below its batch limit the holder runs the request at once, so
    the gate does not send it to cold pods however much emptier they are."""
    scorer = PrefixCacheScorer(gate_slack=4, gate_ratio=0.5, clock=clock, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("a"))
    holder = replace(ep("a", 7), limit=8)
    assert scorer.score(req(SYSTEM, rid="2"), [holder, ep("b", 0)]) == [1.0, 0.0]
    full = replace(ep("a", 8), limit=8)  # the request would wait: the gate decides again
    assert scorer.score(req(SYSTEM, rid="3"), [full, ep("b", 0)]) == [0.0, 0.0]


@pytest.mark.parametrize(("prefill_pace", "kept"), [(0.003, True), (0.001, False)])
def test_a_full_holder_keeps_affinity_while_its_wait_costs_less_than_a_cold_prefill(
    prefill_pace: float, kept: bool
) -> None:
    scorer = PrefixCacheScorer(clock=clock, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("a"))
    # a full batch of 8 at 10 ms a token: the 9th waits 1/8 of a typical (200-token) request,
    # 0.25 s; the idle pod would compute the 8 blocks (128 tokens) at `prefill_pace` s a token
    holder = replace(ep("a", 8), limit=8, tpot=0.01)
    cold = replace(ep("b", 0), limit=8, tpot=0.01, prefill_pace=prefill_pace)
    scores = scorer.score(req(SYSTEM, rid="2"), [holder, cold])
    assert scores == ([1.0, 0.0] if kept else [0.0, 0.0])


def test_scraped_queue_counts_in_the_gate() -> None:
    scorer = PrefixCacheScorer(clock=clock, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("a"))
    holder = replace(ep("a"), metrics=EndpointMetrics(waiting=30, running=8, scraped_at=NOW))
    assert scorer.score(req(SYSTEM, rid="2"), [holder, ep("b")]) == [0.0, 0.0]


def test_auto_tune_block_size_and_capacity() -> None:
    scorer = PrefixCacheScorer(clock=clock)
    pod = ep("a", block_size=32, blocks=2)
    prompt = req(b"P" * (128 * 3))
    scorer.score(prompt, [pod])
    scorer.picked(prompt, pod)
    assert scorer.block_size_tokens == 32
    assert len(scorer.index) == 2  # capacity = num_gpu_blocks
    assert scorer.score(req(b"P" * 128, rid="2"), [pod]) == [1.0]


def test_auto_tune_off_keeps_parameters() -> None:
    scorer = PrefixCacheScorer(auto_tune=False, clock=clock)
    pod = ep("a", block_size=32, blocks=1)
    scorer.picked(req(SYSTEM), pod)
    assert scorer.block_size_tokens == 16 and len(scorer.index) == 8


def test_repeated_prefix_returns_to_holder_until_it_is_overloaded() -> None:
    profile = build_default_profiles(random.Random(3), clock)["gpu-aware"]
    pods = {f"10.0.0.{i}:8000": ep(f"10.0.0.{i}:8000") for i in range(4)}
    picks = []
    for i in range(12):  # nothing finishes: each pick adds one in-flight request to its pod
        chosen = profile.schedule(
            req(SYSTEM + b"question %d" % i, rid=str(i)), list(pods.values())
        )[0]
        pods[chosen.address] = replace(chosen, in_flight=chosen.in_flight + 1)
        picks.append(chosen.address)
    holder = picks[0]
    # the holder keeps the prefix while within the gate (min 0 * 1.5 + 4 slack) ...
    assert picks[:5] == [holder] * 5
    # ... then the affinity breaks and the load spreads over the other pods too
    assert len(set(picks)) >= 3
    assert max(p.in_flight for p in pods.values()) <= 9


def test_without_shared_prefix_load_is_balanced() -> None:
    profile = build_default_profiles(random.Random(3), clock)["gpu-aware"]
    pods = {f"10.0.0.{i}:8000": ep(f"10.0.0.{i}:8000") for i in range(4)}
    for i in range(40):
        prompt = bytes([65 + i % 26]) * 10 + b"%d" % i * 300
        chosen = profile.schedule(req(prompt, rid=str(i)), list(pods.values()))[0]
        pods[chosen.address] = replace(chosen, in_flight=chosen.in_flight + 1)
    assert sorted(p.in_flight for p in pods.values()) == [10, 10, 10, 10]


def test_distinct_prefixes_keep_distinct_holders() -> None:
    scorer = PrefixCacheScorer(clock=clock)
    a, b = ep("a"), ep("b")
    one, two = req(b"1" * 640), req(b"2" * 640, rid="2")
    scorer.picked(one, a)
    scorer.picked(two, b)
    assert scorer.score(req(b"1" * 640, rid="3"), [a, b]) == [1.0, 0.0]
    assert scorer.score(req(b"2" * 640, rid="4"), [a, b]) == [0.0, 1.0]


def test_index_shared_blocks_keep_every_holder_until_evicted() -> None:
    index = PrefixIndex(default_capacity=2)
    index.add("a", [1, 2])
    index.add("b", [1, 2])
    index.add("c", [1])
    assert index.match([1, 2]) == {"a": 2, "b": 2, "c": 1}
    index.add("a", [7, 8])  # a's old blocks are evicted; b and c still hold theirs
    assert index.match([1, 2]) == {"b": 2, "c": 1}
    index.forget("b")
    assert index.match([1, 2]) == {"c": 1}
    index.forget("c")
    assert index.match([1]) == {} and index.match([7, 8]) == {"a": 2}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_cold_prompts_spread_over_pods_not_yet_computing_one() -> None:
    """A pod just sent an uncached prompt is busy prefilling it: the next cold prompt scores
    the pods with nothing queued higher, until that prefill has drained at the pod's pace."""
    t = Clock()
    scorer = PrefixCacheScorer(clock=t)
    a, b = replace(ep("a"), prefill_pace=0.001), replace(ep("b"), prefill_pace=0.001)
    first = req(b"1" * 640)
    assert scorer.score(first, [a, b]) == [0.0, 0.0]  # nothing queued anywhere: no signal
    scorer.picked(first, a)  # 160 tokens at 1 ms: 0.16 s queued on a
    second = req(b"2" * 640, rid="2")
    assert scorer.score(second, [a, b]) == [0.0, 1.0]
    t.now += 0.08  # half drained: a would finish the prompt 0.08 s later than b
    assert scorer.score(req(b"3" * 640, rid="3"), [a, b]) == pytest.approx([0.5, 1.0])
    t.now += 0.1
    assert scorer.score(req(b"4" * 640, rid="4"), [a, b]) == [0.0, 0.0]


def test_a_cold_prompt_shuns_a_slow_prefill_and_a_warm_one_stays() -> None:
    t = Clock()
    scorer = PrefixCacheScorer(clock=t)
    fast, slice_ = replace(ep("fast"), prefill_pace=0.001), replace(ep("mig"), prefill_pace=0.007)
    assert scorer.score(req(SYSTEM), [fast, slice_]) == [1.0, 0.0]
    # a warm holder scores by its match, the spread only fills what no holder covers
    scorer.picked(req(SYSTEM), slice_)
    t.now += 10.0
    assert scorer.score(req(SYSTEM, rid="2"), [fast, slice_]) == [0.0, 1.0]


def test_a_slow_prefill_weighs_by_its_share_of_the_whole_request() -> None:
    """Half-speed prefill costs a 128-token prompt 0.128 s against a 200-token answer's 2 s: a
    small share of the request, so a slow pod loses little score (the service-time scorer
    weighs its slower answer)."""
    scorer = PrefixCacheScorer(clock=Clock())
    fast = replace(ep("fast"), prefill_pace=0.001, tpot=0.01)
    slow = replace(ep("slow"), prefill_pace=0.002, tpot=0.02)
    scores = scorer.score(req(SYSTEM), [fast, slow])
    assert scores[0] == 1.0 and scores[1] == pytest.approx(1 - 0.128 / (0.128 + 2.0))


def test_the_gate_counts_prefill_queued_on_the_cold_pod() -> None:
    """A full holder whose queue is shorter than the prefill already queued on the idle pod
    plus its own keeps the prefix; with `coldPromptSpread` 0 the queue still counts."""
    t = Clock()
    scorer = PrefixCacheScorer(clock=t, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("a"))
    t.now += 10.0
    holder = replace(ep("a", 8), limit=8, tpot=0.01)  # 0.25 s behind its full batch
    cold = replace(ep("b", 0), limit=8, tpot=0.01, prefill_pace=0.001)
    assert scorer.score(req(SYSTEM, rid="2"), [holder, cold]) == [0.0, 0.0]  # 0.13 s there
    scorer.picked(req(b"X" * 64 * 20, rid="3"), cold)  # 320 tokens queued on b: 0.32 s
    assert scorer.score(req(SYSTEM, rid="4"), [holder, cold]) == [1.0, 0.0]


def test_prefill_queue_drains_and_forgets() -> None:
    from epp.scheduling.prefill_queue import PRIOR_PACE, PrefillQueue, filled_paces

    q = PrefillQueue()
    q.add("a", 1000, 0.001, now=5.0)
    q.add("a", 500, 0.001, now=5.5)  # 0.5 s left + 0.5 s
    assert q.seconds("a", 5.5) == pytest.approx(1.0)
    assert q.seconds("a", 6.0) == pytest.approx(0.5)
    assert q.seconds("a", 7.0) == 0.0 and len(q) == 0
    q.add("b", 0, 0.001, now=1.0)
    q.add("b", 10, 0.0, now=1.0)
    assert len(q) == 0  # nothing to compute, or no pace: nothing queued
    # a peer replica's pick: seconds as it measured them; nothing for none, NaN or infinity
    assert q.add_seconds("c", 0.4, now=2.0) == 0.4
    assert q.add("c", 100, 0.001, now=2.2) == pytest.approx(0.1)
    assert q.seconds("c", 2.2) == pytest.approx(0.3)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        assert q.add_seconds("d", bad, now=2.0) == 0.0
    assert q.seconds("d", 2.0) == 0.0
    # unmeasured paces: the measured mean per unit of capacity, else the prior
    assert filled_paces([0.002, 0.0, 0.0], [1.0, 0.5, 1.0]) == [0.002, 0.004, 0.002]
    assert filled_paces([0.0], [2.0]) == [PRIOR_PACE / 2]


def test_a_holder_with_a_free_slot_on_a_slow_gpu_yields_to_a_faster_holder() -> None:
    """The gate compares first tokens, free slot or not: a MIG slice that holds a conversation
    computes its new turn seven times slower than an idle fast pod that holds the shared
    prefix, so a long enough new turn goes there; a short one stays (the slice's pace has no
    measured noise yet, so its answer's end does not count, below). A holder's rivals are the
    endpoints that hold less of the prompt: the fast pod keeps its share of a short turn
    although the slice would be sooner."""
    scorer = PrefixCacheScorer(clock=clock, cold_spread=0.0)
    conversation = SYSTEM + b"T" * (BLOCK * 8)  # 8 more blocks, held by the slice only
    scorer.picked(req(conversation), ep("slice"))
    scorer.picked(req(SYSTEM, rid="s"), ep("fast"))
    slice_ = replace(ep("slice", 1), limit=8, tpot=0.04, prefill_pace=0.007)
    fast = replace(ep("fast", 1), limit=8, tpot=0.01, prefill_pace=0.001)
    turn = conversation + b"N" * (BLOCK * 8)  # a new turn: 8 blocks nobody holds
    # slice: 128 tokens x 7 ms = 0.90 s; fast: 256 x 1 ms = 0.26 s
    assert scorer.score(req(turn, rid="2"), [slice_, fast]) == [0.0, 8 / 24]
    short = conversation + b"N" * BLOCK  # slice: 16 x 7 ms = 0.11 s; fast: 144 x 1 ms = 0.14 s
    assert scorer.score(req(short, rid="3"), [slice_, fast]) == [16 / 17, 8 / 17]


def answer_of(tokens: int, rid: str) -> SchedulingRequest:
    return SchedulingRequest(rid, "m", prompt=SYSTEM, expected_output_tokens=tokens)


def test_a_warm_holder_at_half_speed_yields_while_the_answer_ends_sooner_on_a_fast_pod() -> None:
    """The first token comes sooner on the warm half-speed pod (nothing to compute), but its
    64-token answer streams for 3.5 s there against 2.1 s on an idle fast pod that must first
    compute the 128 prompt tokens (0.13 s), each pace give or take its measured noise: the
    holder yields, the request seeds a fast holder. Kept, every request of that prefix would
    stream at half speed for the whole run (the shared-prefix cell's p90 e2e was the size of
    the group the slow pod took first). While the fast pod's batch is full, its queue outlasts
    the slower answer and the holder keeps the request; so does a short answer."""
    scorer = PrefixCacheScorer(clock=clock, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("slow"))
    slow = replace(ep("slow", 2), limit=8, tpot=0.056, tpot_spread=0.002, prefill_pace=0.002)
    fast = replace(ep("fast", 2), limit=8, tpot=0.03, tpot_spread=0.003, prefill_pace=0.001)
    # slow: 0.016 s of queued prefill + 64 x 54 ms = 3.47 s; fast: 0.128 + 64 x 33 ms = 2.24 s
    assert scorer.score(answer_of(64, "2"), [slow, fast]) == [0.0, 0.0]
    # full: (12 - 8 + 1) / 8 of a typical (200-token) request at 30 ms, 3.75 s, before its turn
    busy = replace(fast, in_flight=12)
    assert scorer.score(answer_of(64, "3"), [slow, busy]) == [1.0, 0.0]
    # a 4-token answer ends at 0.23 s on the slow pod, at 0.26 s on the fast one: it stays
    assert scorer.score(answer_of(4, "4"), [slow, fast]) == [1.0, 0.0]


def test_the_debug_log_names_each_holder_that_yields_and_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two holders yield to an idle pod in one pick: the explain log shows each, with every
    endpoint's first token and answer's end."""
    scorer = PrefixCacheScorer(clock=clock, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("slow"))
    scorer.picked(req(SYSTEM, rid="1"), ep("slower"))
    slow = replace(ep("slow", 2), limit=8, tpot=0.056, tpot_spread=0.002, prefill_pace=0.002)
    slower = replace(slow, endpoint=Endpoint("slower", "slower", "ns/pool"), tpot=0.07)
    fast = replace(ep("fast", 2), limit=8, tpot=0.03, tpot_spread=0.003, prefill_pace=0.001)
    with caplog.at_level(logging.DEBUG, logger="epp.scheduling.plugins.prefix_cache"):
        assert scorer.score(answer_of(64, "2"), [slow, slower, fast]) == [0.0, 0.0, 0.0]
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" (")[0] for line in lines] == [
        "request 2: holder slow",
        "request 2: holder slower",
    ]
    # the fast pod's 0.128 s cold prefill stalls its 2 requests: 0.256 s more to weigh there
    assert (
        "first tokens [0.016, 0.016, 0.128] s, delays to the requests there [0.000, 0.000, "
        "0.256] s, answers' ends with both [3.472, 4.368, 2.112] s"
    ) in lines[1]


def test_a_cold_prefill_that_would_stall_a_busy_pod_keeps_the_request_on_its_holder() -> None:
    """The fast pod would end the answer sooner (above), but computing the prompt there stalls
    every request it runs for the prefill's step: with 12 of them (in a batch of 16), 1.5 s of
    their time against the 1.2 s the request itself gains. Which placement costs everyone less
    counts: the warm holder keeps the request; with 2 requests on the fast pod it yields."""
    scorer = PrefixCacheScorer(clock=clock, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("slow"))
    slow = replace(ep("slow", 2), limit=8, tpot=0.056, tpot_spread=0.002, prefill_pace=0.002)
    fast = replace(ep("fast", 2), limit=8, tpot=0.03, tpot_spread=0.003, prefill_pace=0.001)
    assert scorer.score(answer_of(64, "2"), [slow, fast]) == [0.0, 0.0]
    busy = replace(fast, limit=16, in_flight=12)  # free slots: no queue; 12 x 0.128 s of stall
    assert scorer.score(answer_of(64, "3"), [slow, busy]) == [1.0, 0.0]


def test_a_cold_prompt_that_would_evict_what_others_find_cached_costs_its_prefill_again() -> None:
    """An idle rival would end the answer 0.08 s sooner (2.06 s against 1.98 s, noiseless
    paces), after computing the 128-token prompt (0.128 s). With room in its cache the holder
    yields. With its cache full, the prompt evicts 128 tokens' worth of blocks, found again
    as often as routed blocks are found cached (90 % here): 0.115 s more there, and the
    holder keeps the request."""
    scorer = PrefixCacheScorer(clock=clock, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("a"))
    scorer.stats = PrefixStats(picks=10, prompt_blocks=100, hit_blocks=90)
    holder = replace(ep("a", 0), limit=8, tpot=0.032, tpot_spread=1e-9, prefill_pace=0.001)
    other = replace(ep("b", 0), limit=8, tpot=0.029, tpot_spread=1e-9, prefill_pace=0.001)
    assert scorer.score(answer_of(64, "2"), [holder, other]) == [0.0, 0.0]
    scorer.index.set_capacity("b", 8)
    scorer.index.add("b", list(range(1000, 1008)))  # 8 blocks of other prompts: no room left
    assert scorer.index.room("b") == 0
    assert scorer.score(answer_of(64, "3"), [holder, other]) == [1.0, 0.0]


def test_paces_that_differ_within_their_noise_keep_the_holder() -> None:
    """Two equal GPUs: the holder's pace reads 4 ms slower, because a cold prompt it computed
    stalled a sample; each pace strays 4 ms from its samples. The difference is noise: moving
    would cost a cold prefill for nothing. A pace with a single sample (no spread yet) is all
    noise: its holder keeps the request, however slow it reads."""
    scorer = PrefixCacheScorer(clock=clock, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("a"))
    holder = replace(ep("a", 2), limit=8, tpot=0.032, tpot_spread=0.004, prefill_pace=0.001)
    # idle: its cold prefill stalls nothing there
    other = replace(ep("b", 0), limit=8, tpot=0.028, tpot_spread=0.004, prefill_pace=0.001)
    # holder: 0.016 + 64 x 28 ms = 1.81 s at best; other: 0.128 + 64 x 32 ms = 2.18 s at worst
    assert scorer.score(answer_of(64, "2"), [holder, other]) == [1.0, 0.0]
    # a noiseless reading of the same paces: 2.06 s against 1.92 s, the holder would yield
    exact = replace(holder, tpot_spread=1e-9), replace(other, tpot_spread=1e-9)
    assert scorer.score(answer_of(64, "3"), list(exact)) == [0.0, 0.0]
    once = replace(holder, tpot=0.056, tpot_spread=0.0)  # one sample: not trusted yet
    assert scorer.score(answer_of(64, "4"), [once, other]) == [1.0, 0.0]


def test_holders_as_deep_are_not_each_others_rivals() -> None:
    """Two pods hold the whole prompt; one has more prefill queued. Both keep their score (the
    other scorers spread load over them); an idle pod that holds nothing is the rival of each."""
    t = Clock()
    scorer = PrefixCacheScorer(clock=t, cold_spread=0.0)
    scorer.picked(req(SYSTEM), ep("a"))
    scorer.picked(req(SYSTEM, rid="1"), ep("b"))
    a = replace(ep("a", 1), limit=8, tpot=0.01, prefill_pace=0.001)
    b = replace(ep("b", 1), limit=8, tpot=0.01, prefill_pace=0.001)
    idle = replace(ep("c", 0), limit=8, tpot=0.01, prefill_pace=0.001)
    scorer.picked(req(b"X" * 64 * 5, rid="2"), a)  # 80 tokens queued on a: 0.08 s
    assert scorer.score(req(SYSTEM, rid="3"), [a, b, idle]) == [1.0, 1.0, 0.0]
    scorer.picked(req(b"Y" * 64 * 10, rid="4"), a)  # 0.24 s on a, more than 0.13 s on c
    assert scorer.score(req(SYSTEM, rid="5"), [a, b, idle]) == [0.0, 1.0, 0.0]


def test_the_profile_says_how_much_of_a_prompt_each_endpoint_holds() -> None:
    """Admission's KV room asks the profile before the pick: the prompt tokens its prefix
    scorer credits each endpoint with (nothing before any pick, the leading blocks after)."""
    profile = build_default_profiles(random.Random(3), clock)["gpu-aware"]
    a, b = ep("a"), ep("b")
    first = SchedulingRequest("r1", "m", prompt_tokens=144, prompt=SYSTEM + b"q1" * 40)
    assert profile.held_tokens(first) == {}
    picked = profile.schedule(first, [a, b])[0].address
    again = SchedulingRequest("r2", "m", prompt_tokens=144, prompt=SYSTEM + b"q2" * 40)
    held = profile.held_tokens(again)
    assert set(held) == {picked}
    assert held[picked] == 128  # the 8 shared 16-token blocks, not the new question
    assert profile.held_tokens(req(b"Z" * BLOCK * 9)) == {}
