"""The results are a record people can trust: the index matches the run folders, every report
names its commit and no machine's folders, and the README and docs link only to indexed runs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from loadtest.bench.__main__ import Bench, make_parser
from loadtest.bench.report import Point
from loadtest.bench.routers import Children
from loadtest.bench.stats import summarize
from loadtest.matrix.summary import Run, headline
from loadtest.record import (
    REPO,
    RESULTS,
    Record,
    command_text,
    describe_commit,
    epp_profile_text,
    run_folder,
)
from loadtest.results.__main__ import main as results_main
from loadtest.results.index import INDEX, RUN, problems, render, runs
from tests.unit.test_loadtest_bench import ok

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_index_is_current() -> None:
    assert INDEX.read_text() == render(runs()), "run: python -m loadtest.results index"


def test_every_current_report_names_its_commit_and_no_machine_folder() -> None:
    assert problems() == []
    assert runs(), "no indexed run"


def _links(doc: Path) -> list[Path]:
    out = []
    for target in LINK.findall(doc.read_text()):
        if "://" in target or target.startswith("#"):
            continue
        out.append((doc.parent / target.split("#")[0]).resolve())
    return out


def test_the_readme_and_docs_link_only_to_indexed_reports() -> None:
    indexed = {RESULTS.resolve() / r.name for r in runs()}
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    seen = 0
    for doc in docs:
        for path in _links(doc):
            if RESULTS.resolve() not in path.parents:
                continue
            seen += 1
            assert path.exists(), f"{doc.name} links to {path}, which does not exist"
            inside = path == INDEX.resolve() or any(p in indexed for p in path.parents)
            assert inside, f"{doc.name} links to {path}: not an indexed run"
    assert seen, "the README and docs link to no results at all"


def test_a_run_folder_is_named_by_date_time_tool_and_tag() -> None:
    folder = run_folder("bench", "-after")
    assert folder.parent == RESULTS and RUN.match(folder.name)
    assert RUN.match(run_folder("matrix").name)
    with pytest.raises(ValueError, match="bad tag"):
        run_folder("bench", "a b")


def test_a_command_names_no_folder_of_the_machine() -> None:
    text = command_text(
        ".venv/bin/python -m loadtest.bench",
        ["--out", "/tmp/lead/x", "--epp-args", "--scheduler-config /home/me/c.yaml",
         f"{REPO}/loadtest/results/y", "--out=/srv/z", "http://127.0.0.1:9/v1"],
    )  # fmt: skip
    assert text.startswith(".venv/bin/python -m loadtest.bench --out ")
    assert "/tmp" not in text and "/home" not in text and str(REPO) not in text
    assert "--out '<out>'" in text and "'--out=<out>'" in text
    assert "<dir>/c.yaml" in text and " loadtest/results/y " in text
    assert "http://127.0.0.1:9/v1" in text


def test_the_commit_is_git_describe_of_the_checkout() -> None:
    commit = describe_commit()
    head = (REPO / ".git").exists() and commit != "unknown"
    assert head, "the tests run in a git checkout"
    assert re.match(r"^[0-9a-f]{7,}(-dirty)?$|^v?[\w.]+-\d+-g[0-9a-f]+(-dirty)?$", commit)


def test_the_profile_of_ours_is_the_one_the_epp_loads(tmp_path: Path) -> None:
    text = epp_profile_text("gpu-aware", priorities=True)
    assert text.startswith("gpu-aware: gpu-utilization-filter, prefix-cache-scorer x6")
    assert "; critical requests: critical: " in text
    config = tmp_path / "c.yaml"
    config.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins: [{type: queue-scorer}, {type: max-score-picker}]\n"
        "schedulingProfiles: [{name: gpu-aware, plugins: [{pluginRef: queue-scorer, weight: 4},"
        " {pluginRef: max-score-picker}]}]\n"
    )
    mine = epp_profile_text("gpu-aware", ["--scheduler-config", str(config)])
    assert mine.startswith("gpu-aware: queue-scorer x4, max-score-picker;")
    assert "`epp serve` flags: --scheduler-config '<dir>/c.yaml'" in mine


def _point(router: str) -> Point:
    return Point(router, 4.5, 0.9, summarize([ok(i * 0.1, 0.05, 1.0) for i in range(10)]))


def test_a_bench_run_writes_a_folder_the_index_accepts(tmp_path: Path) -> None:
    out = tmp_path / "2026-01-02-0304-bench-x"
    args = make_parser().parse_args(
        ["--out", str(out), "--routers", "epp:gpu-aware,envoy:LEAST_REQUEST"]
    )
    bench = Bench(args, Children(tmp_path))
    points = [_point("epp:gpu-aware"), _point("envoy:LEAST_REQUEST")]
    path = bench.write("sharegpt", 5.0, "given", "0.1 0.1 0.1", points, [])
    assert path == out / "sharegpt.md"
    assert sorted(p.name for p in out.iterdir()) == ["sharegpt.json", "sharegpt.md", "sharegpt.png"]
    assert problems(tmp_path) == []
    (run,) = runs(tmp_path)
    assert run.record.tool == "bench" and run.record.commit == describe_commit()
    assert [r for r, _ in run.record.profiles] == ["epp:gpu-aware", "envoy:LEAST_REQUEST"]
    assert run.subjects == ("sharegpt",) and run.reports == ("sharegpt.md",)
    assert "[2026-01-02-0304-bench-x](2026-01-02-0304-bench-x/sharegpt.md)" in render([run])


def test_problems_name_each_file_that_breaks_the_record(tmp_path: Path) -> None:
    good = tmp_path / "2026-01-02-0304-matrix"
    good.mkdir()
    record = Record("matrix", "abc1234", "python -m loadtest.matrix", "vm", "2026-01-02 03:04 UTC")
    (good / "summary.json").write_text(json.dumps({"record": record.to_json()}))
    (good / "summary.md").write_text("# x\n\n" + "\n".join(record.markdown()) + "\n")
    assert problems(tmp_path) == []
    (good / "cell-s1.md").write_text("# a report of another commit\n- commit: `fff0000`\n")
    (good / "cell-s1.json").write_text(json.dumps({"record": {**record.to_json(), "x": 1}}))
    (good / "notes.txt").write_text("x")
    (good / "summary.md").write_text(
        "# x\n\n" + "\n".join(record.markdown()) + "\nout: /work/main/loadtest/results\n"
    )
    (tmp_path / "counts").mkdir()
    (tmp_path / "2026-01-02-0305-bench").mkdir()
    (tmp_path / "loose.md").write_text("x")
    found = "\n".join(problems(tmp_path))
    assert "2026-01-02-0304-matrix/cell-s1.md: does not name the run's commit abc1234" in found
    assert "cell-s1.json" not in found  # its record names the commit
    assert "notes.txt: not a report" in found
    assert "summary.md:7: absolute path of a machine (/work/...)" in found
    assert "counts/: not a run folder" in found
    assert "2026-01-02-0305-bench/: no JSON report with a record" in found
    assert "loose.md: a loose file" in found


def test_the_index_command_writes_and_checks(tmp_path: Path) -> None:
    run = tmp_path / "2026-01-02-0304-bench"
    run.mkdir()
    record = Record("bench", "abc1234", "python -m loadtest.bench", "vm", "2026-01-02 03:04 UTC")
    (run / "sharegpt.json").write_text(json.dumps({"record": record.to_json()}))
    assert results_main(["index", "--check", "--root", str(tmp_path)]) == 1  # no index yet
    assert results_main(["index", "--root", str(tmp_path)]) == 0
    assert (
        "| [2026-01-02-0304-bench](2026-01-02-0304-bench/) |"
        in (tmp_path / "README.md").read_text()
    )
    assert results_main(["index", "--check", "--root", str(tmp_path)]) == 0
    (run / "sharegpt.md").write_text("no record\n")
    assert results_main(["index", "--check", "--root", str(tmp_path)]) == 1


def test_a_plot_is_drawn_again_from_its_json(tmp_path: Path) -> None:
    out = tmp_path / "2026-01-02-0304-bench"
    args = make_parser().parse_args(["--out", str(out), "--routers", "epp:gpu-aware"])
    Bench(args, Children(tmp_path)).write(
        "sharegpt", 5.0, "given", "0 0 0", [_point("epp:gpu-aware")], []
    )
    (out / "sharegpt.png").unlink()
    assert results_main(["plot", str(out / "sharegpt.json")]) == 0
    png = (out / "sharegpt.png").read_bytes()
    assert png.startswith(b"\x89PNG") and f"commit {describe_commit()}".encode() in png
    assert problems(tmp_path) == []


def test_the_readme_headline_is_the_linked_matrix_summary_as_the_tool_renders_it() -> None:
    """The README's headline table is not typed by hand: it is `summary.headline` of the run
    it links, so every figure in it is one a matrix run measured."""
    text = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("**Headline: the matrix**"))
    link = next(t for t in LINK.findall(" ".join(text[start : start + 4])) if "summary" in t)
    data = json.loads((REPO / link).with_suffix(".json").read_text())
    measured = [Run(**r) for r in data["runs"]]
    want = headline(measured, [(n, w) for n, w in data["cells"]], data["ties"])
    first = next(i for i in range(start, len(text)) if text[i].startswith("| cell |"))
    assert text[first : first + len(want)] == want, (
        f"the README's headline table is not what {link} renders: run "
        f"python -m loadtest.matrix --summarize {Path(link).with_suffix('.json')}"
    )


def test_what_runs_write_into_the_results_does_not_make_the_code_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "loadtest" / "results").mkdir(parents=True)
    index, code = tmp_path / "loadtest" / "results" / "README.md", tmp_path / "epp.py"
    index.write_text("runs\n")
    code.write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "1")

    def describe() -> str:
        describe_commit.cache_clear()  # taken once per process: ask again
        return describe_commit(tmp_path)

    clean = describe()
    assert re.fullmatch(r"[0-9a-f]{7,}", clean)
    index.write_text("runs and a new one\n")  # a run refreshed the index of runs
    (tmp_path / "loadtest" / "results" / "new-run.md").write_text("a report\n")
    assert describe() == clean
    code.write_text("x = 2\n")
    assert describe() == f"{clean}-dirty"
    describe_commit.cache_clear()
    assert describe_commit(tmp_path / "nowhere") == "unknown"
    describe_commit.cache_clear()
