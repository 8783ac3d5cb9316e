"""The rollout's analysis, state machine and controller, on a real manifests file and a clock
the test moves; per-version counts come from a real EPP metrics registry, read back through its
text exposition as the controller reads an EPP's /metrics."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from epp import cli
from epp.api.model import ModelRoute
from epp.api.parse import parse_one
from epp.api.rollout import Thresholds
from epp.observability import EppMetrics
from epp.rollout import command
from epp.rollout.analysis import analyze
from epp.rollout.controller import RolloutController
from epp.rollout.files import FileStore
from epp.rollout.machine import RolloutStatus, split_weights
from epp.rollout.signals import Counts, Sample, parse_exposition, quantile
from tests.unit.test_rollout_policy import SEED

MODEL = "chat"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Traffic:
    """An EPP's per-version metrics, fed with finished requests and read back as text."""

    def __init__(self) -> None:
        self.metrics = EppMetrics()

    def serve(self, version: str, n: int, ttft: float, tpot: float, errors: int = 0) -> None:
        m = self.metrics
        for i in range(n):
            m.version_completed.labels(MODEL, version).inc()
            if i < errors:
                m.version_errors.labels(MODEL, version, "ModelServerError500").inc()
                continue
            m.version_ttft.labels(MODEL, version).observe(ttft)
            m.version_tpot.labels(MODEL, version).observe(tpot)
            m.version_output_tokens.labels(MODEL, version).inc(20)

    async def sample(self, models: Any) -> Sample:
        return parse_exposition(generate_latest(self.metrics.registry).decode(), models)


def test_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = ((0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (float("inf"), 40.0))
    assert quantile(buckets, 0.5) == pytest.approx(0.15)  # rank 20: halfway through 0.1..0.2
    assert quantile(buckets, 0.9) == pytest.approx(0.32)  # rank 36: 0.2 + 0.2 * 6/10
    assert quantile((), 0.9) is None


def test_parse_sums_the_versions_and_ignores_other_models() -> None:
    traffic = Traffic()
    traffic.serve("stable", 30, 0.05, 0.01, errors=3)
    traffic.metrics.version_completed.labels("other", "stable").inc(5)
    sample = parse_exposition(generate_latest(traffic.metrics.registry).decode(), [MODEL])
    assert set(sample) == {(MODEL, "stable")}
    counts = sample[(MODEL, "stable")]
    assert (counts.completed, counts.errors, counts.output_tokens) == (30, 3, 540)
    assert counts.ttft[-1] == (float("inf"), 27)
    p90 = quantile(counts.ttft, 0.9)
    assert p90 is not None and 0.04 < p90 <= 0.06


def test_analysis_fails_a_slow_canary_and_passes_a_like_one() -> None:
    t = Thresholds(max_tpot_ratio=1.5, min_samples=10)
    fast, slow = Traffic(), Traffic()
    fast.serve("v", 40, 0.05, 0.010)
    slow.serve("v", 40, 0.05, 0.021)
    f = parse_exposition(generate_latest(fast.metrics.registry).decode())[(MODEL, "v")]
    s = parse_exposition(generate_latest(slow.metrics.registry).decode())[(MODEL, "v")]
    verdict = analyze(t, s, f)
    assert verdict.verdict == "Fail" and "TPOT" in verdict.reason
    assert analyze(t, f, f).verdict == "Pass"
    assert analyze(t, Counts(completed=3), f).verdict == "Inconclusive"
    broken = Counts(completed=40, errors=4, ttft=f.ttft, tpot=f.tpot)
    result = analyze(t, broken, f)
    assert result.verdict == "Fail" and "error rate 10.0% over 5.0%" in result.reason


def test_a_ttft_ratio_fails_only_beyond_the_absolute_margin() -> None:
    fast, slow = Traffic(), Traffic()
    fast.serve("v", 40, 0.015, 0.010)  # a 15 ms TTFT ...
    slow.serve("v", 40, 0.075, 0.010)  # ... five times over: 60 ms slower
    f = parse_exposition(generate_latest(fast.metrics.registry).decode())[(MODEL, "v")]
    s = parse_exposition(generate_latest(slow.metrics.registry).decode())[(MODEL, "v")]
    strict = analyze(Thresholds(max_ttft_ratio=4.0), s, f)
    assert strict.verdict == "Fail" and "TTFT" in strict.reason
    lenient = Thresholds(max_ttft_ratio=4.0, min_ttft_increase=0.2)
    assert analyze(lenient, s, f).verdict == "Pass"  # 5x, but within 200 ms of stable
    tight = analyze(Thresholds(max_ttft_ratio=4.0, min_ttft_increase=0.01), s, f)
    assert tight.verdict == "Fail" and "more than 10 ms slower" in tight.reason


def test_split_weights_share_the_rest_among_stables() -> None:
    assert split_weights("c", [("a", 90), ("c", 10)], 25) == {"a": 75, "c": 25}
    assert split_weights("c", [("a", 2), ("b", 1), ("c", 0)], 10) == {"a": 60, "b": 30, "c": 10}
    assert split_weights("c", [("a", 0), ("b", 0), ("c", 100)], 0) == {"a": 50, "b": 50, "c": 0}


def manifests(tmp_path: Path, **rollout: Any) -> Path:
    doc = copy.deepcopy(SEED)
    policy = doc["spec"]["routing"]["trafficSplit"][1]["rollout"]
    policy.update(
        {"steps": [10, 50, 100], "interval": "1s", "stepDuration": "2s", "minRequests": 20},
        **rollout,
    )
    policy["analysis"] = {"minSamples": 10, "maxTPOTRatio": 1.5, "maxErrorRate": 0.05}
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump_all([doc], sort_keys=False))
    return path


def stored(path: Path) -> tuple[RolloutStatus, dict[str, int]]:
    doc = next(iter(yaml.safe_load_all(path.read_text())))
    status = RolloutStatus.from_dict(doc["status"]["rollout"])
    assert status is not None
    model = parse_one("served", doc).value
    assert isinstance(model, ModelRoute)
    return status, {s.version or "": s.weight for s in model.splits}


async def drive(
    controller: RolloutController, clock: Clock, traffic: Traffic, canary_tpot: float, passes: int
) -> None:
    for _ in range(passes):
        await controller.once()
        clock.now += 1.0
        traffic.serve("stable", 30, 0.05, 0.010)
        traffic.serve("canary", 15, 0.05, canary_tpot)


async def test_a_healthy_canary_is_promoted_through_every_step(tmp_path: Path) -> None:
    path = manifests(tmp_path)
    clock, traffic = Clock(), Traffic()
    said: list[str] = []
    controller = RolloutController(FileStore(path), traffic, said.append, clock=clock)
    await drive(controller, clock, traffic, 0.010, 12)
    status, weights = stored(path)
    assert status.phase == "Promoted"
    assert weights == {"stable": 0, "canary": 100}
    assert [h["weight"] for h in status.history] == [10, 50]
    assert all(h["analysis"]["verdict"] == "Pass" for h in status.history)
    assert any("step 2/3: canary at 50%" in line for line in said)
    assert any("promoted" in line for line in said)


async def test_a_slow_canary_is_rolled_back_in_its_first_step(tmp_path: Path) -> None:
    path = manifests(tmp_path)
    clock, traffic = Clock(), Traffic()
    said: list[str] = []
    controller = RolloutController(FileStore(path), traffic, said.append, clock=clock)
    await drive(controller, clock, traffic, 0.030, 4)
    status, weights = stored(path)
    assert status.phase == "RolledBack"
    assert weights == {"stable": 100, "canary": 0}
    assert "rolled back at 10%" in status.reason and "TPOT" in status.reason
    assert status.history[-1]["analysis"]["verdict"] == "Fail"
    # finished: later passes change nothing
    before = path.read_text()
    await drive(controller, clock, traffic, 0.010, 3)
    assert path.read_text() == before


async def test_a_changed_policy_starts_a_new_rollout(tmp_path: Path) -> None:
    path = manifests(tmp_path)
    clock, traffic = Clock(), Traffic()
    controller = RolloutController(FileStore(path), traffic, clock=clock)
    await drive(controller, clock, traffic, 0.030, 4)
    assert stored(path)[0].phase == "RolledBack"
    docs = list(yaml.safe_load_all(path.read_text()))
    docs[0]["spec"]["routing"]["trafficSplit"][1]["rollout"]["steps"] = [20, 100]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    await controller.once()
    status, weights = stored(path)
    assert (status.phase, weights) == ("Progressing", {"stable": 80, "canary": 20})


async def test_abort_by_hand_wins_over_a_pass_that_read_before_it(tmp_path: Path) -> None:
    path = manifests(tmp_path)
    clock, traffic = Clock(), Traffic()
    store = FileStore(path)
    controller = RolloutController(store, traffic, clock=clock)
    await drive(controller, clock, traffic, 0.010, 3)
    (tracked,) = await store.rollouts()  # a pass reads ...
    out = io.StringIO()
    assert await command.run(FileStore(path), "abort", "chat", out, clock) == 0  # ... a person
    assert "Aborted: aborted by hand" in out.getvalue()
    assert await store.write(tracked, {"phase": "Progressing"}) is False  # ... the pass loses
    await drive(controller, clock, traffic, 0.010, 4)
    status, weights = stored(path)
    assert (status.phase, weights) == ("Aborted", {"stable": 100, "canary": 0})


def test_the_cli_prints_status_and_promotes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = manifests(tmp_path)
    assert cli.main(["rollout", "status", "chat", "--manifests", str(path)]) == 0
    assert "phase: not started" in capsys.readouterr().out
    assert cli.main(["rollout", "promote", "default/chat", "--manifests", str(path)]) == 0
    assert "Promoted: promoted by hand" in capsys.readouterr().out
    assert stored(path)[1] == {"stable": 0, "canary": 100}
    assert cli.main(["rollout", "status", "chat", "--manifests", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "phase: Promoted" in shown and "weights: stable 0%, canary 100%" in shown
    assert cli.main(["rollout", "abort", "nope", "--manifests", str(path)]) == 1
    assert "no InferenceModel 'nope' with a rollout policy (rollouts: default/chat)" in (
        capsys.readouterr().out
    )
