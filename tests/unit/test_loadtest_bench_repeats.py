"""loadtest.bench.repeats: ratios to one EPP per run, and their median and range over runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loadtest.bench.client import Sample
from loadtest.bench.repeats import (
    Reading,
    Spread,
    compare,
    main,
    readings_of,
    render,
    summarize_repeats,
)
from loadtest.bench.routers import repeat_of, run_labels
from loadtest.bench.stats import summarize
from loadtest.record import Record


def ok(start: float, ttft: float, e2e: float, prompt: int, cached: int) -> Sample:
    return Sample(start, 200, "", ttft, e2e, prompt, cached, 11, "pod-0")


def run(
    one: float, control: float, sharing: float, hits: tuple[float, float, float]
) -> list[Reading]:
    """A run's one EPP, its control and 3 sharing replicas: p90 TTFT (e2e = 10x it)."""
    return [
        Reading("epp:gpu-aware", 0.9, one, one * 10, hits[0], one / 2, 3),
        Reading("envoy:LEAST_REQUEST", 0.9, 9.0, 90.0, 0.0),
        Reading("epp-replicas:gpu-aware:3", 0.9, sharing, sharing * 10, hits[1], sharing / 4, 4),
        Reading("epp:gpu-aware#2", 0.9, control, control * 10, hits[2], math.nan, 0),
    ]


def test_compare_divides_by_the_runs_first_one_epp() -> None:
    found = {c.router: c for c in compare(run(0.2, 0.3, 0.22, (0.9, 0.88, 0.91)))}
    assert set(found) == {"epp-replicas:gpu-aware:3", "epp:gpu-aware#2"}  # not envoy, not one
    sharing = found["epp-replicas:gpu-aware:3"]
    assert sharing.ttft == pytest.approx(1.1)
    assert sharing.e2e == pytest.approx(1.1)
    assert sharing.warm_ttft == pytest.approx(0.55)  # (0.22 / 4) / (0.2 / 2)
    assert sharing.hit_points == pytest.approx(-2.0)
    control = found["epp:gpu-aware#2"]
    assert control.ttft == pytest.approx(1.5)
    assert math.isnan(control.warm_ttft)  # no warm request: no ratio
    assert control.hit_points == pytest.approx(1.0)


def test_summarize_repeats_gives_each_runs_ratio_median_and_range() -> None:
    runs = [
        run(0.2, 0.3, 0.22, (0.9, 0.88, 0.9)),
        run(0.4, 0.2, 0.2, (0.9, 0.9, 0.9)),
        run(0.1, 0.1, 0.3, (0.9, 0.92, 0.9)),
    ]
    rows = {r.router: r for r in summarize_repeats(runs)}
    sharing, control = rows["epp-replicas:gpu-aware:3"], rows["epp:gpu-aware#2"]
    assert sharing.ttft.values == pytest.approx((1.1, 0.5, 3.0))
    assert sharing.ttft.median == pytest.approx(1.1)
    assert (sharing.ttft.low, sharing.ttft.high) == pytest.approx((0.5, 3.0))
    assert sharing.ttft.within(1.1) == 2  # 1.1 itself counts
    assert sharing.hit_points.median == pytest.approx(0.0)
    assert control.ttft.values == pytest.approx((1.5, 0.5, 1.0))
    assert control.ttft.median == pytest.approx(1.0)


def test_a_run_without_a_point_counts_as_unknown_not_as_a_value() -> None:
    runs = [run(0.2, 0.2, 0.4, (0.9, 0.9, 0.9)), run(0.2, 0.2, 0.2, (0.9, 0.9, 0.9))[:2]]
    rows = {r.router: r for r in summarize_repeats(runs)}
    spread = rows["epp-replicas:gpu-aware:3"].ttft
    assert spread.values[0] == pytest.approx(2.0) and math.isnan(spread.values[1])
    assert spread.median == pytest.approx(2.0) and spread.within(1.1) == 0
    assert math.isnan(Spread(()).median) and math.isnan(Spread((math.nan,)).low)


def test_render_lists_each_run_and_one_epps_own_numbers() -> None:
    runs = [run(0.2, 0.3, 0.22, (0.9, 0.88, 0.9)), run(0.4, 0.2, 0.2, (0.9, 0.9, 0.9))]
    text = "\n".join(render("shared-prefix", ["a", "b"], runs))
    assert "| epp-replicas:gpu-aware:3 | 0.90 | 1.10 / 0.50; **0.80** (0.50 to 1.10) " in text
    assert "| 2 / 2 of 2 |" in text
    assert "| epp:gpu-aware#2 | 0.90 | 1.50 / 0.50; **1.00** (0.50 to 1.50) " in text
    assert "p90 TTFT 200 / 400 ms; warm p90 TTFT 100 / 200 ms; cold requests 3 / 3" in text


def test_readings_come_from_a_bench_reports_points() -> None:
    report = {
        "points": [
            {"router": "epp:gpu-aware", "fraction": 0.9, "stats": {
                "ttft": {"p90": 0.2}, "e2e": {"p90": 3.0}, "hit_rate": 0.9,
                "ttft_warm_p90": 0.1, "cold": 7}},
            {"router": "epp:gpu-aware#2", "fraction": 0.9, "stats": {  # before warm p90
                "ttft": {"p90": 0.3}, "e2e": {"p90": 3.3}, "hit_rate": 0.8}},
        ]
    }  # fmt: skip
    one, again = readings_of(report)
    assert one == Reading("epp:gpu-aware", 0.9, 0.2, 3.0, 0.9, 0.1, 7)
    assert math.isnan(again.ttft_warm_p90) and again.cold == 0


def test_a_router_listed_twice_runs_again_as_its_control() -> None:
    names = ["epp:gpu-aware", "epp-replicas:gpu-aware:3", "epp:gpu-aware", "epp:gpu-aware"]
    labels = run_labels(names)
    assert labels == ["epp:gpu-aware", "epp-replicas:gpu-aware:3", "epp:gpu-aware#2",
                      "epp:gpu-aware#3"]  # fmt: skip
    assert [repeat_of(x) for x in labels] == names


def test_warm_p90_and_cold_count_split_requests_at_half_the_prompt_cached() -> None:
    samples = [ok(i * 0.1, 0.01 * (i + 1), 1.0, prompt=100, cached=50) for i in range(10)]
    samples += [ok(1.0 + i * 0.1, 0.5, 1.5, prompt=100, cached=49) for i in range(3)]
    s = summarize(samples)
    assert s.cold == 3
    assert s.ttft_warm_p90 == pytest.approx(0.091)  # of 0.01 .. 0.10 only
    assert s.ttft.p90 == pytest.approx(0.5)  # the statistic still counts them all
    assert math.isnan(summarize([ok(0, 0.1, 1.0, 100, 0)]).ttft_warm_p90)  # nothing cached: no warm


def test_main_writes_every_workloads_summary_under_one_record(tmp_path: Path) -> None:
    record = Record("bench", "abc", "python -m loadtest.bench", "vm", "2026-01-01 00:00 UTC")
    for seed, workload in ((1, "sharegpt"), (1, "shared-prefix"), (2, "shared-prefix")):
        folder = tmp_path / f"run-s{seed}"
        folder.mkdir(exist_ok=True)
        points = [
            {"router": r.router, "fraction": r.fraction, "stats": {
                "ttft": {"p90": r.ttft_p90}, "e2e": {"p90": r.e2e_p90}, "hit_rate": r.hit_rate}}
            for r in run(0.2 * seed, 0.2, 0.3, (0.9, 0.9, 0.9))
        ]  # fmt: skip
        report = {"record": record.to_json(), "points": points}
        (folder / f"{workload}.json").write_text(json.dumps(report))
    out = tmp_path / "out"
    runs = [str(tmp_path / "run-s1"), str(tmp_path / "run-s2")]
    assert main(["--workload", "shared-prefix,sharegpt", "--out", str(out), *runs]) == 0
    both = [
        json.loads((out / f"repeats-{w}.json").read_text()) for w in ("shared-prefix", "sharegpt")
    ]
    assert both[0]["record"]["commit"] == both[1]["record"]["commit"]
    assert both[0]["runs"] == ["run-s1", "run-s2"] and both[1]["runs"] == ["run-s1"]
    text = (out / "repeats-shared-prefix.md").read_text()
    assert "| epp-replicas:gpu-aware:3 | 0.90 | 1.50 / 0.75; **1.12** (0.75 to 1.50) " in text
    with pytest.raises(SystemExit):
        main(["--workload", "multi-turn", *runs])
