"""The control-plane half of the local stack: `epp controlplane` serving the manifests' Gateway
and HTTPRoutes to Envoy over ADS (HTTP on the stack's port, HTTPS with a generated certificate).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx


def controlplane_argv(
    manifests: Sequence[Path],
    xds_port: int,
    status_port: int,
    epp_addresses: str,
    listen_host: str,
    http_port: int,
    https_port: int,
    cert_dir: Path,
    epp_tls: bool = False,
) -> list[str]:
    argv = [sys.executable, "-m", "epp", "controlplane",
            "--xds-port", str(xds_port), "--status-port", str(status_port),
            "--epp-address", epp_addresses, "--single-epp",
            "--listen-host", listen_host, "--port-map", f"443={https_port}",
            "--plain-http-port", str(http_port), "--plain-any-host",
            "--cert-dir", str(cert_dir), "--interval", "0.5"]  # fmt: skip
    for path in manifests:
        argv += ["--manifests", str(path)]
    if epp_tls:
        argv.append("--epp-tls")
    return argv


async def gateway_status(status_port: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=1.0) as client:
        status: dict[str, Any] = (await client.get(f"http://127.0.0.1:{status_port}/status")).json()
        return status


async def gateways_programmed(status_port: int) -> bool:
    gateways = (await gateway_status(status_port)).get("gateways", [])
    return bool(gateways) and all(
        any(c["type"] == "Programmed" and c["status"] == "True" for c in g["conditions"])
        for g in gateways
    )


def status_lines(status: dict[str, Any]) -> list[str]:
    """One line per Gateway and per HTTPRoute parent with its conditions, for the banner."""

    def conds(items: list[dict[str, Any]]) -> str:
        return " ".join(f"{c['type']}={c['status']}" for c in items)

    lines = [f"  gateway {g['key']}: {conds(g['conditions'])}" for g in status.get("gateways", [])]
    for route in status.get("httproutes", []):
        lines += [
            f"  httproute {route['key']} on {p['parent']}: {conds(p['conditions'])}"
            for p in route["parents"]
        ]
    return lines
