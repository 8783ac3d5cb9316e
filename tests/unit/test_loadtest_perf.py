"""inference-perf beside ours: its reports read back (fixtures are a real run's, trimmed), our
definitions over its records, its config for the guide's shape, the report and its record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from loadtest.perf import environment, guide, metrics, report
from loadtest.perf.__main__ import main, read_run
from loadtest.record import Record
from loadtest.results.index import problems, runs

FIXTURES = Path(__file__).parents[1] / "fixtures" / "inference_perf"


def _records() -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads(
        (FIXTURES / "per_request_lifecycle_metrics.json").read_text()
    )
    return data


def test_its_stage_report_is_read_with_its_own_numbers() -> None:
    raw = metrics.read_stages(FIXTURES)
    assert [s["load_summary"]["requested_rate"] for s in raw] == [2.0, 4.0]
    theirs = metrics.their_stage(raw[0])
    assert theirs["ok"] == 8 and theirs["failed"] == 0
    ttft = raw[0]["successes"]["latency"]["time_to_first_token"]["p90"]
    assert theirs["time_to_first_token.p90"] == ttft > 0
    assert theirs["normalized_time_per_output_token.p90"] > 0
    assert theirs["output_tokens_per_sec"] > 0


def test_records_are_cut_into_stages_in_sending_order() -> None:
    first, second = metrics.split_by_stage(_records(), [8, 16])
    assert len(first) == 8 and len(second) == 16
    assert max(float(r["start_time"]) for r in first) < min(float(r["start_time"]) for r in second)  # type: ignore[arg-type]


def test_ours_counts_the_servers_tokens_where_it_counts_its_own() -> None:
    """Same requests, two definitions: our ITL divides by the completion tokens the server
    counted (20 here), inference-perf's TPOT by the answer re-tokenized on the client (30 with
    the run's tokenizer), so ours is about 1.5x its TPOT; e2e is the same measurement."""
    raw = metrics.read_stages(FIXTURES)
    first, _ = metrics.split_by_stage(_records(), [8, 16])
    ours = metrics.our_stage(first)
    theirs = metrics.their_stage(raw[0])
    assert ours.ok == 8
    assert ours.itl[0] > 1.3 * theirs["time_per_output_token.median"]
    assert abs(ours.e2e[1] - theirs["request_latency.p90"]) < 1e-6
    assert abs(ours.ttft[1] - theirs["time_to_first_token.p90"]) < 1e-6
    usage = [r["info"]["response_metrics"]["server_usage"] for r in first]  # type: ignore[index]
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usage)
    assert ours.hit_rate == cached / sum(u["prompt_tokens"] for u in usage) > 0  # shared prefixes


def test_a_failed_request_is_left_out_of_ours() -> None:
    records = _records()[:3]
    records[1] = {**records[1], "error": {"error_type": "ClientError", "error_msg": "503"}}
    assert metrics.our_stage(records).ok == 2


def test_the_scaled_shape_is_the_guides_divided_by_ten() -> None:
    g, s = guide.GUIDE, guide.SCALED
    assert (g.groups, g.prompts_per_group, g.system_tokens) == (150, 5, 6000)
    assert (s.groups * 10, s.system_tokens * 10, s.question_tokens * 10) == (
        g.groups,
        g.system_tokens,
        g.question_tokens,
    )
    assert s.output_tokens * 10 == g.output_tokens and s.prompts_per_group == g.prompts_per_group


def test_the_config_is_shared_prefix_under_a_poisson_ladder(tmp_path: Path) -> None:
    cfg = guide.config("http://127.0.0.1:1", "bench", tmp_path / "tok", tmp_path / "out",
                       guide.SCALED, [1, 3], 20, 5.0, 7)  # fmt: skip
    assert cfg["data"]["type"] == "shared_prefix"
    assert cfg["data"]["shared_prefix"]["num_groups"] == 15
    assert cfg["data"]["shared_prefix"]["seed"] == 7
    assert cfg["load"]["type"] == "poisson"
    assert cfg["load"]["stages"] == [{"rate": 1, "duration": 20}, {"rate": 3, "duration": 20}]
    assert cfg["server"]["base_url"] == "http://127.0.0.1:1" and cfg["server"]["ignore_eos"]
    assert cfg["tokenizer"]["pretrained_model_name_or_path"] == str(tmp_path / "tok")
    assert cfg["report"]["request_lifecycle"]["per_request"] is True
    assert cfg["storage"]["local_storage"]["path"] == str(tmp_path / "out")


def test_the_report_puts_its_metrics_beside_ours_and_is_indexed(tmp_path: Path) -> None:
    run = read_run("epp:gpu-aware", FIXTURES)
    assert len(run.stages) == 2 and not run.error
    record = Record("inference-perf", "abc1234", "python -m loadtest.perf", "vm",
                    "2026-01-02 03:04 UTC", (("epp:gpu-aware", "gpu-aware: ..."),),
                    "shared-prefix")  # fmt: skip
    header = report.Header(record, "4 pods", guide.SCALED.text(), guide.GUIDE.text(), "2/4",
                           "0.7.0")  # fmt: skip
    failed = report.RouterRun("sglang-router:cache_aware", error="inference-perf exit 1: boom")
    folder = tmp_path / "2026-01-02-0304-inference-perf"
    path = report.write(folder, "shared-prefix", header, [run, failed])
    text = path.read_text()
    assert "## inference-perf's metrics (its definitions)" in text
    assert "## Ours, over the same requests" in text
    assert "| epp:gpu-aware | 2 (" in text and "| epp:gpu-aware | 4 | 16 |" in text
    assert "- sglang-router:cache_aware: inference-perf exit 1: boom" in text
    assert "- commit: `abc1234`" in text
    data = json.loads(path.with_suffix(".json").read_text())
    assert data["routers"][0]["stages"][0]["inference_perf"]["ok"] == 8
    assert len(data["routers"][0]["inference_perf_stage_reports"]) == 2
    assert problems(tmp_path) == []
    assert runs(tmp_path)[0].record.tool == "inference-perf"


def test_a_python_older_than_312_is_refused_by_name() -> None:
    with pytest.raises(environment.Unavailable, match=r"needs Python >= 3\.12"):
        environment.find_python(sys.executable if sys.version_info < (3, 12) else "/nonexistent")


def test_bad_rates_are_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--rates", "1,-2"])
    assert e.value.code == 2
    assert "--rates '1,-2': want positive requests/s" in capsys.readouterr().err
