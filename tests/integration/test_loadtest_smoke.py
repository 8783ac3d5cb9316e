"""Smoke test of loadtest/locustfile.py: locust headless for a few seconds against a local stack.

The stack is the seed example (Envoy + EPP + simulated pods on their own loopback addresses);
locust runs as a child process with a CSV report, which the test reads back: chat requests
succeeded and the streaming users recorded TTFT and ITL rows.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from epp.local.stack import LocalStack, StackConfig
from tests.ports import free_ports

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
LOCUST = Path(sys.executable).parent / "locust"


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


@pytest.mark.timeout(90)
async def test_locust_headless_against_local_stack(tmp_path: Path) -> None:
    listener, admin, grpc, health, metrics = free_ports(5)
    config = StackConfig(
        listener_port=listener,
        admin_port=admin,
        epp_port=grpc,
        health_port=health,
        metrics_port=metrics,
        first_pod_ip=171,  # 127.0.0.171…: away from the pods of other tests
        run_dir=tmp_path / "stack",
    )
    async with LocalStack(config) as stack:
        argv = [
            str(LOCUST), "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
            "-u", "6", "-r", "6", "-t", "8s", "--stop-timeout", "10", "--host", stack.url,
            "--csv", str(tmp_path / "run"), "--only-summary", "--loglevel", "WARNING",
            "StreamingChatUser", "NonStreamingChatUser", "MultiTurnUser",
        ]  # fmt: skip
        env = {**os.environ, "LOADTEST_SEED": "3", "PYTHONPATH": str(REPO)}
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = out.decode(errors="replace")
    rows = _rows(tmp_path / "run_stats.csv")
    stream = rows[("POST", "chat stream")]
    assert int(stream["Request Count"]) >= 3, text
    assert int(stream["Failure Count"]) == 0, text
    assert int(rows[("POST", "chat")]["Request Count"]) >= 1, text
    ttft = rows[("TTFT", "chat stream")]
    assert int(ttft["Request Count"]) == int(stream["Request Count"])
    assert 0 < float(ttft["Median Response Time"]) <= float(stream["Median Response Time"])
    assert int(rows[("ITL", "chat stream")]["Request Count"]) >= 1
    assert "responses by served version / pool / pod" in text


def _bench_argv(out: Path, first_ip: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "loadtest.bench", "--workloads", "shared-prefix",
        "--capacity", "3", "--fractions", "1.0", "--pods", "2", "--first-ip", first_ip,
        "--drain", "15", "--budget-minutes", "2", "--speed", "1", "--slow-speed", "0.5",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _children_alive(marker: str) -> list[str]:
    alive = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd:
                alive.append(cmd)
    return alive


@pytest.mark.timeout(120)
async def test_bench_runs_ours_and_envoy_and_writes_the_table(tmp_path: Path) -> None:
    argv = _bench_argv(tmp_path, "127.0.78.2", "--duration", "3", "--routers",
                       "epp:gpu-aware,envoy:LEAST_REQUEST,nope-router-kind:x")  # fmt: skip
    bad = await asyncio.create_subprocess_exec(*argv, cwd=REPO, stderr=asyncio.subprocess.PIPE)
    _, err = await bad.communicate()
    assert bad.returncode != 0 and b"bad router" in err  # typos fail before anything starts
    argv[-1] = "epp:gpu-aware,envoy:LEAST_REQUEST,epp-replicas:gpu-aware:2"
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 110)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    table = (tmp_path / "shared-prefix.md").read_text()
    assert "| **epp:gpu-aware** | 3.00 (1.00) |" in table, table
    assert "| envoy:LEAST_REQUEST | 3.00 (1.00) |" in table
    assert "errors" in table and "FAILED" not in text
    assert "\n- commit: `" in table and "  - epp:gpu-aware: gpu-aware: " in table
    assert (tmp_path / "shared-prefix.png").exists()
    data = json.loads((tmp_path / "shared-prefix.json").read_text())
    assert data["record"]["tool"] == "bench" and data["record"]["commit"]
    points = data["points"]
    assert [p["router"] for p in points] == [
        "epp:gpu-aware", "envoy:LEAST_REQUEST", "epp-replicas:gpu-aware:2"]  # fmt: skip
    for p in points:
        assert p["stats"]["ok"] == p["stats"]["sent"] > 0, p
        assert p["stats"]["ttft"]["p90"] > 0 and 0 <= p["stats"]["hit_rate"] <= 1, p
    # Envoy spread the ext_proc streams over both replicas, and each counted its own
    replicas = dict(points[2]["streams"])
    assert sorted(replicas) == ["epp-1", "epp-2"] and min(replicas.values()) > 0, replicas
    assert sum(replicas.values()) == points[2]["stats"]["sent"], points[2]
    assert "## EPP replicas against one EPP" in table
    assert not _children_alive("127.0.78.2")


@pytest.mark.timeout(60)
async def test_bench_stops_every_child_on_sigint(tmp_path: Path) -> None:
    argv = _bench_argv(tmp_path, "127.0.79.2", "--duration", "30", "--routers", "epp:gpu-aware")
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        run_dir = first.removeprefix("logs in ").strip()
        assert "epp-bench-" in run_dir, first
        for _ in range(200):  # the pods listen, then the EPP and Envoy start
            if _listening("127.0.79.2", 8000) and len(_children_alive(run_dir)) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(_children_alive(run_dir)) >= 2  # the EPP and Envoy, named by their files
        await asyncio.sleep(2.0)  # requests in flight
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, out.decode(errors="replace")
    assert not _listening("127.0.79.2", 8000)
    assert not _children_alive("127.0.79.2")
    assert not _children_alive(run_dir)
