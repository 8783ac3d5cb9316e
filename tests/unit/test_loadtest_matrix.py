"""loadtest/matrix: the cells cover every dimension, the multi-turn workload reuses its history,
and the summary judges ours against the best peer; no process is started."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections import defaultdict
from pathlib import Path

import pytest

from epp.sim.openai import CHAT_OVERHEAD, parse_request
from loadtest.bench import __main__ as bench
from loadtest.bench.client import encode
from loadtest.bench.report import Point
from loadtest.bench.routers import Children, cpu_seconds
from loadtest.bench.stats import summarize
from loadtest.matrix.__main__ import (
    Matrix,
    bench_argv,
    capacities,
    cell_stem,
    make_parser,
    rerender,
)
from loadtest.matrix.cells import CELLS, TOKENS_PER_S_CEILING, Cell, select
from loadtest.matrix.summary import (
    TIES,
    Run,
    counts,
    headline,
    judge,
    parse_ties,
    render,
    verdicts,
)
from loadtest.workloads import (
    CHARS_PER_TOKEN,
    MultiTurnShape,
    multi_turn,
    poisson_arrivals,
    workload,
)

from .test_loadtest_bench import ok

# ---- cells ----------------------------------------------------------------------------------


def test_the_default_cells_vary_every_dimension() -> None:
    assert 8 <= len(CELLS) <= 12
    assert len({c.name for c in CELLS}) == len(CELLS)
    assert {c.pods for c in CELLS} == {4, 16}
    assert min(c.max_num_seqs for c in CELLS) == 8 and max(c.max_num_seqs for c in CELLS) == 64
    assert min(c.kv for c in CELLS) == 0.5 and max(c.kv for c in CELLS) >= 3
    assert {c.speeds for c in CELLS} == {"uniform", "one-slow", "mixed"}
    assert {c.mix for c in CELLS} == {"sharegpt", "shared-prefix", "multi-turn"}
    groups = {c.groups for c in CELLS if c.mix == "shared-prefix"}
    assert min(groups) == 8 and max(groups) == 128
    assert {c.lengths for c in CELLS} == {"announced", "cap", "none"}
    assert all(c.load == 0.9 for c in CELLS)


def test_the_reference_cell_is_the_side_by_side_benchmarks_cluster() -> None:
    reference = select("sharegpt")[0]
    flags = bench.make_parser().parse_args(reference.bench_flags())
    default = bench.make_parser().parse_args([])
    for name in ("pods", "profile", "speed", "slow_speed", "max_num_seqs", "lengths"):
        assert getattr(flags, name) == getattr(default, name), name
    assert abs(flags.num_gpu_blocks - default.num_gpu_blocks) < 0.1 * default.num_gpu_blocks


def test_kv_blocks_are_a_multiple_of_the_working_set() -> None:
    prefix8 = select("prefix8")[0]  # 8 prefixes of 2,000 tokens, KV for half of them
    assert prefix8.working_set_tokens == 16_000
    assert prefix8.num_gpu_blocks * 16 == 8_000
    sharegpt = Cell("x", "", "sharegpt", max_num_seqs=10, kv=2)
    assert sharegpt.working_set_tokens == pytest.approx(10 * (190 * 1.5 + 130 * 1.28), rel=0.01)
    few, many = (Cell("x", "", "multi-turn", conversations=n) for n in (10, 20))
    assert few.working_set_tokens < many.working_set_tokens


def test_every_cell_stays_within_what_the_machine_carries() -> None:
    for cell in CELLS:
        assert cell.nominal_tokens_per_s() <= TOKENS_PER_S_CEILING, cell.name
    assert Cell("x", "", "sharegpt", pods=16, max_num_seqs=64).nominal_tokens_per_s() > (
        TOKENS_PER_S_CEILING
    )


def test_cell_flags_parse_as_benchmark_flags_and_reach_the_simulator() -> None:
    mixed = select("prefix32-mixed")[0]
    args = bench.make_parser().parse_args(mixed.bench_flags())
    sim = bench.sim_args(args)
    assert args.workloads == "shared-prefix" and args.fractions == "0.9"
    assert (args.prefix_groups, args.prefix_tokens, args.max_num_seqs) == (32, 1000, 16)
    assert args.lengths == "cap" and "--answer-from-prompt" in sim
    for option in ("1:profile=A100-80G", "2:profile=A100-40G", "3:profile=MIG-1g.10gb"):
        assert sim[sim.index(option) - 1] == "--pod-option"
    assert sim[sim.index("--flush-interval") + 1] == "0.1"
    assert bench.hardware_varies(args)
    slow = bench.make_parser().parse_args(select("multiturn")[0].bench_flags())
    assert (slow.speed, slow.slow_speed) == (0.25, 0.125) and not bench.hardware_varies(slow)
    assert slow.conversations == 48


def test_references_are_not_made_up_for_mixed_gpus(tmp_path: Path) -> None:
    samples = [ok(0.0, 0.1, 3.0, "pod-0", tokens=100) for _ in range(5)]
    uniform = bench.Bench(bench.make_parser().parse_args([]), Children(tmp_path))
    assert not math.isnan(uniform.floor(samples))
    argv = select("prefix32-mixed")[0].bench_flags()
    mixed = bench.Bench(bench.make_parser().parse_args(argv), Children(tmp_path))
    assert math.isnan(mixed.floor(samples))
    assert math.isnan(mixed.batched_floor(samples))
    assert math.isnan(mixed.in_order_reference(samples))


def test_cells_are_selected_by_name_in_matrix_order() -> None:
    assert [c.name for c in select("multiturn,sharegpt")] == ["sharegpt", "multiturn"]
    assert select("all") == list(CELLS)
    with pytest.raises(ValueError, match="unknown cells nope"):
        select("sharegpt,nope")


def test_a_bad_cell_is_refused() -> None:
    for bad in ({"mix": "chat"}, {"speeds": "fast"}, {"lengths": "maybe"}, {"kv": 0}):
        with pytest.raises(ValueError, match="cell x"):
            Cell("x", "", **{"mix": "sharegpt", **bad})  # type: ignore[arg-type]


def test_capacities_apply_to_every_cell_or_by_name() -> None:
    cells = select("sharegpt,prefix8")
    assert capacities("", cells) == {}
    assert capacities("5.5", cells) == {"sharegpt": 5.5, "prefix8": 5.5}
    assert capacities("prefix8=7", cells) == {"prefix8": 7.0}
    with pytest.raises(ValueError, match="not a selected cell"):
        capacities("multiturn=3", cells)


def test_bench_argv_carries_the_runs_settings_and_the_seed() -> None:
    a = make_parser().parse_args(["--duration", "20", "--seeds", "3,4"])
    args = bench.make_parser().parse_args(bench_argv(select("prefix8")[0], a, 4))
    assert (args.duration, args.seed, args.capacity_seconds) == (20.0, 4, 20.0)
    assert args.capacity_ramp and args.routers.split(",")[0] == "epp:gpu-aware"
    assert not args.samples
    kept = make_parser().parse_args(["--samples"])
    assert bench.make_parser().parse_args(bench_argv(select("prefix8")[0], kept, 1)).samples


def test_each_cell_and_seed_names_its_own_files() -> None:
    """Cells of one workload share the run's folder: their reports and samples are named by
    cell and seed, and by repeat where a seed repeats."""
    cell = select("prefix8")[0]
    assert cell_stem(cell, 2, 1, [1, 2]) == "prefix8-s2"
    assert [cell_stem(cell, 1, r, [1, 1]) for r in (0, 1)] == ["prefix8-s1-r0", "prefix8-s1-r1"]


def test_a_cells_samples_are_named_by_the_cell(tmp_path: Path) -> None:
    a = make_parser().parse_args(["--cells", "prefix8", "--samples", "--out", str(tmp_path)])
    matrix = Matrix(a, Children(tmp_path))
    b = matrix._bench(select("prefix8")[0], 1)
    assert b.a.samples and b.samples_name("shared-prefix", "epp:gpu-aware", 0.9) == (
        "shared-prefix-epp-gpu-aware-0.9"
    )
    b.samples_stem = cell_stem(select("prefix8")[0], 1, 0, [1])
    assert b.samples_name("shared-prefix", "epp:gpu-aware", 0.9) == "prefix8-s1-epp-gpu-aware-0.9"
    own = make_parser().parse_args([])  # each cell's own duration: 16 pods have 3x the rate
    durations = {
        c.pods: bench.make_parser().parse_args(bench_argv(c, own, 1)).duration for c in CELLS
    }
    assert durations == {4: 30.0, 16: 20.0}


# ---- the multi-turn workload ----------------------------------------------------------------


def _turns(seed: int = 3, rate: float = 6.0, seconds: float = 120.0, **shape: float) -> list:
    arrivals = poisson_arrivals(seed, rate, seconds)
    s = MultiTurnShape(**shape)  # type: ignore[arg-type]
    return list(zip(arrivals, multi_turn(seed, s, arrivals), strict=False))


def test_later_turns_resend_the_history_with_replies_of_the_asked_length() -> None:
    by_conversation = defaultdict(list)
    for _, r in _turns():
        by_conversation[r.group].append(r)
    assert sum(len(rs) > 1 for rs in by_conversation.values()) > 20
    for rs in by_conversation.values():
        for before, after in itertools.pairwise(rs):
            n = len(before.messages)
            assert after.messages[:n] == before.messages
            role, reply = after.messages[n]
            assert role == "assistant"
            assert len(reply) == before.max_tokens * CHARS_PER_TOKEN
            assert after.messages[n + 1][0] == "user" and len(after.messages) == n + 2


@pytest.mark.parametrize("lengths", ["announced", "cap"])
def test_a_later_turns_prompt_starts_with_the_earlier_prompt_on_the_server(lengths: str) -> None:
    by_conversation = defaultdict(list)
    for _, r in _turns():
        by_conversation[r.group].append(r)
    pairs = [p for rs in by_conversation.values() for p in itertools.pairwise(rs)]
    for before, after in pairs:
        first = parse_request(encode(before, "m", lengths, 1024), chat=True).prompt
        second = parse_request(encode(after, "m", lengths, 1024), chat=True).prompt
        first = first.removesuffix(CHAT_OVERHEAD)
        common = next(
            (i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y),
            min(len(first), len(second)),
        )
        if lengths == "announced":
            assert common == len(first)
        else:  # the earlier turn's marker is not in the history: at most one block differs
            assert common >= len(first) - len(b" #answer=400") - 16 * CHARS_PER_TOKEN


def test_multi_turn_is_reproducible_and_seeded() -> None:
    assert _turns(seed=5, seconds=30) == _turns(seed=5, seconds=30)
    assert [r for _, r in _turns(seed=5, seconds=30)] != [r for _, r in _turns(seed=6, seconds=30)]
    arrivals = poisson_arrivals(1, 5.0, 10.0)
    direct = list(multi_turn(1, MultiTurnShape(), arrivals))
    assert list(workload("multi-turn", 1, arrivals=arrivals)) == direct


def test_a_user_waits_for_the_answer_and_thinks_while_others_are_ready() -> None:
    shape = {"live": 64, "reply_s_per_token": 0.01, "think_s": 1.0}
    last: dict[str, tuple[float, int]] = {}
    early = 0
    for t, r in _turns(rate=2.0, seconds=200, **shape):
        if r.group in last:
            sent, tokens = last[r.group]
            early += t - sent < tokens * 0.01
        last[r.group] = (t, r.max_tokens)
    assert early == 0


def test_conversations_start_part_way_and_are_replaced_when_done() -> None:
    turns = _turns(seconds=200, live=16)
    first = [r for _, r in turns[:16]]
    assert any(len(r.messages) > 2 for r in first)  # some began before the first arrival
    assert len({r.group for _, r in turns}) > 16 * 3  # many more than the live ones
    assert all(len(r.messages) <= 2 * 6 for _, r in turns)  # at most turns_max user turns


def test_a_closed_loop_spaces_turns_by_the_mean_gap() -> None:
    requests = list(itertools.islice(multi_turn(2, MultiTurnShape(live=8)), 200))
    assert len(requests) == 200
    assert sum(len(r.messages) > 2 for r in requests) > 100  # most are later turns


def test_the_multi_turn_working_set_counts_systems_and_live_histories() -> None:
    base = MultiTurnShape(live=0, systems=4, system_tokens=100)
    assert base.working_set_tokens == 400
    one = MultiTurnShape(live=1, systems=0, turns_min=3, turns_max=3, sigma=0.0)
    assert one.working_set_tokens == 160  # one done turn on average: 60 + 100 tokens


# ---- CPU and benchmark plumbing ---------------------------------------------------------------


def test_cpu_seconds_reads_user_system_and_reaped_children(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    fields = ["S"] + ["0"] * 10 + ["100", "50", "30", "20"] + ["0"] * 30
    (tmp_path / "42" / "stat").write_text("42 (a name) with) " + " ".join(fields))
    assert cpu_seconds(42, tmp_path) == pytest.approx(200 / os.sysconf("SC_CLK_TCK"))
    assert cpu_seconds(43, tmp_path) is None
    assert cpu_seconds(os.getpid()) is not None


def test_a_points_cpu_is_printed_per_process() -> None:
    point = Point("epp:gpu-aware", 5.0, 0.9, summarize([ok(0, 0.1, 1)]), (), (("sim", 0.42),))
    assert point.cpu_text() == "sim 42%"
    assert Point("x", 1, 1, summarize([])).cpu_text() == "-"


# ---- the summary ----------------------------------------------------------------------------

OURS, LR, SG = "epp:gpu-aware", "envoy:LEAST_REQUEST", "sglang-router:cache_aware"
T = {"ttft_p90": 0.1, "ttft_p99": 0.2, "e2e_p90": 0.1}


def run(
    router: str, v: float, repeat: int = 0, cell: str = "c", sent: int = 100, **kw: float
) -> Run:
    values = {"ttft_p90": v, "ttft_p99": v * 2, "e2e_p90": v * 10, **kw}
    return Run(cell, router, repeat, 1, sent=sent, ok=sent - int(kw.get("failed", 0)),
               **{k: values[k] for k in ("ttft_p90", "ttft_p99", "e2e_p90")})  # fmt: skip


def test_ours_wins_loses_or_ties_against_the_best_peer() -> None:
    def mark(ours: float) -> tuple[str, str, float]:
        v = judge("c", "ttft_p90", OURS, [run(OURS, ours), run(LR, 2.0), run(SG, 1.0)], T)
        return v.mark, v.best, v.ratio

    assert mark(0.5) == ("win", SG, 0.5)
    assert mark(1.05) == ("tie", SG, 1.05)
    assert mark(0.95) == ("tie", SG, pytest.approx(0.95))
    assert mark(1.3) == ("loss", SG, 1.3)


def test_tie_bands_are_per_metric_and_named_overrides_keep_the_others() -> None:
    assert set(TIES) == {"ttft_p90", "ttft_p99", "e2e_p90"}
    assert parse_ties("") == TIES
    assert parse_ties("e2e_p90=0.2") == {**TIES, "e2e_p90": 0.2}
    for bad in ("e2e=0.2", "ttft_p90"):
        with pytest.raises(ValueError, match="bad tie band"):
            parse_ties(bad)
    assert make_parser().parse_args(["--tie", "ttft_p99=0.3"]).tie["ttft_p99"] == 0.3


def test_p99_has_its_own_band() -> None:
    runs = [run(OURS, 0.85), run(SG, 1.0)]
    assert judge("c", "ttft_p90", OURS, runs, T).mark == "win"
    assert judge("c", "ttft_p99", OURS, runs, T).mark == "tie"


def test_a_peer_that_fails_requests_is_not_the_best_and_ours_failing_is_a_loss() -> None:
    runs = [run(OURS, 1.0), run(LR, 1.5), run(SG, 0.5, failed=5)]
    v = judge("c", "ttft_p90", OURS, runs, T)
    assert (v.best, v.mark) == (LR, "win")
    v = judge("c", "ttft_p90", OURS, [run(OURS, 0.5, failed=3), run(LR, 1.5)], T)
    assert (v.mark, v.why) == ("loss", "3 failed")


def test_nothing_to_compare_is_not_a_mark() -> None:
    assert judge("c", "e2e_p90", OURS, [run(LR, 1.0)], T).mark == "n/a"
    assert judge("c", "e2e_p90", OURS, [run(OURS, 1.0)], T).why == "no peer to compare"
    nan = run(OURS, math.nan)
    assert judge("c", "ttft_p90", OURS, [nan, run(LR, 1.0)], T).mark == "n/a"


def test_repeats_average_and_widen_the_band_to_their_spread() -> None:
    steady = [run(OURS, 0.8, 0), run(OURS, 0.8, 1), run(SG, 1.0, 0), run(SG, 1.0, 1)]
    v = judge("c", "ttft_p90", OURS, steady, T)
    assert (v.mark, v.ratios, v.band) == ("win", (0.8, 0.8), 0.1)
    noisy = [run(OURS, 0.5, 0), run(OURS, 1.1, 1), run(SG, 1.0, 0), run(SG, 1.0, 1)]
    v = judge("c", "ttft_p90", OURS, noisy, T)
    assert v.ratio == pytest.approx(0.8) and v.band == pytest.approx(0.3)
    assert v.mark == "tie"  # 0.8 looks like a win, but the repeats moved by ±0.3


def test_the_best_peer_is_chosen_on_the_mean_over_repeats() -> None:
    runs = [run(OURS, 1.0, 0), run(OURS, 1.0, 1), run(LR, 0.5, 0), run(LR, 2.5, 1),
            run(SG, 1.2, 0), run(SG, 1.2, 1)]  # fmt: skip
    v = judge("c", "ttft_p90", OURS, runs, T)
    assert v.best == SG and v.ratios == pytest.approx((1 / 1.2, 1 / 1.2))


def test_counts_add_up_per_metric_and_overall() -> None:
    runs = [run(OURS, 0.5, cell="a"), run(SG, 1.0, cell="a"),
            run(OURS, 2.0, cell="b"), run(SG, 1.0, cell="b")]  # fmt: skip
    vs = verdicts(runs, ["a", "b"], T)
    assert [(v.cell, v.metric, v.mark) for v in vs[:3]] == [
        ("a", "ttft_p90", "win"), ("a", "ttft_p99", "win"), ("a", "e2e_p90", "win")
    ]  # fmt: skip
    c = counts(vs)
    assert (c["all"]["win"], c["all"]["loss"], c["ttft_p99"]["loss"]) == (3, 3, 1)


def test_the_summary_has_a_table_per_metric_and_the_counts() -> None:
    runs = [run(OURS, 0.5, 0), run(OURS, 0.7, 1), run(SG, 1.0, 0), run(SG, 1.0, 1),
            run(LR, 2.0, 0, failed=2), run(LR, 2.0, 1)]  # fmt: skip
    text = render(runs, [("c", "what c varies")], [OURS, LR, SG], T, ["# title"])
    assert text.startswith("# title\n")
    assert "| c | what c varies |" in text
    row = "| c | **0.600 ±17%** | 2.000 ±0% (2 failed) | 1.000 ±0% | sglang-router:cache_aware |"
    assert row + " 0.60 (0.50-0.70) | win |" in text
    assert "## p99 TTFT (s)" in text and "## p90 e2e (s)" in text
    assert "| all | 3 | 0 | 0 | 0 |" in text
    assert "half the range of the 2 per-repeat ratios" in text


def test_a_written_summary_renders_again_with_other_bands(tmp_path: Path) -> None:
    args = make_parser().parse_args(["--cells", "sharegpt", "--out", str(tmp_path)])
    matrix = Matrix(args, Children(tmp_path))
    matrix.runs = [run(OURS, 0.8, cell="sharegpt"), run(SG, 1.0, cell="sharegpt")]
    path = matrix.write()
    assert path == tmp_path / "summary.md"
    assert "\n- commit: `" in path.read_text()
    assert json.loads(path.with_suffix(".json").read_text())["record"]["tool"] == "matrix"
    assert "| all | 2 | 0 | 1 | 0 |" in path.read_text()  # p90 TTFT's band is ±25 %
    data = json.loads(path.with_suffix(".json").read_text())
    assert data["runs"][0] == dataclasses.asdict(matrix.runs[0])
    again = rerender(path.with_suffix(".json"), {**TIES, "ttft_p90": 0.1})
    assert "| all | 3 | 0 | 0 | 0 |" in again


def test_the_headline_puts_production_lengths_first_and_counts_each_seed() -> None:
    cells = [
        ("told", "a reference; 4 pods (uniform), batch 8, KV 1x working set (10 blocks), "
                 "ShareGPT-like, lengths announced"),
        ("capped", "a cap; 4 pods (uniform), batch 8, KV 1x working set (10 blocks), "
                   "ShareGPT-like, lengths cap"),
    ]  # fmt: skip
    runs = [run(OURS, 0.5, 0, "told"), run(OURS, 0.5, 1, "told"),
            run(SG, 1.0, 0, "told"), run(SG, 1.0, 1, "told"),
            run(OURS, 0.95, 0, "capped"), run(OURS, 1.45, 1, "capped"),
            run(SG, 1.0, 0, "capped"), run(SG, 1.0, 1, "capped")]  # fmt: skip
    lines = headline(runs, cells, T)
    assert lines[0].startswith("| cell | cluster and prompts | lengths | p90 TTFT ours")
    assert lines[2].startswith("| capped | 4 pods (uniform), batch 8, KV 1x, ShareGPT-like | cap |")
    assert "1.200 / 1.000 sglang CA (tie; 0.95-1.45x)" in lines[2]  # the repeats' spread
    assert lines[3].startswith("| told |")
    assert "**0.500 / 1.000 sglang CA (win; 0.50-0.50x)**" in lines[3]
    assert lines[5].startswith("**3 wins, 0 losses, 3 ties of 6**; each seed alone")
    assert "3 / 0 / 3 on seed 1" in lines[5]  # repeat 0: capped ties; repeat 1: it loses
    assert "3 / 3 / 0 on seed 1" in lines[5]
    assert lines[5].endswith("(sglang CA: sglang-router:cache_aware).")
