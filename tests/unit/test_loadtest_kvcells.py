"""The precise-vs-approximate cells: sizes, workload streams, the EPP config, the goal lines."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

import pytest

from epp.scheduling.base import BuildContext
from epp.scheduling.config import build_profiles
from epp.scheduling.plugins.precise_prefix import PreciseCacheScorer
from loadtest.bench import kvcells
from loadtest.bench.kvcells_report import CellPoint, goal, write
from loadtest.bench.stats import Dist, RunStats
from loadtest.record import Record


def test_the_evicting_shape_is_about_twice_the_pods_kv_memory() -> None:
    a = kvcells.make_parser().parse_args(["--pods", "4", "--num-gpu-blocks", "600"])
    shapes = kvcells.shapes(a)
    evicting = shapes["evicting"]
    blocks = evicting.groups * kvcells.block_tokens_of(evicting.system_chars)
    assert 1.9 <= blocks / (4 * 600) <= 2.1
    plain = shapes["plain"]
    assert plain.groups * kvcells.block_tokens_of(plain.system_chars) < 4 * 600 / 2


def test_streams_share_system_prompts_but_not_questions() -> None:
    shape = kvcells.Shape(groups=3, system_chars=400)
    ours = list(itertools.islice(kvcells.requests(shape, 1, 0), 30))
    foreign = list(itertools.islice(kvcells.requests(shape, 1, 1), 30))
    assert {r.messages[0] for r in ours} == {r.messages[0] for r in foreign}
    assert not {r.messages[1] for r in ours} & {r.messages[1] for r in foreign}
    assert ours == list(itertools.islice(kvcells.requests(shape, 1, 0), 30))


def test_the_precise_router_runs_the_approximate_profile_with_the_precise_scorer() -> None:
    a = kvcells.make_parser().parse_args([])
    ctx = BuildContext(random.Random(1), time.monotonic)
    profiles = build_profiles(kvcells.precise_config(a), ctx)
    profile = profiles[kvcells.APPROXIMATE]
    assert any(isinstance(w.scorer, PreciseCacheScorer) for w in profile.scorers)
    # the variant without the load gate reaches the scorer's parameters
    for variant, gated in (("precise", False), ("precise-load-gate", True)):
        built = build_profiles(kvcells.precise_config(a, variant), ctx)[kvcells.APPROXIMATE]
        (scorer,) = [w.scorer for w in built.scorers if isinstance(w.scorer, PreciseCacheScorer)]
        assert scorer.load_gate is gated and scorer.gate_slack == 4.0


def _stats(ttft_p90: float, hit: float) -> RunStats:
    d = Dist(ttft_p90, ttft_p90, ttft_p90)
    return RunStats(10, 10, (), d, d, d, 1.0, 1.0, hit, ())


def test_goal_lines() -> None:
    met = [CellPoint("a", "approximate", 1, _stats(1.0, 0.3)),
           CellPoint("a", "precise", 1, _stats(0.5, 0.5))]  # fmt: skip
    assert "**met**" in goal("a", met)
    missed = [met[0], CellPoint("a", "precise", 1, _stats(0.7, 0.5))]
    assert "**not met**" in goal("a", missed)
    plain = [CellPoint("d", "approximate", 1, _stats(1.0, 0.8)),
             CellPoint("d", "precise", 1, _stats(1.04, 0.8))]  # fmt: skip
    assert "**met**" in goal("d", plain)
    assert "not checked" in goal("d", plain[:1])


def test_the_report_starts_with_the_record_and_checks_each_cell(tmp_path: Path) -> None:
    a = kvcells.make_parser().parse_args(["--out", str(tmp_path / "run")])
    record = Record.now("bench", "python -m loadtest.bench.kvcells", [("approximate", "x")])
    points = [CellPoint("d", "approximate", 1, _stats(1.0, 0.8)),
              CellPoint("d", "precise", 1, _stats(0.9, 0.85))]  # fmt: skip
    path = write(a, record, kvcells.shapes(a), {"plain": 3.0}, points, ["c vllm-router: x"])
    text = path.read_text()
    assert text.startswith("# Precise vs approximate")
    assert f"- commit: `{record.commit}`" in text and "## (d)" in text and "**met**" in text
    data = json.loads((tmp_path / "run" / "kv-cells.json").read_text())
    assert data["record"]["commit"] == record.commit and len(data["points"]) == 2


def test_the_goal_line_also_compares_with_approximate_replicas_sharing_picks() -> None:
    points = [CellPoint("c", "approximate", 1, _stats(1.0, 0.2)),
              CellPoint("c", "approximate-peers", 1, _stats(0.8, 0.3)),
              CellPoint("c", "precise", 1, _stats(0.4, 0.4))]  # fmt: skip
    line = goal("c", points)
    assert "0.40, hit +20 points: **met**" in line
    assert "against approximate-peers 0.50, hit +10 points" in line
    assert "precise-peers" not in line
    both = goal("c", [*points, CellPoint("c", "precise-peers", 1, _stats(0.3, 0.45))])
    assert both.startswith(line)
    assert both.endswith(
        "; precise-peers/approximate 0.30, hit +25 points, against approximate-peers 0.37, "
        "hit +15 points"
    )


def test_the_hit_rate_bounds_of_a_cells_requests() -> None:
    from loadtest.bench import kvbound

    shape = kvcells.Shape(groups=12, system_chars=1200, question_chars=100)
    reqs = kvbound.trace(shape, seed=1, rate=10.0, duration=10.0)
    assert len(reqs) > 60 and len({r.group for r in reqs}) == 12
    # memory for all twelve prefixes: only first sightings miss, under any sticky placement
    roomy = kvbound.policies(reqs, pods=4, blocks=200, restart=-1)
    assert roomy["sticky-balanced"] == pytest.approx(roomy["ceiling"], abs=0.02)
    # room for about a third: clairvoyance beats LRU, LRU with affinity beats spreading
    tight = kvbound.policies(reqs, pods=4, blocks=60, restart=-1)
    assert tight["ceiling"] > tight["sticky-balanced"] > tight["spread"]
    assert tight["ceiling"] <= roomy["ceiling"] <= 1.0 - roomy["first-seen"] + 0.01


def test_our_default_profile_runs_in_the_cells_as_gpu_aware() -> None:
    from loadtest.bench.kvcells_report import profiles

    (text,) = (t for r, t in profiles(["gpu-aware", "approximate"], {}) if r == "gpu-aware")
    assert text.startswith("gpu-aware: ") and "prefix-cache-scorer" in text
    assert kvcells.GPU_AWARE in kvcells.EPP_ROUTERS
