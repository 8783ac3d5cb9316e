"""`loadtest.bench.lengthbound`: length-blind dispatch policies on the simulator's engines."""

from __future__ import annotations

import json
import math
from collections import deque
from pathlib import Path

import pytest

from epp.sim.engine import Engine
from epp.sim.pod import engine_config
from epp.sim.spec import SimPodSpec
from loadtest.bench import lengthbound as lb
from loadtest.bench.coldfloor import cell_args

FAST = SimPodSpec("127.0.0.2", 8000, "fast", speed=0.25, num_gpu_blocks=600, max_num_seqs=4)
SLOW = SimPodSpec("127.0.0.3", 8000, "slow", speed=0.125, num_gpu_blocks=600, max_num_seqs=4)
COMMAND = (
    ".venv/bin/python -m loadtest.bench --workloads sharegpt --pods 4 --profile H100 "
    "--speed 0.25 --slow-speed 0.125 --max-num-seqs 8 --num-gpu-blocks 564 --lengths cap "
    "--duration {duration} --seed 1 --pod-option 1:profile=A100-80G --pod-option 2:speed=0.5"
)


def burst(n: int, output: int = 40) -> list[lb.Request]:
    return [lb.Request(0.0, 100, output) for _ in range(n)]


def test_pods_of_reads_the_slow_pod_and_the_pod_options() -> None:
    pods = lb.pods_of(cell_args(COMMAND.format(duration=30)))
    assert [p.profile for p in pods] == ["H100", "A100-80G", "H100", "H100"]
    assert [p.speed for p in pods] == [0.25, 0.25, 0.5, 0.125]
    assert {(p.max_num_seqs, p.num_gpu_blocks) for p in pods} == {(8, 564)}
    with pytest.raises(ValueError, match="names no pod"):
        lb.pods_of(cell_args(COMMAND.format(duration=30) + " --pod-option 9:speed=1"))


def test_every_request_is_served_once_in_time_order() -> None:
    requests = [lb.Request(i * 0.05, 50 + i, 10 + i) for i in range(30)]
    for name, policy in lb.policies(1).items():
        outcomes = lb.simulate([FAST, SLOW], requests, policy)
        assert sorted(o.at for o in outcomes) == [r.at for r in requests], name
        assert all(o.at < o.first <= o.end for o in outcomes), name


def test_free_slots_go_to_the_fast_pod_first_and_a_threshold_keeps_the_slow_one_idle() -> None:
    requests = burst(10)
    free_slot = lb.simulate([FAST, SLOW], requests, lb.threshold(1))
    assert sum(o.pod == 1 for o in free_slot) == 4  # the slow batch filled, two waited
    held = lb.simulate([FAST, SLOW], requests, lb.threshold(8))  # 6 waiting < 8
    assert all(o.pod == 0 for o in held)
    # the slow pod's requests take twice as long as the fast pod's first batch
    fast_first = max(o.end for o in free_slot if o.pod == 0 and o.first < 0.5)
    assert min(o.end for o in free_slot if o.pod == 1) > 1.5 * fast_first


def test_each_dispatch_counts_before_the_policy_picks_the_next() -> None:
    fast, slow = (lb.Pod(n, s, Engine(engine_config(s))) for n, s in enumerate((FAST, SLOW)))
    fast.in_flight, slow.in_flight = 3, 4  # one free slot, on the fast pod
    queue = deque(burst(3))
    started: lb.Started = {}
    lb.dispatch(0.0, queue, [fast, slow], lb.threshold(1), started)
    assert (fast.in_flight, slow.in_flight, len(queue), len(started)) == (4, 4, 2, 1)


def test_least_request_queues_inside_the_pods() -> None:
    outcomes = lb.simulate([FAST, SLOW], burst(10), lb.least_request)
    assert sum(o.pod == 0 for o in outcomes) == 5  # 5 and 5: one queued behind each batch
    result = lb.result("least-request", outcomes, [FAST, SLOW])
    assert result.slow_share == 0.5
    assert result.ttft_p99 > result.ttft_p90 > 0


def test_the_admissible_policy_keeps_p99_ttft_under_the_peers() -> None:
    def r(name: str, e2e: float, p99: float) -> lb.Result:
        return lb.Result(name, e2e, 0.1, p99, 0.1)

    results = [
        r("least-request", 10.0, 1.0),
        r("power-of-two", 10.5, 0.5),
        r("free-slot", 9.5, 0.9),
        r("threshold-4", 8.0, 2.0),
    ]
    assert lb.blind_peer(results).policy == "least-request"
    assert lb.best_threshold(results).policy == "threshold-4"
    best = lb.best_admissible(results)
    assert best is not None and best.policy == "free-slot"
    draw = lb.draw_of(results)
    assert (draw.free_slot, draw.best_threshold, draw.admissible) == (0.95, 0.8, 0.95)
    assert lb.draw_of([*results[:2], r("free-slot", 9.0, 3.0), results[3]]).admissible == math.inf


def test_main_replays_a_matrix_cell_and_writes_its_report(tmp_path: Path) -> None:
    record = {"command": COMMAND.format(duration=4), "commit": "abc1234"}
    points = [
        {"router": "epp:gpu-aware", "rate": 3.0, "stats": {"e2e": {"p90": 9.0}}},
        {"router": "envoy:LEAST_REQUEST", "rate": 3.0, "stats": {"e2e": {"p90": 10.0}}},
    ]
    cell = tmp_path / "sharegpt-cap-s1.json"
    cell.write_text(json.dumps({"record": record, "points": points}))
    assert lb.main(["--matrix", str(tmp_path), "--draws", "2", "--seconds", "3"]) == 0
    text = (tmp_path / "lengthbound.md").read_text()
    assert "## sharegpt-cap, seed 1 (" in text
    assert "- commit: `abc1234` (the cell's run" in text  # what the index of runs checks
    assert "| free-slot |" in text and "| threshold-16" in text
    assert "- epp:gpu-aware: 9.00 (0.90x)" in text
    assert "Over 2 more draws of this cell (other seeds, same rate, 3 s of arrivals)" in text
    assert lb.main(["--matrix", str(tmp_path), "--cells", "prefix8"]) == 2
