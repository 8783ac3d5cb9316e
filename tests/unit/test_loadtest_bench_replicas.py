"""loadtest/bench with EPP replicas: router specs, the per-replica request count read from
/metrics, the Envoy bootstrap listing every replica, and the report's replicas table."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loadtest.bench.client import Sample
from loadtest.bench.report import Header, Point, render_markdown, replicas_table
from loadtest.bench.routers import (
    REQUESTS_METRIC,
    Children,
    RouterSpec,
    counter_total,
    sim_pods,
    start_envoy,
)
from loadtest.bench.stats import summarize
from loadtest.record import Record, router_profile_text


def test_replica_specs_carry_profile_count_and_sharing() -> None:
    sharing = RouterSpec.parse("epp-replicas:gpu-aware:3")
    alone = RouterSpec.parse("epp-replicas-alone:prefix-cache-aware:2")
    one = RouterSpec.parse("epp:gpu-aware")
    assert (sharing.profile, sharing.replicas, sharing.shares, sharing.is_epp) == (
        "gpu-aware", 3, True, True)  # fmt: skip
    assert (alone.profile, alone.replicas, alone.shares) == ("prefix-cache-aware", 2, False)
    assert (one.profile, one.replicas, one.shares) == ("gpu-aware", 1, False)
    assert not RouterSpec.parse("envoy:ROUND_ROBIN").is_epp
    assert sharing.name == "epp-replicas:gpu-aware:3"


@pytest.mark.parametrize(
    "bad", ["epp-replicas:gpu-aware", "epp-replicas:gpu-aware:0", "epp-replicas::3",
            "epp-replicas-alone:gpu-aware:x", "epp-replica:gpu-aware:3"],
)  # fmt: skip
def test_replica_specs_refuse_a_missing_or_bad_count(bad: str) -> None:
    with pytest.raises(ValueError, match="bad router"):
        RouterSpec.parse(bad)


def test_the_profile_text_says_how_many_replicas_and_whether_they_share() -> None:
    assert router_profile_text("epp-replicas:gpu-aware:3").startswith(
        "3 EPP replicas sharing over --peers; gpu-aware: "
    )
    assert router_profile_text("epp-replicas-alone:gpu-aware:3").startswith(
        "3 EPP replicas sharing nothing; gpu-aware: "
    )


METRICS = f"""# HELP {REQUESTS_METRIC} Requests per model
# TYPE {REQUESTS_METRIC} counter
{REQUESTS_METRIC}{{model_name="bench",target_model_name="bench"}} 41.0
{REQUESTS_METRIC}{{model_name="other",target_model_name="other"}} 2.0
{REQUESTS_METRIC.removesuffix("_total")}_created{{model_name="bench"}} 1.7e9
inference_objective_request_error_total{{model_name="bench",error_code="429"}} 5.0
"""


def test_counter_total_sums_every_label_set_of_that_counter_only() -> None:
    assert counter_total(METRICS, REQUESTS_METRIC) == 43
    assert counter_total(METRICS, "inference_objective_request_error_total") == 5
    assert counter_total("", REQUESTS_METRIC) == 0


async def test_envoy_lists_every_epp_replica_in_its_ext_proc_cluster(tmp_path: Path) -> None:
    """Envoy starts from the bootstrap and its ext_proc cluster names each replica's port."""
    children = Children(tmp_path)
    try:
        await start_envoy(children, sim_pods("127.0.79.2", 2), None, [19101, 19102, 19103])
    finally:
        await children.stop_all()
    config = yaml.safe_load((tmp_path / "envoy.yaml").read_text())
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "ext_proc")
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
             for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]  # fmt: skip
    assert ports == [19101, 19102, 19103]


def _point(
    router: str, ttft: float, e2e: float, cached: int, streams: int = 0, delays: int = 0
) -> Point:
    samples = [Sample(i * 0.1, 200, "", ttft, e2e, 100, cached, 11, "pod-0") for i in range(10)]
    per = tuple((f"epp-{i + 1}", 10 + i) for i in range(streams))
    late = tuple((f"epp-{i + 1}", 2.0 + i, 5.25, 20 * (i + 1)) for i in range(delays))
    return Point(router, 5.5, 0.9, summarize(samples), (), (), per, late)


def test_replicas_table_compares_each_replica_point_and_the_control_with_one_epp() -> None:
    points = [
        _point("epp:gpu-aware", 0.2, 2.0, 50),
        _point("epp-replicas:gpu-aware:3", 0.21, 2.4, 48, 3, 2),
        _point("epp-replicas-alone:gpu-aware:3", 0.4, 3.0, 30, 3),
        _point("envoy:LEAST_REQUEST", 0.1, 1.0, 0),
        _point("epp:gpu-aware#2", 0.3, 2.0, 60),
    ]
    rows = replicas_table(points)
    assert len(rows) == 5  # header, rule, the two replica points, the control
    assert rows[2] == (
        "| epp-replicas:gpu-aware:3 | 0.90 | 210 (1.05x) | 2.40 (1.20x) | 48.0% (-2.0) "
        "| -; 10 cold against 0 "  # under half of every prompt cached: no warm request
        "| epp-1 10 / epp-2 11 / epp-3 12 | 2.0 / 5.2 (20) · 3.0 / 5.2 (40) |"
    )
    assert "| 400 (2.00x) | 3.00 (1.50x) | 30.0% (-20.0) |" in rows[3]
    assert rows[3].endswith("| epp-1 10 / epp-2 11 / epp-3 12 | - |")  # alone: no delays
    assert rows[4] == (
        "| epp:gpu-aware#2 | 0.90 | 300 (1.50x) | 2.00 (1.00x) | 60.0% (+10.0) "
        "| 300 (1.50x); 0 cold against 0 | - | - |"
    )
    assert replicas_table(points[:1] + points[3:4]) == []


def test_markdown_has_the_replicas_section_only_with_replica_points() -> None:
    record = Record("bench", "abc", "python -m loadtest.bench", "vm", "2026-01-01 00:00 UTC")
    header = Header("sharegpt", record, "4 pods", 6.1, "given", 40.0, "1 1 1")
    lone = [_point("epp:gpu-aware", 0.2, 2.0, 50)]
    assert "## EPP replicas" not in render_markdown(header, lone, [], [])
    both = [*lone, _point("epp-replicas:gpu-aware:2", 0.2, 2.0, 50, 2)]
    text = render_markdown(header, both, [], [])
    assert "## EPP replicas against one EPP" in text and "epp-1 10 / epp-2 11" in text
