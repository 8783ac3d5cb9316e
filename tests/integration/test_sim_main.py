"""`python -m epp.sim.main` as a process: prints one line per pod, serves, exits 0 on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_process_serves_and_stops_cleanly_on_sigterm() -> None:
    cmd = [
        sys.executable, "-m", "epp.sim.main", "--pods", "127.0.0.2:0,127.0.0.3:0",
        "--pod-option", "1:speed=0.5", "--gpu-exporter-port", "0", "--lora", "sql-lora",
    ]  # fmt: skip
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(3)]
            pods = [re.search(r"http://(\S+)", line) for line in lines[:2]]
            assert all(pods), lines
            addresses = [m.group(1) for m in pods if m]
            assert "speed=0.5" in lines[1] and "gpu exporter" in lines[2]
            for i, addr in enumerate(addresses):
                r = httpx.post(
                    f"http://{addr}/v1/chat/completions",
                    json={"model": "sql-lora", "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 3},
                    timeout=5,
                )  # fmt: skip
                assert r.status_code == 200
                assert r.headers["x-inference-pod"] == f"sim-pod-{i}"
                assert r.json()["usage"]["completion_tokens"] == 3
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=10)
    assert rc == 0
