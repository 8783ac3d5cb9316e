"""A real Prometheus server (Debian package `prometheus`) for tests and benchmarks: started from
/usr/bin/prometheus with a temporary config and TSDB on a loopback port, scraping one target."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        pytest.fail(
            "Prometheus server binary not found: install Debian's package with "
            "`apt-get install -y prometheus` (the test starts /usr/bin/prometheus itself)"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def run_prometheus(
    tmp_path: Path, target: str, interval: str = "1s"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Start /usr/bin/prometheus scraping `target` every `interval`; stop it on exit."""
    binary = prometheus_binary()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
        f"scrape_configs:\n  - job_name: dcgm\n    scrape_interval: {interval}\n"
        "    static_configs:\n"
        f"      - targets: ['{target}']\n"
    )
    log_file = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_file.close()
