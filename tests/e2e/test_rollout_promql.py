"""A rollout policy's own PromQL check, answered by a real Prometheus (Debian's `prometheus`)
scraping a page where the canary's memory use climbs: the controller rolls the canary back with
the query's figure in the reason; without an answer the analysis waits instead of passing."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from epp.api.rollout import MetricQuery
from epp.rollout.controller import RolloutController
from epp.rollout.files import FileStore
from epp.rollout.machine import RolloutStatus
from epp.rollout.queries import PrometheusQueries, first_value
from tests.integration.test_gpu_prometheus import run_prometheus
from tests.unit.test_rollout_controller import Traffic
from tests.unit.test_rollout_policy import SEED

pytestmark = pytest.mark.e2e

QUERY = 'max(canary_memory_ratio{model="$model", version="$version"})'


class Page:
    """Memory use per version, as an exporter beside the model servers would show it."""

    def __init__(self) -> None:
        self.ratio = {"stable": 0.5, "canary": 0.5}
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        lines = ["# TYPE canary_memory_ratio gauge"]
        lines += [
            f'canary_memory_ratio{{model="chat",version="{v}"}} {r}' for v, r in self.ratio.items()
        ]
        return web.Response(text="\n".join(lines) + "\n")


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    exporter = Page()
    app = web.Application()
    app.router.add_get("/metrics", exporter.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    exporter.port = runner.addresses[0][1]
    yield exporter
    await runner.cleanup()


def test_first_value_reads_scalars_and_vectors() -> None:
    assert first_value({"data": {"resultType": "scalar", "result": [1, "0.5"]}}) == 0.5
    vector = {"data": {"result": [{"metric": {}, "value": [1, "2"]}]}}
    assert first_value(vector) == 2.0
    assert first_value({"data": {"result": []}}) is None
    assert first_value({"data": {"result": [{"value": [1, "NaN"]}]}}) is None


async def test_a_query_over_its_max_rolls_the_canary_back(page: Page, tmp_path: Path) -> None:
    doc = copy.deepcopy(SEED)
    doc["spec"]["routing"]["trafficSplit"][1]["rollout"] = {
        "steps": [10, 100],
        "interval": "1s",
        "stepDuration": "1h",
        "analysis": {"minSamples": 5, "queries": [{"name": "memory", "query": QUERY, "max": 0.9}]},
    }
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(doc))
    traffic = Traffic()
    with run_prometheus(tmp_path, f"127.0.0.1:{page.port}") as (_, url):
        queries = PrometheusQueries(url)
        check = [MetricQuery("memory", QUERY, max=0.9)]
        try:
            for _ in range(150):  # Prometheus starts, then scrapes every second
                if (await queries.evaluate(check, "chat", "canary"))["memory"] is not None:
                    break
                await asyncio.sleep(0.1)
            assert await queries.evaluate(check, "chat", "canary") == {"memory": 0.5}
            controller = RolloutController(FileStore(path), traffic, queries=queries)
            page.ratio["canary"] = 0.97  # the canary's memory climbs
            status = None
            for _ in range(100):
                traffic.serve("stable", 10, 0.05, 0.01)
                traffic.serve("canary", 10, 0.05, 0.01)
                await controller.once()
                (tracked,) = await FileStore(path).rollouts()
                status = RolloutStatus.from_dict(tracked.status)
                if status is not None and status.finished:
                    break
                await asyncio.sleep(0.2)
        finally:
            await queries.aclose()
    assert status is not None and status.phase == "RolledBack"
    assert "query memory = 0.97 over 0.9" in status.reason
    assert status.weights == {"stable": 100, "canary": 0}
    print(status.reason)


async def test_an_unanswered_query_holds_the_step(tmp_path: Path) -> None:
    doc = copy.deepcopy(SEED)
    doc["spec"]["routing"]["trafficSplit"][1]["rollout"] = {
        "steps": [10, 100],
        "interval": "100ms",
        "stepDuration": 0,
        "minRequests": 0,
        "analysis": {"minSamples": 1, "queries": [{"name": "memory", "query": QUERY, "max": 1}]},
    }
    path = tmp_path / "served.yaml"
    path.write_text(yaml.safe_dump(doc))
    traffic = Traffic()
    queries = PrometheusQueries("http://127.0.0.1:1")  # nothing listens there
    try:
        controller = RolloutController(FileStore(path), traffic, queries=queries)
        for _ in range(5):
            traffic.serve("stable", 5, 0.05, 0.01)
            traffic.serve("canary", 5, 0.05, 0.01)
            await controller.once()
            await asyncio.sleep(0.12)
    finally:
        await queries.aclose()
    (tracked,) = await FileStore(path).rollouts()
    status = RolloutStatus.from_dict(tracked.status)
    assert status is not None and status.phase == "Progressing"  # not promoted blind
    analysis = status.history[-1]["analysis"]
    assert (
        analysis["verdict"] == "Inconclusive"
        and "no value for query memory" in (analysis["reason"])
    )
