"""`loadtest.bench.prefixbound`: prefix placements on the simulator's engines."""

from __future__ import annotations

import json
from pathlib import Path

from epp.sim.blockhash import BlockHasher
from epp.sim.spec import SimPodSpec
from loadtest.bench import lengthbound as lb
from loadtest.bench import prefixbound as pb
from loadtest.bench.coldfloor import cell_args

POD = SimPodSpec("127.0.0.2", 8000, "p", speed=0.25, num_gpu_blocks=2000, max_num_seqs=8)
PODS = [POD, *(SimPodSpec(f"127.0.0.{i}", 8000, "p", speed=0.25, num_gpu_blocks=2000,
                          max_num_seqs=8) for i in (3, 4, 5))]  # fmt: skip
COMMAND = (
    ".venv/bin/python -m loadtest.bench --workloads shared-prefix --pods 4 --profile H100 "
    "--speed 0.25 --slow-speed 0.25 --max-num-seqs 8 --num-gpu-blocks 2000 --prefix-groups 3 "
    "--prefix-tokens 500 --lengths cap --duration 4 --seed 1"
)


def groups(n: int, count: int = 3) -> list[lb.Request]:
    """`n` requests, 0.1 s apart, of `count` prompt groups (a group's prompts share 32 blocks
    and each has 2 blocks of its own)."""
    return [
        lb.Request(i * 0.1, 544, 20, (*range(1000 * (i % count), 1000 * (i % count) + 32),
                                      10**6 + 2 * i, 10**6 + 2 * i + 1))
        for i in range(n)
    ]  # fmt: skip


def test_sticky_k_keeps_each_group_on_k_pods_and_least_request_on_all() -> None:
    requests = groups(60)
    for name, policy in pb.placements().items():
        outcomes = lb.simulate(PODS, requests, policy)
        assert sorted(o.at for o in outcomes) == [r.at for r in requests], name
        pods_of_group: dict[int, set[int]] = {}
        by_at = {r.at: r for r in requests}
        for o in outcomes:
            pods_of_group.setdefault(by_at[o.at].hashes[0], set()).add(o.pod)
        counts = sorted(len(p) for p in pods_of_group.values())
        if name.startswith("sticky-"):
            assert counts == [int(name.split("-")[1])] * 3, name
        else:
            assert counts[-1] >= 3, name  # least-request spreads each group widely


def test_a_group_is_cold_once_per_holder_and_warm_after() -> None:
    requests = groups(60)
    one = pb.placement("sticky-1", lb.simulate(PODS, requests, pb.sticky(1)))
    two = pb.placement("sticky-2", lb.simulate(PODS, requests, pb.sticky(2)))
    assert one.cold == 3 and two.cold == 6  # the first sighting on each holder
    assert one.ttft_p50 < one.ttft_p90 <= one.ttft_p99


def test_trace_hashes_the_prompts_as_the_pods_do_and_groups_share_their_head() -> None:
    a = cell_args(COMMAND)
    specs = lb.pods_of(a)
    hasher = BlockHasher(specs[0].block_size, specs[0].hash_algo, "0")
    requests = lb.trace(a, 1, 3.0, 4.0, hasher)
    assert requests and all(len(r.hashes) == r.prompt_tokens // 16 for r in requests)
    assert len({r.hashes[0] for r in requests}) <= 3  # one head per prefix group
    assert all(r.hashes == () for r in lb.trace(a, 1, 3.0, 4.0))


def test_main_replays_a_cell_and_prints_the_mark(tmp_path: Path) -> None:
    record = {"command": COMMAND, "commit": "abc1234"}
    points = [
        {"router": r, "rate": 3.0, "stats": {"ttft": {"p90": v}}}
        for r, v in (("epp:gpu-aware", 0.2), ("sglang-router:cache_aware", 0.25))
    ]
    (tmp_path / "prefix8-s1.json").write_text(json.dumps({"record": record, "points": points}))
    assert pb.main(["--matrix", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "prefixbound.md").read_text()
    assert "## prefix8, seed 1 (" in text and "| sticky-2 |" in text
    assert "- the mark, 0.8x the best cache-aware peer: 200 ms" in text
    assert pb.main(["--matrix", str(tmp_path), "--cells", "sharegpt"]) == 2
