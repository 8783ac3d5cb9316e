"""The token-aware affinity gate: queued uncached prefill per pod, drained at a learned rate."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TypedDict

import pytest

from epp.kvcache.hashing import BlockHasher
from epp.kvcache.index import KvBlockIndex
from epp.kvcache.prefill import PrefillTracker
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.precise_prefix import PreciseCacheScorer
from epp.tokenization import Tokenizer
from epp.types import Endpoint, EndpointMetrics, EndpointState

TOKENIZER = Path(__file__).resolve().parents[2] / "epp" / "assets" / "tiny-tokenizer"


class _Homes(TypedDict):
    cold_home: float
    cold_spread: float


# cold prompts get homes (`coldPromptHome`) instead of the spread (the default)
HOMES = _Homes(cold_home=0.5, cold_spread=0.0)


def test_rate_is_learned_from_busy_runs_of_stored_tokens() -> None:
    t = PrefillTracker(prior=1000.0, smoothing=1.0, busy_gap_s=0.1, window_s=0.25)
    assert t.rate("p") == 1000.0 and not t.learned("p")
    ts = 100.0
    for _ in range(31):  # a busy pod: 512 tokens every 20 ms of its clock = 25,600 tokens/s
        t.stored("p", 512, ts)
        ts += 0.02
    assert t.learned("p") and t.rate("p") == pytest.approx(25_600, rel=0.01)
    t.stored("p", 16, ts + 5.0)  # after an idle pause: a new run, no sample from the pause
    assert t.rate("p") == pytest.approx(25_600, rel=0.01)


def test_queued_prefill_drains_at_the_pod_rate() -> None:
    t = PrefillTracker(prior=1000.0)
    t.add("p", 3000, now=10.0)
    assert t.queued("p", 10.0) == 3000 and t.wait("p", 10.0, extra=1000) == 4.0
    assert t.queued("p", 12.0) == 1000 and t.queued("p", 20.0) == 0.0
    t.forget("p")
    assert t.queued("p", 20.0) == 0.0


def test_the_longest_wait_bounds_every_pods_wait_and_late_names_those_over_budget() -> None:
    """`longest_wait` may say more than the longest wait (it is what lets the gate skip its
    pass over the holders), never less, through adds, drains, rate changes and refreshes;
    `late` names exactly the pods whose wait is over the budget."""
    rng = random.Random(5)
    t = PrefillTracker(prior=2000.0, smoothing=1.0, busy_gap_s=0.1, window_s=0.25)
    pods = [f"p{i}" for i in range(8)]
    ts = dict.fromkeys(pods, 0.0)
    now, over = 0.0, 0
    for step in range(3000):
        now += rng.choice((0.0, 0.001, 0.01, 0.2))
        pod = rng.choice(pods)
        if rng.random() < 0.5:
            t.add(pod, rng.choice((0.0, 50.0, 900.0, 4000.0)), now)
        else:  # the pod's events: busy runs whose rate is learned, slower or faster
            ts[pod] += rng.choice((0.02, 0.05, 0.3))
            t.stored(pod, rng.choice((16, 256, 2048)), ts[pod])
        extra = rng.choice((0.0, 100.0, 1000.0))
        bound = t.longest_wait(now, extra)
        waits = {p: t.wait(p, now, extra) for p in pods}
        assert bound >= max(waits.values()) - 1e-9, step
        budget = rng.choice((0.1, 0.5, 2.0))
        asks = [(i, p, extra) for i, p in enumerate(pods)]
        assert t.late(now, budget, asks) == [i for i, p in enumerate(pods) if waits[p] > budget]
        over += bound > budget
    assert t.learned("p0") and 0 < over < 3000  # both sides of the budget were tried
    t.add("p0", 10_000.0, now)
    assert t.longest_wait(now) >= t.wait("p0", now) > 0.0
    assert t.longest_wait(now + 60.0) == 0.0  # refreshed: everything has drained
    # a rate learned slower than the one a refresh drained the queue at: the bound follows
    t = PrefillTracker(prior=10_000.0, smoothing=1.0, busy_gap_s=0.1, window_s=0.25)
    t.add("p", 5000.0, now=0.0)
    assert t.longest_wait(0.6) == 0.0  # drained at the prior's 10,000 tokens/s
    for k in range(8):  # then its events show 320 tokens/s
        t.stored("p", 16, 0.05 * k)
    assert t.rate("p") == pytest.approx(320.0)
    assert t.longest_wait(0.6) >= t.wait("p", 0.6) > 14.0


def test_a_warm_pod_with_too_much_queued_prefill_loses_its_affinity() -> None:
    clock = [0.0]
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    prefill = PrefillTracker(prior=10_000.0)
    scorer = PreciseCacheScorer(
        tok, hasher, KvBlockIndex(), ttft_budget=0.5, prefill=prefill, clock=lambda: clock[0]
    )
    body = {"messages": [{"role": "user", "content": "the shared prefix words " * 200}]}
    ids = tok.prompt_ids(body)
    assert ids is not None and len(ids) > 1000
    scorer.index.store("warm:1", hasher.hashes(ids))
    pods = [EndpointState(Endpoint(a, a, "pool")) for a in ("warm:1", "cold:1")]
    request = SchedulingRequest("r", "m", payload=body)
    assert scorer.score(request, pods)[0] > 0.9
    # 6,000 uncached tokens already queued on the warm pod: 0.6 s at its rate > 0.5 s budget
    prefill.add("warm:1", 6_000, clock[0])
    assert scorer.score(SchedulingRequest("r2", "m", payload=body), pods) == [0.0, 0.0]
    assert scorer.stats.gated == 1
    clock[0] = 0.2  # 2,000 tokens prefilled since: 0.4 s left, the affinity holds again
    assert scorer.score(SchedulingRequest("r3", "m", payload=body), pods)[0] > 0.9


def test_each_pick_queues_only_what_its_pod_did_not_hold() -> None:
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    scorer = PreciseCacheScorer(tok, hasher, KvBlockIndex(), clock=lambda: 0.0)
    body = {"messages": [{"role": "user", "content": "words to place " * 100}]}
    ids = tok.prompt_ids(body)
    assert ids is not None
    hashes = hasher.hashes(ids)
    scorer.index.store("warm:1", hashes)
    pods = [EndpointState(Endpoint(a, a, "pool")) for a in ("warm:1", "cold:1")]
    for address, state in (("warm:1", pods[0]), ("cold:1", pods[1])):
        request = SchedulingRequest(address, "m", payload=body)
        scorer.score(request, pods)
        scorer.picked(request, state)
    assert scorer.prefill.queued("warm:1", 0.0) == len(ids) - 16 * len(hashes)
    assert scorer.prefill.queued("cold:1", 0.0) == len(ids)


def test_a_cold_prompt_has_the_same_home_in_every_replica() -> None:
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    pods = [EndpointState(Endpoint(f"10.0.0.{i}:8000", f"p{i}", "pool")) for i in range(8)]

    def replica() -> PreciseCacheScorer:
        return PreciseCacheScorer(tok, hasher, KvBlockIndex(), clock=lambda: 0.0, **HOMES)

    homes = set()
    for n in range(6):
        body = {"messages": [{"role": "user", "content": f"system prompt {n} words " * 40}]}
        one = replica().score(SchedulingRequest("a", "m", payload=body), pods)
        other = replica().score(SchedulingRequest("b", "m", payload=body), pods[::-1])
        assert sorted(one)[-1] == 0.5 and sorted(one)[:-1] == [0.0] * 7
        home = pods[one.index(0.5)]
        assert other[pods[::-1].index(home)] == 0.5  # the other replica, candidates reordered
        homes.add(home.address)
    assert len(homes) > 1  # prompts spread over homes


def test_a_holder_beats_the_home_and_a_saturated_home_is_passed_over() -> None:
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    prefill = PrefillTracker(prior=10_000.0)
    scorer = PreciseCacheScorer(
        tok, hasher, KvBlockIndex(), ttft_budget=0.5, prefill=prefill, clock=lambda: 0.0, **HOMES
    )
    pods = [EndpointState(Endpoint(f"10.0.0.{i}:8000", f"p{i}", "pool")) for i in range(4)]
    body = {"messages": [{"role": "user", "content": "cold prompt words " * 60}]}
    ids = tok.prompt_ids(body)
    assert ids is not None
    scores = scorer.score(SchedulingRequest("r1", "m", payload=body), pods)
    home = scores.index(0.5)
    prefill.add(pods[home].address, 10_000, 0.0)  # 1 s of prefill queued there
    assert scorer.score(SchedulingRequest("r2", "m", payload=body), pods) == [0.0] * 4
    other = pods[(home + 1) % 4].address
    scorer.index.store(other, hasher.hashes(ids))
    scores = scorer.score(SchedulingRequest("r3", "m", payload=body), pods)
    assert scores[(home + 1) % 4] > 0.9 and scores[home] == 0.0
    assert scorer.stats.homed == 2


def test_a_cold_prompt_passes_over_a_home_loaded_past_the_bound() -> None:
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    body = {"messages": [{"role": "user", "content": "a prompt nobody holds " * 40}]}

    def home(loads: list[int], bound: float = 1.25) -> tuple[int, PreciseCacheScorer]:
        scorer = PreciseCacheScorer(
            tok, hasher, KvBlockIndex(), clock=lambda: 0.0, home_load_bound=bound, **HOMES
        )
        pods = [
            EndpointState(Endpoint(f"10.0.0.{i}:8000", f"p{i}", "pool"), in_flight=n)
            for i, n in enumerate(loads)
        ]
        scores = scorer.score(SchedulingRequest("r", "m", payload=body), pods)
        assert sorted(scores) == [0.0, 0.0, 0.0, 0.5]
        return scores.index(0.5), scorer

    first, scorer = home([2, 2, 2, 2])  # even loads: rendezvous decides
    assert scorer.stats.homed_past == 0
    loads = [1, 1, 1, 1]
    loads[first] = 6  # over ceil(1.25 x 10 / 4) = 4: the next in its order, never the first
    moved, scorer = home(loads)
    assert moved != first and scorer.stats.homed_past == 1
    loads = [3, 3, 3, 3]
    loads[first] = 4  # under ceil(1.25 x 14 / 4) = 5: stays
    assert home(loads)[0] == first
    assert home([9 if i == first else 0 for i in range(4)], bound=0.0)[0] == first  # no bound


def test_a_prefix_whose_tail_was_evicted_is_rebuilt_where_its_head_is() -> None:
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    scorer = PreciseCacheScorer(tok, hasher, KvBlockIndex(), clock=lambda: 0.0, **HOMES)
    pods = [EndpointState(Endpoint(f"10.0.0.{i}:8000", f"p{i}", "pool")) for i in range(4)]
    body = {"messages": [{"role": "user", "content": "a long prefix partly evicted " * 60}]}
    ids = tok.prompt_ids(body)
    assert ids is not None
    hashes = hasher.hashes(ids)
    for head in range(1, len(hashes) // 2):  # whichever block the match stops at
        scorer.index.clear("10.0.0.2:8000")
        scorer.index.store("10.0.0.2:8000", hashes[:head])
        scores = scorer.score(SchedulingRequest(f"r{head}", "m", payload=body), pods)
        assert scores.index(max(scores)) == 2
        assert scores[2] == pytest.approx(head / len(hashes) + 0.5 * (1 - head / len(hashes)))


def test_a_prompt_evicted_everywhere_is_rebuilt_where_it_was_built_last() -> None:
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    # the events alone: with remembered picks the pod it was sent to would still hold it
    scorer = PreciseCacheScorer(
        tok, hasher, KvBlockIndex(), clock=lambda: 0.0, remember_picks=False, **HOMES
    )
    pods = [EndpointState(Endpoint(f"10.0.0.{i}:8000", f"p{i}", "pool")) for i in range(4)]
    body = {"messages": [{"role": "user", "content": "built somewhere else " * 60}]}

    def home(n: int, loads: tuple[int, ...] = (0, 0, 0, 0)) -> int:
        here = [EndpointState(p.endpoint, in_flight=x) for p, x in zip(pods, loads, strict=True)]
        scores = scorer.score(SchedulingRequest(f"r{n}", "m", payload=body), here)
        return scores.index(max(scores))

    hashed = home(1)
    elsewhere = (hashed + 1) % 4
    request = SchedulingRequest("r2", "m", payload=body)
    scorer.score(request, pods)
    scorer.picked(request, pods[elsewhere])  # the other scorers outweighed the home
    assert home(3) == elsewhere  # nothing held anywhere: where it was built last
    busy = tuple(9 if i == elsewhere else 0 for i in range(4))
    assert home(4, busy) == hashed  # that pod over the load bound: the hashed order again


def _scorer_and_pods(remember: bool) -> tuple[PreciseCacheScorer, list[EndpointState]]:
    tok = Tokenizer.from_dir(TOKENIZER)
    scorer = PreciseCacheScorer(
        tok, BlockHasher(16, "sha256", "0"), KvBlockIndex(), clock=lambda: 0.0,
        cold_home=0.0, cold_spread=0.0, remember_picks=remember,
    )  # fmt: skip
    pods = [EndpointState(Endpoint(f"10.0.0.{i}:8000", f"p{i}", "pool")) for i in range(4)]
    return scorer, pods


def test_a_pod_sent_a_prompt_keeps_it_while_its_events_say_the_tail_is_evicted() -> None:
    body = {"messages": [{"role": "user", "content": "a system prompt under eviction " * 60}]}
    for remember in (True, False):
        scorer, pods = _scorer_and_pods(remember)
        first = SchedulingRequest("r1", "m", payload=body)
        keys = scorer.block_hashes(first)
        scorer.score(first, pods)
        scorer.picked(first, pods[2])
        scorer.index.store("10.0.0.2:8000", keys)  # built: its events report every block
        scorer.index.remove("10.0.0.2:8000", keys[len(keys) // 3 :])  # tail first, as vLLM
        scores = scorer.score(SchedulingRequest("r2", "m", payload=body), pods)
        if remember:  # rebuilt where it was sent, as the approximate index would
            assert scores[2] == 1.0
        else:  # the events alone: a third of it
            assert scores[2] == pytest.approx(len(keys) // 3 / len(keys))


def test_a_restarted_pod_forgets_what_it_was_sent() -> None:
    scorer, pods = _scorer_and_pods(remember=True)
    body = {"messages": [{"role": "user", "content": "sent before the restart " * 60}]}
    first = SchedulingRequest("r1", "m", payload=body)
    scorer.score(first, pods)
    scorer.picked(first, pods[1])
    assert scorer.score(SchedulingRequest("r2", "m", payload=body), pods)[1] == 1.0
    scorer.index.clear("10.0.0.1:8000")  # what the subscriber does on a restart or a gap
    assert scorer.score(SchedulingRequest("r3", "m", payload=body), pods) == [0.0] * 4


def test_remembered_picks_are_bounded_by_the_pods_kv_cache() -> None:
    scorer, pods = _scorer_and_pods(remember=True)
    small = EndpointState(
        pods[0].endpoint, metrics=EndpointMetrics(0, 0, 0.0, block_size=16, num_gpu_blocks=20)
    )
    prompts = [
        {"messages": [{"role": "user", "content": f"prompt number {n} " * 40}]} for n in range(5)
    ]
    for n, body in enumerate(prompts):
        request = SchedulingRequest(f"r{n}", "m", payload=body)
        scorer.score(request, [small])
        scorer.picked(request, small)
    assert scorer.memory is not None and len(scorer.memory) <= 20  # its LRU holds 20 blocks
    newest = scorer.score(SchedulingRequest("again", "m", payload=prompts[-1]), [small])
    oldest = scorer.score(SchedulingRequest("first", "m", payload=prompts[0]), [small])
    assert newest[0] > 0.0 and oldest == [0.0]


def test_a_warm_pod_behind_a_long_queue_yields_as_the_approximate_scorer_would(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The load gate `prefix-cache-scorer` applies: the warm pod's batch of 8 is full with 6
    more queued, so its first token waits ~0.9 s (7/8 of a typical 100-token answer at 10 ms a
    token) where the idle pod computes the ~600-token prompt in 0.06 s: the holder yields. The
    budget gate counts only queued prefill (none here) and keeps it; with a free slot on the
    warm pod the load gate keeps it too."""
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    body = {"messages": [{"role": "user", "content": "a hot shared prefix " * 50}]}
    ids = tok.prompt_ids(body)
    assert ids is not None and 400 < len(ids) < 1000

    def pods(queued: int) -> list[EndpointState]:
        made = []
        for address, load in (("warm:1", 8 + queued), ("idle:1", 0)):
            waiting = max(queued, 0) if load else 0
            metrics = EndpointMetrics(waiting=waiting, running=min(load, 8), scraped_at=0.0)
            state = EndpointState(
                Endpoint(address, address, "pool"), metrics, in_flight=load, limit=8, tpot=0.01,
                prefill_pace=0.0001, tpot_spread=0.001,
            )  # fmt: skip
            made.append(state)
        return made

    for load_gate, kept in ((True, False), (False, True)):
        scorer = PreciseCacheScorer(
            tok, hasher, KvBlockIndex(), clock=lambda: 0.0, cold_home=0.0, load_gate=load_gate
        )
        scorer.index.store("warm:1", hasher.hashes(ids))
        request = SchedulingRequest("r", "m", payload=body, typical_output_tokens=100)
        with caplog.at_level(logging.DEBUG, logger="epp.scheduling.plugins.precise_prefix"):
            assert (scorer.score(request, pods(queued=6))[0] == 1.0) is kept
        explained = any(m.startswith("request r: holder warm:1") for m in caplog.messages)
        assert explained is not kept  # the explain log names a holder that yields
        caplog.clear()
        assert scorer.stats.yielded == (0 if kept else 1)
        free = SchedulingRequest("r2", "m", payload=body, typical_output_tokens=100)
        assert scorer.score(free, pods(queued=-1))[0] == 1.0  # 7 running: a slot is free


def test_a_cold_prompt_spreads_away_from_queued_prefill_as_the_approximate_scorer_does() -> None:
    """`coldPromptSpread`: a prompt nobody holds goes where its first token comes soonest. Two
    idle pods, 3,000 uncached tokens queued on the first (0.3 s at 10,000 tokens/s): the second
    scores the spread's bonus, the first none; off (the default) both score 0."""
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    body = {"messages": [{"role": "user", "content": "a prompt nobody holds yet " * 40}]}
    pods = [EndpointState(Endpoint(a, a, "pool")) for a in ("busy:1", "idle:1")]
    for spread, expected in ((1.0, [0.0, 1.0]), (0.0, [0.0, 0.0])):
        prefill = PrefillTracker(prior=10_000.0)
        scorer = PreciseCacheScorer(
            tok, hasher, KvBlockIndex(), prefill=prefill, clock=lambda: 0.0, cold_home=0.0,
            cold_spread=spread,
        )  # fmt: skip
        prefill.add("busy:1", 3_000, 0.0)
        scores = scorer.score(SchedulingRequest("r", "m", payload=body), pods)
        assert scores == pytest.approx(expected)


def test_a_partly_held_cold_prompt_with_both_spread_and_home_goes_to_its_holder() -> None:
    """Both cold-prompt rules on: the spread moves the scores first, and the home still goes to
    the pod holding the prompt's longest part (found before the spread; finding it after raised
    ValueError, a 500 for the request)."""
    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    body = {"messages": [{"role": "user", "content": "a prompt evicted from its tail " * 40}]}
    request = SchedulingRequest("r", "m", payload=body)
    scorer = PreciseCacheScorer(
        tok, hasher, KvBlockIndex(), clock=lambda: 0.0, cold_spread=1.0, remember_picks=False
    )
    keys = scorer.block_hashes(request)
    scorer.index.store("head:1", keys[: len(keys) // 3])  # its tail evicted
    scorer.prefill.add("other:1", 3_000, 0.0)  # the spread prefers the idle pods
    pods = [EndpointState(Endpoint(a, a, "pool")) for a in ("other:1", "head:1", "idle:1")]
    scores = scorer.score(request, pods)
    assert max(scores) == scores[1] and scores[1] > scores[2] > scores[0] == 0.0


def test_a_cold_prompts_home_is_no_hold_on_a_warm_only_offer() -> None:
    """A cold prompt's home scores 0.5, a hold's mark: the profile must not take it for one,
    or a held request would join the home's full batch. Once the pod holds it, it is a hold."""
    from epp.scheduling.plugins.max_score import MaxScorePicker
    from epp.scheduling.scheduler import Profile, WeightedScorer

    tok = Tokenizer.from_dir(TOKENIZER)
    hasher = BlockHasher(16, "sha256", "0")
    scorer = PreciseCacheScorer(tok, hasher, KvBlockIndex(), clock=lambda: 0.0, **HOMES)
    profile = Profile("p", [], [WeightedScorer(scorer, 1.0)], MaxScorePicker(random.Random(0)))
    pods = [EndpointState(Endpoint(f"10.0.0.{i}:8000", f"p{i}", "pool")) for i in range(4)]
    body = {"messages": [{"role": "user", "content": "cold prompt words " * 60}]}
    scores = scorer.score(SchedulingRequest("probe", "m", payload=body), pods)
    home = pods[scores.index(0.5)].address
    # the home offered warm-only (a full batch): dropped, the others stay
    request = SchedulingRequest("r", "m", payload=body)
    picked = profile.schedule(request, pods, warm_only=frozenset({home}))[0]
    assert picked.address != home
    assert scorer.last_cold
    ids = tok.prompt_ids(body)
    assert ids is not None
    scorer.index.store(home, hasher.hashes(ids))
    again = SchedulingRequest("again", "m", payload=body)
    assert profile.schedule(again, pods, warm_only=frozenset({home}))[0].address == home
    assert not scorer.last_cold
