"""`epp controlplane` as its own process, as `epp up` will run it: the seed over HTTP and HTTPS.

Simulated pods and an EPP for examples/seed, the control plane started with the command line the
local stack will use (one EPP for every pool, a generated certificate, the Gateway's 443 mapped
to a free port, a plaintext port), and Envoy with the ADS bootstrap. Checks both listeners, the
status endpoint, the printed status, and a clean SIGTERM.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from epp.api.load import load_paths
from epp.local.pods import plan_pods
from epp.local.processes import ChildProcess, wait_until
from epp.sim.cluster import SimCluster
from tests.integration.test_controlplane_harness import CHAT, HOST, start_envoy
from tests.ports import free_ports

pytestmark = pytest.mark.e2e

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed"


async def _ok(url: str) -> bool:
    async with httpx.AsyncClient(timeout=1.0) as client:
        return (await client.get(url)).status_code == 200


async def test_controlplane_process_serves_the_seed(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    shutil.copytree(SEED, manifests)
    specs, pods = plan_pods(load_paths([manifests]), first_pod_ip=190)
    (manifests / "pods.yaml").write_text(yaml.safe_dump_all(pods))
    epp_port, epp_health, epp_metrics, xds, status, https, http = free_ports(7)
    argv_epp = [sys.executable, "-m", "epp", "serve", "--grpc-port", str(epp_port)]
    argv_epp += ["--health-port", str(epp_health), "--metrics-port", str(epp_metrics)]
    argv_epp += ["--manifests", str(manifests)]
    argv_cp = [sys.executable, "-m", "epp.controlplane.main", "--manifests", str(manifests)]
    argv_cp += ["--xds-port", str(xds), "--status-port", str(status), "--single-epp"]
    argv_cp += ["--epp-address", f"127.0.0.1:{epp_port}", "--listen-host", "127.0.0.1"]
    argv_cp += ["--port-map", f"443={https}", "--plain-http-port", str(http), "--plain-any-host"]
    argv_cp += ["--cert-dir", str(tmp_path / "certs"), "--interval", "0.2"]
    epp = ChildProcess("epp", argv_epp, tmp_path / "epp.log")
    plane = ChildProcess("controlplane", argv_cp, tmp_path / "controlplane.log")
    envoy: ChildProcess | None = None
    async with SimCluster(specs):
        try:
            await epp.start()
            await plane.start()
            await wait_until(lambda: _ok(f"http://127.0.0.1:{epp_metrics}/healthz"), "EPP", 30, epp)
            status_url = f"http://127.0.0.1:{status}/status"
            await wait_until(lambda: _ok(status_url), "the control plane", 30, plane)
            envoy, _admin = await start_envoy(tmp_path, xds)

            async def programmed() -> bool:
                async with httpx.AsyncClient(timeout=1.0) as client:
                    body = (await client.get(status_url)).json()
                conditions = body["gateways"][0]["conditions"]
                return any(c["type"] == "Programmed" and c["status"] == "True" for c in conditions)

            await wait_until(programmed, "the Gateway to be programmed", 30, envoy)
            tls = ssl.create_default_context(cafile=tmp_path / "certs" / "ca.crt")
            async with httpx.AsyncClient(verify=tls, timeout=20.0) as client:
                headers = {"host": HOST, "x-model-name": "llama2-7b-chat"}
                plain = await client.post(  # no Host header needed on the local plain port
                    f"http://127.0.0.1:{http}/v1/chat/completions", json=CHAT
                )
                secure = await client.post(
                    f"https://127.0.0.1:{https}/v1/chat/completions", json=CHAT, headers=headers
                )
            assert plain.status_code == 200, plain.text
            assert secure.status_code == 200, secure.text
            assert secure.headers["x-inference-pod"].startswith("llama2-gpu-pool")
            await asyncio.sleep(1.2)  # the status printer's period
            printed = plane.log_tail(40)
            assert "Programmed=True" in printed and "ResolvedRefs=True" in printed
        finally:
            if envoy is not None:
                await envoy.stop()
            await plane.stop()
            await epp.stop()
    assert plane.proc is not None and plane.proc.returncode == 0, plane.log_tail()
