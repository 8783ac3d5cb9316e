"""loadtest/bench: statistics, report rendering, router specs and manifests, without processes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from epp.api.parse import parse_documents
from epp.sim.profiles import get_profile
from loadtest.bench.__main__ import Bench, make_parser, sim_args
from loadtest.bench.client import Sample, _usage_of, only, priorities
from loadtest.bench.report import Header, Point, priority_table, render_markdown, verdict
from loadtest.bench.routers import Children, RouterSpec, SimPod, epp_manifests
from loadtest.bench.stats import completion_rate, percentile, pods_per_group, summarize
from loadtest.record import Record, epp_profile_text
from loadtest.workloads import workload


def ok(start: float, ttft: float, e2e: float, pod: str = "pod-0", **kw: int) -> Sample:
    return Sample(start, 200, "", ttft, e2e, kw.get("prompt", 100), kw.get("cached", 0),
                  kw.get("tokens", 11), pod)  # fmt: skip


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0, 10], 90) == pytest.approx(9)
    assert math.isnan(percentile([], 50))


def test_summarize_counts_errors_hits_pods_and_itl() -> None:
    samples = [
        ok(0.0, 0.1, 1.1, "pod-0", prompt=100, cached=50),
        ok(0.5, 0.2, 2.2, "pod-1", prompt=100, cached=0),
        Sample(1.0, 429, "http-429", 0.01, 0.01),
        Sample(1.5, 0, "ClientConnectorError", 0.0, 0.2),
    ]
    s = summarize(samples)
    assert (s.sent, s.ok) == (4, 2)
    assert dict(s.errors) == {"429": 1, "ClientConnectorError": 1}
    assert s.hit_rate == pytest.approx(0.25)
    assert dict(s.pods) == {"pod-0": 1, "pod-1": 1}
    assert s.itl.p50 == pytest.approx(0.15)  # (1.0 / 10 + 2.0 / 10) / 2
    assert s.throughput == pytest.approx(2 / 2.7)
    assert s.ttft.p90 == pytest.approx(0.19)


def test_completion_rate_counts_the_window_only() -> None:
    samples = [ok(t, 0.1, 1.0) for t in range(10)]  # ends at 1..10
    assert completion_rate(samples, 3.0, 9.0) == pytest.approx(7 / 6)


def test_usage_is_read_from_the_last_event() -> None:
    tail = (
        b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,'
        b'"prompt_tokens_details":{"cached_tokens":4}}}\n\ndata: [DONE]\n\n'
    )
    assert _usage_of(tail) == {
        "prompt_tokens": 9, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}
    }  # fmt: skip
    assert _usage_of(b'data: {"choices":[]}\n\n') is None


def test_router_specs_parse_and_refuse_typos() -> None:
    spec = RouterSpec.parse("vllm-router:cache_aware")
    assert (spec.kind, spec.option, spec.name) == ("vllm-router", "cache_aware", spec.name)
    for bad in ("nginx:rr", "epp", "epp:"):
        with pytest.raises(ValueError, match="bad router"):
            RouterSpec.parse(bad)


def test_epp_manifests_declare_the_pods_and_the_strategy() -> None:
    pods = [SimPod("127.0.77.2", 8000, "pod-0"), SimPod("127.0.77.3", 8000, "pod-1")]
    pool, model, *declared = epp_manifests(pods, "prefix-cache-aware")
    assert pool["spec"]["deployment"]["replicas"] == 2
    assert model["spec"]["routing"]["loadBalancing"]["strategy"] == "prefix-cache-aware"
    assert [d["status"]["podIP"] for d in declared] == ["127.0.77.2", "127.0.77.3"]


def test_epp_manifests_can_declare_the_servers_batch_size() -> None:
    pods = [SimPod("127.0.77.2", 8000, "pod-0")]

    def parsed(max_num_seqs: int) -> list[int | None]:
        docs = epp_manifests(pods, "gpu-aware", max_num_seqs=max_num_seqs)
        return [
            p.max_num_seqs for p in parse_documents((str(i), d) for i, d in enumerate(docs)).pods
        ]

    assert parsed(8) == [8]
    assert parsed(0) == [None]


def test_send_only_keeps_one_class_with_its_times_and_bodies() -> None:
    arrivals, labels = [0.1, 0.2, 0.3, 0.4], ["critical", "sheddable", "sheddable", "critical"]
    everyone = workload("sharegpt", 1)
    first, _, _, fourth = (next(everyone) for _ in range(4))
    times, kept, requests = only("critical", arrivals, labels, workload("sharegpt", 1))
    assert (times, kept) == ([0.1, 0.4], ["critical", "critical"])
    assert list(requests) == [first, fourth]  # each keeps the body it had among all


def test_the_batched_floor_uses_the_pace_of_the_full_speed_pods_only(tmp_path: Path) -> None:
    bench = Bench(make_parser().parse_args(["--pods", "2"]), Children(tmp_path))
    fast = [ok(0.0, 0.1, 0.1 + 99 * 0.03, "pod-0", tokens=100, prompt=100) for _ in range(4)]
    slow = [ok(0.0, 0.1, 0.1 + 199 * 0.06, "pod-1", tokens=200, prompt=100) for _ in range(5)]
    prefill = get_profile("H100").step_time(100, 0, 0) / 0.25
    # every request at the fast pods' 30 ms per token, the slow pod's 60 ms left out
    expected = percentile([prefill + 99 * 0.03] * 4 + [prefill + 199 * 0.03] * 5, 90)
    assert bench.batched_floor([*fast, *slow]) == pytest.approx(expected)
    assert math.isnan(bench.batched_floor(slow))  # nothing measured on a full-speed pod


def test_the_in_order_reference_replays_arrivals_on_the_slot_where_each_finishes_first(
    tmp_path: Path,
) -> None:
    args = make_parser().parse_args(["--pods", "2", "--max-num-seqs", "1"])
    bench = Bench(args, Children(tmp_path))  # one slot on pod-0, one on the half-speed pod-1
    samples = [  # all arrive at once; measured paces 30 ms (pod-0) and 60 ms (pod-1)
        ok(0.0, 0.1, 0.1 + 99 * 0.03, "pod-0", tokens=100, prompt=100),
        ok(0.0, 0.1, 0.1 + 49 * 0.06, "pod-1", tokens=50, prompt=100),
        ok(0.0, 0.1, 0.1 + 99 * 0.03, "pod-0", tokens=100, prompt=100),
    ]
    step = get_profile("H100").step_time(100, 0, 0)
    fast, slow = step / 0.25, step / 0.125  # prefill alone on each pod
    first = fast + 99 * 0.03  # the fast slot
    second = slow + 49 * 0.06  # the slow slot beats waiting for the fast one
    third = first + fast + 99 * 0.03  # waits for the fast slot rather than take the slow one
    assert second < first + fast + 49 * 0.03 and third < second + slow + 99 * 0.06
    expected = percentile([first, second, third], 90)
    assert bench.in_order_reference(samples) == pytest.approx(expected)
    assert bench.in_order_reference(samples) > bench.batched_floor(samples)  # the wait counts
    assert math.isnan(bench.in_order_reference([]))


def test_sim_args_slow_down_the_last_pod() -> None:
    args = make_parser().parse_args(["--pods", "6", "--slow-speed", "0.1"])
    assert "5:speed=0.1" in sim_args(args)


def _point(router: str, ttft90: float, fraction: float = 0.9) -> Point:
    samples = [ok(i * 0.1, ttft90 if i == 9 else 0.01, 1.0) for i in range(10)]
    return Point(router, 5.0 * fraction, fraction, summarize(samples))


def test_verdict_names_the_peers_we_do_not_beat() -> None:
    points = [
        _point("epp:gpu-aware", 0.5),
        _point("envoy:LEAST_REQUEST", 0.8),
        _point("sglang-router:cache_aware", 0.3),
        _point("epp:gpu-aware", 0.1, 1.2),
    ]
    lines = "\n".join(verdict(points, "ttft"))
    assert "best peer **sglang-router:cache_aware**" in lines
    assert "not below sglang-router:cache_aware" in lines
    assert "envoy:LEAST_REQUEST" not in lines.split("epp:gpu-aware")[1]


RECORD = Record(
    "bench", "abc1234-dirty", "python -m loadtest.bench", "vm", "2026-01-01 00:00 UTC",
    (("epp:gpu-aware", epp_profile_text("gpu-aware")),),
)  # fmt: skip


def test_markdown_has_a_verdict_for_every_rate() -> None:
    header = Header("sharegpt", RECORD, "4 pods", 5.0, "measured", 30.0, "0.5 0.5 0.5")
    points = [_point(router, 0.5, fraction) for fraction in (0.9, 1.2)
              for router in ("epp:gpu-aware", "envoy:LEAST_REQUEST")]  # fmt: skip
    text = render_markdown(header, points, [], [])
    assert "- at 0.90x capacity, p90 e2e" in text and "- at 1.20x capacity, p90 e2e" in text


def test_markdown_has_command_table_unavailable_and_plots(tmp_path: Path) -> None:
    header = Header("shared-prefix", RECORD, "4 pods", 5.0, "measured", 30.0, "0.5 0.5 0.5")
    text = render_markdown(header, [_point("epp:gpu-aware", 0.2)],
                           [("sglang-router:cache_aware", "not installed")],
                           [str(tmp_path / "x.png")])  # fmt: skip
    assert "`python -m loadtest.bench`" in text
    assert "- commit: `abc1234-dirty`" in text and "- date: 2026-01-01 00:00 UTC" in text
    assert "  - epp:gpu-aware: gpu-aware: gpu-utilization-filter, prefix" in text
    assert "| **epp:gpu-aware** | 4.50 (0.90) | 10 | 10 | 0 |" in text
    assert "- sglang-router:cache_aware: not installed" in text
    assert "![x](x.png)" in text


def test_priorities_split_by_share_and_seed() -> None:
    assert priorities(3, 0.0, 1) == ["", "", ""]
    labels = priorities(1000, 0.3, 1)
    assert labels == priorities(1000, 0.3, 1)
    assert 250 < labels.count("sheddable") < 350
    assert labels.count("critical") + labels.count("sheddable") == 1000


def test_epp_manifests_with_priorities_add_a_sheddable_model() -> None:
    docs = epp_manifests([SimPod("127.0.77.2", 8000, "pod-0")], "gpu-aware", priorities=True)
    models = {d["metadata"]["name"]: d for d in docs if d["kind"] == "InferenceModel"}
    assert models["bench"]["spec"]["routing"]["priority"] == "high"
    assert models["bench-sheddable"]["spec"]["routing"]["priority"] == "low"


def test_priority_table_counts_shed_requests() -> None:
    critical = summarize([ok(0.0, 0.1, 1.0)])
    sheddable = summarize([ok(0.0, 0.2, 1.0), Sample(0.1, 429, "http-429", 0.0, 0.0)])
    point = Point(
        "epp:gpu-aware", 6.0, 1.2, critical, (("critical", critical), ("sheddable", sheddable))
    )
    rows = priority_table([point])
    assert rows[2] == "| epp:gpu-aware | 6.00 (1.20) | 1 / 1 | 100 / 100 | 1.00 | 1 / 2 | 1 | 200 |"
    alone = Point("epp:gpu-aware", 6.0, 1.2, critical, (("critical", critical),))  # --send-only
    assert (
        priority_table([alone])[2]
        == "| epp:gpu-aware | 6.00 (1.20) | 1 / 1 | 100 / 100 | 1.00 | - | - | - |"
    )


def test_pods_per_group_measures_affinity() -> None:
    def on(pod: str, group: str) -> Sample:
        return Sample(0.0, 200, "", 0.1, 1.0, 10, 0, 5, pod, group=group)

    samples = [on("pod-0", "group-0"), on("pod-0", "group-0"), on("pod-1", "group-1"),
               on("pod-2", "group-1"), on("pod-3", "group-2")]  # fmt: skip
    assert pods_per_group(samples) == pytest.approx(1.5)  # group-2 has one request: ignored
    assert math.isnan(pods_per_group([on("pod-0", "sharegpt-1")]))
