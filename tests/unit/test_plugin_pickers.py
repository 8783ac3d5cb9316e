"""Pickers: max-score with random tie-break, weighted random, random, round-robin."""

from __future__ import annotations

import random
from collections import Counter

from epp.scheduling.plugins.max_score import MaxScorePicker
from epp.scheduling.plugins.random_picker import RandomPicker
from epp.scheduling.plugins.round_robin import RoundRobinPicker
from epp.scheduling.plugins.weighted_random import WeightedRandomPicker
from epp.types import Endpoint, EndpointState

PODS = [EndpointState(Endpoint(a, a, "ns/pool")) for a in ("a", "b", "c", "d")]


def names(states: list[EndpointState]) -> list[str]:
    return [s.address for s in states]


def test_max_score_picks_best() -> None:
    assert names(MaxScorePicker(random.Random(1)).pick(PODS, [0.1, 2.0, 0.5, 1.9], 1)) == ["b"]


def test_max_score_breaks_ties_at_random() -> None:
    picker = MaxScorePicker(random.Random(1))
    seen = Counter(picker.pick(PODS, [1.0, 3.0, 3.0, 3.0], 1)[0].address for _ in range(600))
    assert set(seen) == {"b", "c", "d"}
    assert min(seen.values()) > 150


def test_max_score_with_fallbacks_is_ordered() -> None:
    picked = MaxScorePicker(random.Random(1)).pick(PODS, [0.1, 2.0, 0.5, 1.9], 3)
    assert names(picked) == ["b", "d", "c"]


def test_weighted_random_follows_scores() -> None:
    picker = WeightedRandomPicker(random.Random(5))
    seen = Counter(picker.pick(PODS, [3.0, 1.0, 0.0, 0.0], 1)[0].address for _ in range(4000))
    assert seen["c"] == seen["d"] == 0
    assert 0.70 < seen["a"] / 4000 < 0.80  # 3 : 1


def test_weighted_random_all_zero_is_uniform_and_without_replacement() -> None:
    picker = WeightedRandomPicker(random.Random(5))
    seen = Counter(picker.pick(PODS, [0.0] * 4, 1)[0].address for _ in range(4000))
    assert len(seen) == 4 and min(seen.values()) > 850
    assert sorted(names(picker.pick(PODS, [1.0, 1.0, 0.0, 1.0], 4))[:3]) == ["a", "b", "d"]


def test_random_picker_uniform() -> None:
    picker = RandomPicker(random.Random(2))
    seen = Counter(picker.pick(PODS, [9.0, 0, 0, 0], 1)[0].address for _ in range(4000))
    assert len(seen) == 4 and min(seen.values()) > 850
    assert len(set(names(picker.pick(PODS, [0.0] * 4, 3)))) == 3


def test_round_robin_cycles_in_snapshot_order() -> None:
    picker = RoundRobinPicker()
    got = [picker.pick(PODS, [0.0] * 4, 1)[0].address for _ in range(6)]
    assert got == ["a", "b", "c", "d", "a", "b"]
    assert names(picker.pick(PODS, [0.0] * 4, 2)) == ["c", "d"]
    assert names(picker.pick(PODS[:2], [0.0] * 2, 5)) == ["b", "a"]  # capped at the pool size
