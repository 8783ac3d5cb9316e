"""The Kubernetes path of a rollout: two `epp operator` processes against the API emulator, the
Lease holder alone moving the InferenceModel's rollout (weights + status through the status
subresource, beside the conditions the same operator writes), the other taking over where it
left off when the holder hands the Lease back; `epp rollout status|abort` over the same API.

The per-version counts come from a real EPP metrics registry served over HTTP, as an EPP
replica's /metrics page, fed by the test with finished requests of both versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from epp.api.parse import parse_documents
from epp.kube.client import SEED_MODELS, SEED_POOLS, ClientConfig, connect
from epp.kube.source import KubeView, label_of
from epp.kube.status import StatusWriter
from epp.local.processes import ChildProcess
from epp.observability import EppMetrics
from tests.kube.apiserver import ApiServer
from tests.kube.objects import seed_model, seed_pool, until

pytestmark = pytest.mark.e2e

MODEL = "llama2-7b-chat"
MODELS = ("gateway.networking.x-k8s.io", "v1alpha1", "inferencemodels")
LEASES = ("coordination.k8s.io", "v1", "leases")
POOLS = ("gateway.networking.x-k8s.io", "v1alpha1", "inferencepools")
POLICY: dict[str, Any] = {
    "steps": [20, 60, 100],
    "interval": "500ms",
    "stepDuration": "1.5s",
    "minRequests": 10,
    "analysis": {"minSamples": 5, "maxTPOTRatio": 1.5},
}


def model_with_rollout() -> dict[str, Any]:
    doc = seed_model("chat")
    doc["spec"]["routing"] = {
        "trafficSplit": [
            {"weight": 100, "version": "stable", "poolRef": {"name": "llama2-pool"}},
            {
                "weight": 0,
                "version": "canary",
                "poolRef": {"name": "canary-pool"},
                "rollout": POLICY,
            },
        ]
    }
    return doc


class MetricsPage:
    """An EPP's per-version metrics on a real HTTP page, fed while the test runs."""

    def __init__(self) -> None:
        self.metrics = EppMetrics()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def page(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(self.metrics.registry))

        app = web.Application()
        app.router.add_get("/metrics", page)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/metrics"

    async def feed(self) -> None:
        m = self.metrics
        while True:
            for version, n in (("stable", 8), ("canary", 4)):
                for _ in range(n):
                    m.version_completed.labels(MODEL, version).inc()
                    m.version_ttft.labels(MODEL, version).observe(0.05)
                    m.version_tpot.labels(MODEL, version).observe(0.01)
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[ApiServer]:
    srv = ApiServer()
    await srv.start()
    yield srv
    await srv.stop()


def operator(name: str, server: ApiServer, metrics: str, run_dir: Path) -> ChildProcess:
    argv = [
        sys.executable, "-m", "epp", "operator", "--kube-api", server.url,
        "--rollout-metrics", metrics, "--no-reconcile-deployments", "--no-nodes",
        "--lease-name", "rollout-test",
    ]  # fmt: skip
    return ChildProcess(name, argv, run_dir / f"{name}.log", env={"POD_NAME": name})


async def epp_rollout(action: str, name: str, server: ApiServer) -> tuple[int, str]:
    """`epp rollout ACTION NAME` as a person runs it (the emulator answers on this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "epp", "rollout", action, name, "--kube-api", server.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return await proc.wait(), out.decode()


def rollout_of(server: ApiServer) -> dict[str, Any]:
    obj = server.get(MODELS, "default", "chat")
    return ((obj or {}).get("status") or {}).get("rollout") or {}


def holder(server: ApiServer) -> str:
    lease = server.get(
        server.kind("coordination.k8s.io", "v1", "leases"), "default", "rollout-test"
    )
    return str(((lease or {}).get("spec") or {}).get("holderIdentity", ""))


async def test_only_the_lease_holder_moves_the_rollout_and_a_successor_finishes_it(
    server: ApiServer, tmp_path: Path
) -> None:
    server.put(seed_pool())
    server.put(seed_pool("canary-pool", replicas=1))
    server.put(model_with_rollout())
    page = MetricsPage()
    await page.start()
    feeding = asyncio.create_task(page.feed())
    a = operator("op-a", server, page.url, tmp_path)
    b = operator("op-b", server, page.url, tmp_path)
    writers: set[str] = set()  # who wrote the status, watched while op-a holds the Lease

    async def watch_writers() -> None:
        while True:
            writers.add(str(rollout_of(server).get("writer", "")))
            await asyncio.sleep(0.01)

    watching = asyncio.create_task(watch_writers())
    try:
        await a.start()
        await until(lambda: holder(server).startswith("op-a"), timeout=20, what="op-a leads")
        await b.start()
        await until(lambda: rollout_of(server).get("step") == 1, timeout=20, what="step 2")
        first = rollout_of(server)
        assert first["phase"] == "Progressing" and first["weights"] == {"stable": 40, "canary": 60}
        assert first["writer"] == holder(server) and first["writer"].startswith("op-a")
        assert first["steps"][0]["analysis"]["verdict"] == "Pass"
        conditions = (server.get(MODELS, "default", "chat") or {})["status"]["conditions"]
        assert {c["type"] for c in conditions} >= {"Accepted"}  # the other writer's fields stay
        watching.cancel()
        assert {w.split("_")[0] for w in writers} <= {"", "op-a"}  # op-b waited its turn
        await a.stop()  # SIGTERM: op-a hands the Lease back, op-b carries on from step 2
        await until(lambda: holder(server).startswith("op-b"), timeout=20, what="op-b leads")
        await until(
            lambda: rollout_of(server).get("phase") == "Promoted", timeout=20, what="promoted"
        )
        done = rollout_of(server)
        assert done["writer"].startswith("op-b")
        assert done["weights"] == {"stable": 0, "canary": 100}
        assert [s["weight"] for s in done["steps"]] == [20, 60]
        assert done["steps"][0]["analysis"] == first["steps"][0]["analysis"]  # carried on
        # the CLI reads the same status over the API
        code, shown = await epp_rollout("status", MODEL, server)
        assert code == 0, shown
        assert "phase: Promoted" in shown and "weights: stable 0%, canary 100%" in shown
        print(shown)
    finally:
        watching.cancel()
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        await a.stop()
        await b.stop()
        await page.stop()
        for child in (a, b):
            print(child.log_tail(10))


async def test_abort_through_the_api_stops_the_rollout(server: ApiServer, tmp_path: Path) -> None:
    server.put(seed_pool())
    server.put(seed_pool("canary-pool", replicas=1))
    doc = model_with_rollout()
    doc["spec"]["routing"]["trafficSplit"][1]["rollout"] = {**POLICY, "stepDuration": "1h"}
    server.put(doc)
    page = MetricsPage()
    await page.start()
    a = operator("op-a", server, page.url, tmp_path)
    try:
        await a.start()
        await until(lambda: rollout_of(server).get("phase") == "Progressing", timeout=20,
                    what="started")  # fmt: skip
        code, aborted = await epp_rollout("abort", "chat", server)
        assert code == 0, aborted
        assert "Aborted: aborted by hand" in aborted
        await asyncio.sleep(1.5)  # several of the operator's passes
        status = rollout_of(server)
        assert status["phase"] == "Aborted"
        assert status["weights"] == {"stable": 100, "canary": 0}
    finally:
        await a.stop()
        await page.stop()


async def test_the_status_writer_keeps_a_fresher_rollout_when_it_retries(
    server: ApiServer,
) -> None:
    """The conditions writer read the model before the rollout controller wrote a step: its
    retry after the 409 must put its conditions on the fresher object, not undo the step."""
    server.put(seed_pool())
    server.put(seed_pool("canary-pool", replicas=1))
    stale = server.put(model_with_rollout() | {"status": {"rollout": {"step": 0}}})
    pools = [p for p in (server.get(POOLS, "default", n) for n in ("llama2-pool", "canary-pool"))]
    raw = [(SEED_POOLS, p) for p in pools if p is not None] + [(SEED_MODELS, stale)]
    view = KubeView(parse_documents([(label_of(r, o), o) for r, o in raw]), tuple(raw), False)
    fresher = {**stale, "status": {"rollout": {"step": 1}}}
    server.put(fresher)  # the controller's write: a newer resourceVersion
    api = await connect(ClientConfig(host=server.url, request_timeout=5))
    try:
        assert await StatusWriter(api).write(view) >= 1
    finally:
        await api.close()
    model = server.get(MODELS, "default", "chat")
    assert model is not None
    status = model["status"]
    assert status["rollout"] == {"step": 1}
    assert {c["type"] for c in status["conditions"]} >= {"Accepted"}
