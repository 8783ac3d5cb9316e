"""A real EppServer whose resource feed dies: restarted with backoff, not ready while down."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import epp.kube.serving
import epp.server
from epp.api.model import ResourceSet
from epp.kube.client import ClientConfig
from epp.kube.runtime import KubeModeConfig
from epp.kube.source import SourceConfig
from epp.kube.watch import WatchSettings
from epp.server import KUBE_RESOURCES, RESOURCES, EppServer, ServeConfig
from epp.settings import ServerSettings, Settings
from epp.sources.files import FolderSource
from epp.tasks import Backoff
from tests.kube.apiserver import ApiServer
from tests.kube.objects import pod, seed_model, seed_pool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RESTART = Backoff(initial=0.5, maximum=1.0)


class CrashingSource(FolderSource):
    """A folder source whose watch raises once, on the first change after `crash_next` is set,
    as a real bug or I/O error inside the loop would (the set it read is then never applied)."""

    def __init__(self, paths: Sequence[str | Path], interval: float = 0.5) -> None:
        super().__init__(paths, interval)
        self.crash_next = False
        self.watches = 0

    async def watch(self) -> AsyncIterator[ResourceSet]:
        self.watches += 1
        async for resources in super().watch():
            if self.crash_next:
                self.crash_next = False
                raise OSError("injected: the manifests volume hiccuped")
            yield resources


async def readiness(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="readiness")
        return int((await stub.Check(request, timeout=2)).status)


async def until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not cond():
        assert time.monotonic() - started < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
    return time.monotonic()


async def until_ready(server: EppServer, want: int, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while await readiness(server.health_port) != want:
        assert time.monotonic() - started < timeout, f"readiness never became {want}"
        await asyncio.sleep(0.01)
    return time.monotonic()


def pools(server: EppServer) -> set[str]:
    return {p.name for p in server.store.pools()}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "manifests"
    target.mkdir()
    shutil.copy(ROOT / "examples" / "seed" / "inference.yaml", target / "seed.yaml")
    return target


@pytest.fixture
def source(folder: Path, monkeypatch: pytest.MonkeyPatch) -> CrashingSource:
    crashing = CrashingSource([folder], 0.05)
    monkeypatch.setattr(epp.server, "FolderSource", lambda paths, interval: crashing)
    return crashing


@pytest.fixture
async def picker(folder: Path, source: CrashingSource) -> AsyncIterator[EppServer]:
    settings = Settings(server=ServerSettings("127.0.0.1", 0, 0, 0, drain_seconds=0))
    running = EppServer(
        ServeConfig(settings, (str(folder),), reload_interval=0.05, restart=RESTART)
    )
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_a_crashed_feed_is_restarted_and_not_ready_while_down(
    picker: EppServer, source: CrashingSource, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await until_ready(picker, SERVING)
    assert pools(picker) == {"llama2-gpu-pool"}
    source.crash_next = True
    shutil.copy(ROOT / "examples" / "upstream" / "v1.yaml", folder / "upstream.yaml")
    down_at = await until_ready(picker, NOT_SERVING)
    assert RESOURCES in picker.tasks.down
    assert pools(picker) == {"llama2-gpu-pool"}  # the change that crashed the feed is not in
    (crash,) = [r for r in caplog.records if r.name == "epp.tasks" and r.exc_info]
    assert "background task resources crashed; restarting in 0.50s" in crash.getMessage()
    assert crash.exc_info is not None and isinstance(crash.exc_info[1], OSError)

    up_at = await until_ready(picker, SERVING)
    print(f"resource feed down for {up_at - down_at:.2f}s (backoff {RESTART.initial}s)")
    assert up_at - down_at >= RESTART.initial - 0.1
    assert picker.tasks.restarts(RESOURCES) == 1 and source.watches == 2
    assert picker.tasks.down == frozenset()
    # the restarted feed caught up with the change it lost, and follows later ones
    assert "qwen-pool" in pools(picker)
    (folder / "upstream.yaml").unlink()
    await until(lambda: pools(picker) == {"llama2-gpu-pool"}, "a later change applied")
    assert await readiness(picker.health_port) == SERVING

    tasks = [picker.tasks.task(name) for name in (RESOURCES, "scraper")]
    await picker.stop()
    assert all(task is not None and task.done() for task in tasks)
    assert not picker.health.ready


async def test_a_feed_killed_from_outside_leaves_the_server_not_ready(
    picker: EppServer, source: CrashingSource, folder: Path
) -> None:
    await until_ready(picker, SERVING)
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == RESOURCES]
    task.cancel()
    await until_ready(picker, NOT_SERVING)
    assert picker.tasks.down == {RESOURCES}
    # nothing follows the folder any more: readiness stays NOT_SERVING rather than serving a
    # frozen view
    shutil.copy(ROOT / "examples" / "upstream" / "v1.yaml", folder / "upstream.yaml")
    await asyncio.sleep(0.5)
    assert pools(picker) == {"llama2-gpu-pool"} and source.watches == 1
    assert await readiness(picker.health_port) == NOT_SERVING


async def test_stopping_during_a_restart_backoff_ends_every_task(
    picker: EppServer, source: CrashingSource, folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="epp.tasks")
    await until_ready(picker, SERVING)
    source.crash_next = True
    (folder / "extra.yaml").write_text((ROOT / "examples" / "upstream" / "v1.yaml").read_text())
    await until(lambda: RESOURCES in picker.tasks.down, "the feed to crash")
    task = picker.tasks.task(RESOURCES)
    started = time.monotonic()
    await picker.stop()
    assert time.monotonic() - started < RESTART.initial  # the backoff sleep was cancelled
    assert task is not None and task.cancelled()
    assert source.watches == 1 and picker.tasks.restarts(RESOURCES) == 0
    assert "did not stop" not in caplog.text


async def test_a_crashed_kubernetes_feed_is_restarted_from_the_current_cluster_state(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's `apply` raises once on a new set (a datastore bug): the feed task dies,
    readiness drops, and the restarted feed re-applies the cluster's current state."""
    real_feed = epp.kube.serving.feed
    crash_next = False

    async def feed(source: Any, apply: Callable[[ResourceSet], None], set_ready: Any) -> None:
        def flaky(resources: ResourceSet) -> None:
            nonlocal crash_next
            if crash_next:
                crash_next = False
                raise ValueError("injected: a set the datastore chokes on")
            apply(resources)

        await real_feed(source, flaky, set_ready)

    monkeypatch.setattr(epp.kube.serving, "feed", feed)
    server.put(seed_pool())
    server.put(seed_model("llama2-7b-chat"))
    server.put(pod("vllm-0", "10.0.0.1"))
    kube = KubeModeConfig(
        client=ClientConfig(host=server.url, request_timeout=5),
        source=SourceConfig(watch=WatchSettings(backoff_initial=0.05, backoff_max=0.2)),
        leader_elect=False,
        write_status=False,
        reconcile_deployments=False,
    )
    settings = Settings(server=ServerSettings("127.0.0.1", 0, 0, 0, drain_seconds=0))
    picker = EppServer(ServeConfig(settings, kube=kube, restart=RESTART))
    await picker.start()
    try:
        await until_ready(picker, SERVING)
        assert [e.address for e in picker.store.endpoints()] == ["10.0.0.1:8000"]
        crash_next = True
        server.put(pod("vllm-1", "10.0.0.2"))
        down_at = await until_ready(picker, NOT_SERVING)
        assert picker.tasks.down == {KUBE_RESOURCES}
        assert len(picker.store.endpoints()) == 1
        up_at = await until_ready(picker, SERVING)
        print(f"kubernetes feed down for {up_at - down_at:.2f}s")
        assert up_at - down_at >= RESTART.initial - 0.1
        assert picker.tasks.restarts(KUBE_RESOURCES) == 1
        assert len(picker.store.endpoints()) == 2  # the lost change, re-read on restart
        server.put(pod("vllm-2", "10.0.0.3"))
        await until(lambda: len(picker.store.endpoints()) == 3, "a later change applied")
    finally:
        await picker.stop()
