"""Profiles on hand-built snapshots: filters, weights, observers, explain log, selection."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest

from epp.api.seed import STRATEGIES
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.max_score import MaxScorePicker
from epp.scheduling.registry import (
    CRITICAL_PROFILE,
    DEFAULT_PROFILE,
    build_default_profiles,
    prefix_scorers,
    select_profile,
)
from epp.scheduling.scheduler import Profile, WeightedScorer
from epp.types import Endpoint, EndpointMetrics, EndpointState

NOW = 1000.0
REQ = SchedulingRequest("r1", "m", prompt=b"hello world " * 40)


def clock() -> float:
    return NOW


def ep(
    address: str, waiting: int = 0, kv: float = 0.0, in_flight: int = 0, age: float | None = 0.01
) -> EndpointState:
    scraped = 0.0 if age is None else NOW - age
    return EndpointState(
        Endpoint(address, address, "ns/pool"),
        EndpointMetrics(waiting, 0, kv, scraped_at=scraped),
        in_flight=in_flight,
    )


class Fixed:
    def __init__(self, name: str, scores: list[float]) -> None:
        self.name = name
        self.scores = scores

    def score(self, request: SchedulingRequest, candidates: Sequence[EndpointState]) -> list[float]:
        return self.scores[: len(candidates)]


class Keep:
    name = "keep"

    def __init__(self, addresses: set[str]) -> None:
        self.addresses = addresses

    def filter(
        self, request: SchedulingRequest, candidates: Sequence[EndpointState]
    ) -> list[EndpointState]:
        return [c for c in candidates if c.address in self.addresses]


class Recorder:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def picked(self, request: SchedulingRequest, endpoint: EndpointState) -> None:
        self.seen.append(endpoint.address)


PODS = [ep("a"), ep("b"), ep("c")]


def test_weighted_sum_decides() -> None:
    profile = Profile(
        "t",
        (),
        (
            WeightedScorer(Fixed("x", [1.0, 0.0, 0.5]), 1.0),
            WeightedScorer(Fixed("y", [0.0, 1.0, 0.5]), 3.0),
        ),
        MaxScorePicker(random.Random(1)),
    )
    assert profile.schedule(REQ, PODS)[0].address == "b"


def test_scores_are_clamped_including_nan() -> None:
    profile = Profile(
        "t",
        (),
        (WeightedScorer(Fixed("x", [7.0, float("nan"), -3.0]), 1.0),),
        MaxScorePicker(random.Random(1)),
    )
    totals, _, _ = profile._score(REQ, PODS, False)
    assert totals == [1.0, 0.0, 0.0]


def test_scorer_with_wrong_length_is_a_bug() -> None:
    profile = Profile("t", (), (WeightedScorer(Fixed("x", [1.0]), 1.0),), MaxScorePicker())
    with pytest.raises(ValueError, match="returned 1 scores"):
        profile.schedule(REQ, PODS)


def test_filter_that_empties_is_skipped() -> None:
    rec = Recorder()
    profile = Profile("t", (Keep(set()), Keep({"c"})), (), MaxScorePicker(random.Random(1)), (rec,))
    assert profile.schedule(REQ, PODS)[0].address == "c"
    assert rec.seen == ["c"]


def test_observers_learn_the_primary_only() -> None:
    rec = Recorder()
    profile = Profile(
        "t", (), (WeightedScorer(Fixed("x", [0.2, 0.9, 0.5]), 1.0),), MaxScorePicker(), (rec,)
    )
    picked = profile.schedule(REQ, PODS, 2)
    assert [p.address for p in picked] == ["b", "c"]
    assert rec.seen == ["b"]


def test_explain_log_lists_every_endpoint_and_plugin(caplog: pytest.LogCaptureFixture) -> None:
    profile = build_default_profiles(random.Random(1), clock)[DEFAULT_PROFILE]
    with caplog.at_level(logging.DEBUG, logger="epp.scheduling.scheduler"):
        picked = profile.schedule(REQ, [ep("a", waiting=3), ep("b")])
    text = caplog.text
    assert f"picked {picked[0].address}" in text
    for name in (
        "prefix-cache-scorer",
        "queue-scorer",
        "in-flight-count-scorer",
        "kv-cache-utilization-scorer",
    ):
        assert f"{name}=" in text
    assert "  a total=" in text and "  b total=" in text


def test_no_explain_log_when_debug_is_off(caplog: pytest.LogCaptureFixture) -> None:
    profile = build_default_profiles(random.Random(1), clock)[DEFAULT_PROFILE]
    with caplog.at_level(logging.INFO, logger="epp.scheduling.scheduler"):
        profile.schedule(REQ, PODS)
    assert caplog.text == ""


def test_every_seed_strategy_has_a_profile() -> None:
    profiles = build_default_profiles(random.Random(1), clock)
    for strategy in STRATEGIES:
        assert profiles[strategy].name == strategy
    assert CRITICAL_PROFILE in profiles


def test_select_profile() -> None:
    profiles = build_default_profiles(random.Random(1), clock)
    assert select_profile(profiles, "gpu-aware", 0).name == "gpu-aware"
    assert select_profile(profiles, "gpu-aware", 1).name == CRITICAL_PROFILE
    assert select_profile(profiles, "prefix-cache-aware", 1).name == CRITICAL_PROFILE
    assert select_profile(profiles, "round-robin", 1).name == "round-robin"  # baselines stay pure
    assert select_profile(profiles, "least-request", -1).name == "least-request"
    assert select_profile(profiles, "no-such", 0).name == DEFAULT_PROFILE


@pytest.mark.parametrize(
    "name",
    [
        "gpu-aware",
        "critical",
        "least-request",
        "queue-aware",
        "kv-cache-aware",
        "prefix-cache-aware",
    ],
)
def test_profiles_avoid_the_loaded_pod(name: str) -> None:
    profile = build_default_profiles(random.Random(1), clock)[name]
    pods = [ep("busy", waiting=8, kv=0.9, in_flight=12), ep("idle", waiting=0, kv=0.1, in_flight=1)]
    assert profile.schedule(REQ, pods)[0].address == "idle"


def test_one_endpoint() -> None:
    for profile in build_default_profiles(random.Random(1), clock).values():
        assert profile.schedule(REQ, [ep("only", waiting=50, age=None)])[0].address == "only"


def test_all_equal_spreads_at_random() -> None:
    profile = build_default_profiles(random.Random(1), clock)[DEFAULT_PROFILE]
    seen = Counter(
        profile.schedule(SchedulingRequest(str(i), "m"), PODS)[0].address for i in range(300)
    )
    assert set(seen) == {"a", "b", "c"} and min(seen.values()) > 60


def test_no_metrics_yet_balances_on_in_flight() -> None:
    # before the first scrape every pod is stale; EPP-side counters still spread the load
    profile = build_default_profiles(random.Random(1), clock)[DEFAULT_PROFILE]
    pods = {a: ep(a, age=None) for a in ("a", "b", "c", "d")}
    for i in range(20):
        chosen = profile.schedule(SchedulingRequest(str(i), "m"), list(pods.values()))[0]
        pods[chosen.address] = replace(chosen, in_flight=chosen.in_flight + 1)
    assert sorted(p.in_flight for p in pods.values()) == [5, 5, 5, 5]


def test_stale_pod_is_not_a_hot_spot() -> None:
    # the stale pod's last scrape said "empty"; live pods with a small queue must win
    profile = build_default_profiles(random.Random(1), clock)[DEFAULT_PROFILE]
    pods = [ep("stale", age=5.0), ep("live1", waiting=1, kv=0.2), ep("live2", waiting=2, kv=0.2)]
    seen = Counter(
        profile.schedule(SchedulingRequest(str(i), "m"), pods)[0].address for i in range(50)
    )
    assert seen["stale"] == 0


def test_one_thousand_endpoints_find_the_idle_one() -> None:
    pods = [
        ep(f"10.1.{i // 250}.{i % 250}:8000", waiting=3, kv=0.5, in_flight=4) for i in range(1000)
    ]
    pods[637] = ep(pods[637].address, waiting=0, kv=0.1, in_flight=0)
    profiles = build_default_profiles(random.Random(1), clock)
    for name in ("gpu-aware", "critical", "least-request"):
        assert profiles[name].schedule(REQ, pods)[0].address == pods[637].address
    assert len({p.address for p in profiles["gpu-aware"].schedule(REQ, pods, 5)}) == 5


def test_critical_prefers_the_emptiest_pod_over_its_prefix_holder() -> None:
    profiles = build_default_profiles(random.Random(1), clock)
    holder, empty = ep("holder", waiting=2, in_flight=3), ep("empty", waiting=0, in_flight=0)
    profiles[DEFAULT_PROFILE].schedule(REQ, [holder])  # the holder now has REQ's prefix
    assert profiles[DEFAULT_PROFILE].schedule(REQ, [holder, empty])[0].address == "holder"
    assert profiles[CRITICAL_PROFILE].schedule(REQ, [holder, empty])[0].address == "empty"


def test_prefix_scorers_are_listed_once() -> None:
    profiles = build_default_profiles(random.Random(1), clock)
    scorers = prefix_scorers(profiles)
    assert len(scorers) == 1  # gpu-aware, critical and prefix-cache-aware share one index
    profiles[DEFAULT_PROFILE].schedule(REQ, PODS)
    assert scorers[0].stats.picks == 1 and len(scorers[0].index) > 0


class Holding(Fixed):
    affinity = True  # scores are holds on a cached prefix (as the prefix scorers')


def test_a_warm_only_offer_is_taken_only_where_an_affinity_scorer_holds_it() -> None:
    """Admission offers a held request's full batches as warm-only: worth joining for the
    prompt they cache, and only then. Load-like scores alone never pick one."""
    pods = [ep("10.0.0.1:8000"), ep("10.0.0.2:8000"), ep("10.0.0.3:8000")]
    loads = Fixed("load", [0.2, 1.0, 0.9])  # the full ones look best to a load-like scorer

    def pick(holds: list[float], warm: frozenset[str]) -> str:
        profile = Profile(
            "p",
            [],
            [WeightedScorer(Holding("prefix", holds), 3.0), WeightedScorer(loads, 1.0)],
            MaxScorePicker(random.Random(0)),
        )
        request = replace(REQ, warm_only=warm)
        picked = profile.schedule(request, pods)[0].endpoint.address
        # the director's way: the offer's warm-only set beside the request it built before
        assert profile.schedule(REQ, pods, warm_only=warm)[0].endpoint.address == picked
        return picked

    warm = frozenset({"10.0.0.2:8000", "10.0.0.3:8000"})
    assert pick([0.0, 0.0, 0.0], warm) == "10.0.0.1:8000"  # no hold: the room's offer only
    assert pick([0.0, 0.4, 0.0], warm) == "10.0.0.1:8000"  # under half the prompt: no hold
    assert pick([0.0, 0.0, 0.8], warm) == "10.0.0.3:8000"  # a hold: joining the batch pays
    assert pick([0.0, 0.0, 0.0], frozenset()) == "10.0.0.2:8000"  # not warm-only: as before
    # all offers warm-only and none held: nothing would be left, so nothing is dropped
    assert pick([0.0, 0.0, 0.0], frozenset(p.endpoint.address for p in pods)) == "10.0.0.2:8000"


def test_the_explain_log_shows_the_candidates_left_after_warm_only_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each row of the explanation is a kept candidate with its own scores."""
    pods = [ep("10.0.0.2:8000"), ep("10.0.0.1:8000")]  # the warm-only one first
    scorers = [
        WeightedScorer(Holding("prefix", [0.0, 0.0]), 3.0),
        WeightedScorer(Fixed("load", [0.9, 0.2]), 1.0),
    ]
    profile = Profile("p", [], scorers, MaxScorePicker(random.Random(0)))
    request = replace(REQ, warm_only=frozenset({"10.0.0.2:8000"}))
    with caplog.at_level(logging.DEBUG, logger="epp.scheduling.scheduler"):
        assert profile.schedule(request, pods)[0].endpoint.address == "10.0.0.1:8000"
    rows = caplog.records[-1].getMessage().splitlines()[1:]
    assert rows == ["  10.0.0.1:8000 total=0.200 prefix=0.000 load=0.200"]


def test_a_cold_prompts_spread_over_the_pods_is_no_hold_on_a_warm_only_offer() -> None:
    """The prefix scorer spreads a cold prompt (nobody holds half of it) with bonuses up to a
    full score, towards pods with no prefill queued: a full batch among them is still no place
    for it. Once that batch holds the prompt, the hold takes it."""
    from epp.scheduling.plugins.in_flight import InFlightScorer
    from epp.scheduling.plugins.prefix_cache import PrefixCacheScorer
    from epp.scheduling.plugins.prefix_index import block_hashes
    from epp.types import CHARS_PER_TOKEN

    prefix = PrefixCacheScorer(clock=clock)
    profile = Profile(
        "p",
        [],
        [WeightedScorer(prefix, 6.0), WeightedScorer(InFlightScorer(speed_aware=False), 3.0)],
        MaxScorePicker(random.Random(0)),
        [prefix],
    )
    pods = [ep("10.0.0.1:8000", in_flight=2), ep("10.0.0.2:8000", in_flight=6)]
    full = frozenset({"10.0.0.2:8000"})
    prefix.prefill.add_seconds("10.0.0.1:8000", 0.5, NOW)  # a prefill queued there
    cold = SchedulingRequest("cold", "m", prompt=b"a prompt nobody was sent " * 40)
    assert prefix.score(cold, pods) == [0.0, 1.0]  # the spread favours the full batch
    assert profile.schedule(cold, pods, warm_only=full)[0].endpoint.address == "10.0.0.1:8000"
    # once the full batch holds the prompt (and the pod it went to no longer does), it is a
    # hold: the request joins that batch
    prefix.index.forget("10.0.0.1:8000")
    chars = prefix.block_size_tokens * CHARS_PER_TOKEN
    prefix.index.add("10.0.0.2:8000", block_hashes("m", cold.prompt, chars, prefix.max_blocks))
    again = replace(cold, request_id="again")
    assert prefix.score(again, pods)[1] == 1.0
    assert profile.schedule(again, pods, warm_only=full)[0].endpoint.address == "10.0.0.2:8000"
