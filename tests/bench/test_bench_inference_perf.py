"""inference-perf's smoke (marked bench, not in CI: its environment is a second Python >= 3.12
with transformers 5.x, about 790 MB, minutes to install): makes the environment if missing,
runs one short Poisson stage of the scaled guide shape against ours and prints both sets of
numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.bench
@pytest.mark.timeout(1800)
def test_inference_perf_runs_the_guide_shape_against_ours(tmp_path: Path) -> None:
    out = tmp_path / "2026-01-01-0000-inference-perf"
    argv = [sys.executable, "-m", "loadtest.perf", "--routers", "epp:gpu-aware", "--rates", "2",
            "--stage-seconds", "8", "--interval", "1", "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1700, check=False)
    print(done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((out / "shared-prefix.json").read_text())
    (router,) = data["routers"]
    assert router["router"] == "epp:gpu-aware" and not router["error"], router["error"]
    (stage,) = router["stages"]
    assert stage["inference_perf"]["ok"] > 0 and stage["inference_perf"]["failed"] == 0
    assert stage["ours"]["ok"] == stage["inference_perf"]["ok"]
    print((out / "shared-prefix.md").read_text())
