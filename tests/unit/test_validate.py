"""`epp validate`: the table, the problem lines and the exit status."""

from __future__ import annotations

import io
from pathlib import Path

from epp import validate

ROOT = Path(__file__).resolve().parents[2]


def run(*paths: Path | str) -> tuple[int, str]:
    out = io.StringIO()
    code = validate.run([str(p) for p in paths], out)
    return code, out.getvalue()


def test_seed_folder_prints_table_and_warning() -> None:
    code, text = run(ROOT / "examples" / "seed")
    assert code == 0
    lines = text.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "API", "VERSION", "DETAILS"]
    assert any(line.startswith("InferencePool ") and "replicas 3" in line for line in lines)
    assert any(line.startswith("InferenceModel ") and "priority 1" in line for line in lines)
    assert "warning inference.yaml" not in text  # the source names the whole path
    assert "spec.routing.trafficSplit[1].poolRef.name" in text
    assert "[PoolNotFound]" in text
    assert lines[-1] == "5 resource(s) accepted, 0 error(s), 2 warning(s)"


def test_errors_give_exit_status_one(tmp_path: Path) -> None:
    bad = tmp_path / "model.yaml"
    bad.write_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha2\n"
        "kind: InferenceModel\n"
        "metadata: {name: m}\n"
        "spec:\n"
        "  modelName: m\n"
        "  poolRef: {name: p}\n"
        "  targetModels: [{name: a, weight: 0}]\n"
    )
    code, text = run(bad)
    assert code == 1
    line = f"error   {bad}#1  InferenceModel/m  spec.targetModels[0].weight: must be 1..1000000"
    assert line in text
    assert text.splitlines()[0] == "no resources accepted"


def test_several_paths_and_files(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("a: [\n")
    code, text = run(ROOT / "examples" / "canary", tmp_path)
    assert code == 1
    assert "YAML syntax error" in text
    assert "6 resource(s) accepted, 1 error(s), 0 warning(s)" in text


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    code, text = run(tmp_path / "absent")
    assert code == 1
    assert "no such file or folder" in text
