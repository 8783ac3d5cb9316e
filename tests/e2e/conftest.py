from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio

from epp.local.stack import SEED_EXAMPLE, LocalStack, StackConfig
from tests.ports import free_ports


def stack_config(
    tmp: Path, manifests: tuple[Path, ...] = (SEED_EXAMPLE,), **kw: object
) -> StackConfig:
    listener, admin, grpc, health, metrics, xds, status, https = free_ports(8)
    kw.setdefault("control_plane", False)  # most tests drive the static bootstrap directly
    return StackConfig(
        manifests=manifests,
        listener_port=listener,
        admin_port=admin,
        epp_port=grpc,
        health_port=health,
        metrics_port=metrics,
        xds_port=xds,
        status_port=status,
        https_port=https,
        first_pod_ip=kw.pop("first_pod_ip", 2),  # type: ignore[arg-type]
        run_dir=tmp,
        **kw,  # type: ignore[arg-type]
    )


async def until_the_epp_sees(stack: LocalStack, waiting: int, timeout: float = 5.0) -> None:
    """Wait until the EPP's last figures of every endpoint show `waiting` queued requests (set
    on the simulator with `set_fake_metrics`): an idle pod the EPP sends nothing to is fetched
    only every `--scrape-quiet-interval` (0.5 s), so a fixed sleep would race it."""
    url = f"http://127.0.0.1:{stack.config.metrics_port}/debug/endpoints"
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            rows = (await client.get(url)).raise_for_status().json()["endpoints"]
            if rows and all(row["waiting"] == waiting for row in rows):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the EPP never saw waiting={waiting}: {rows}")
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def seed_stack(tmp_path_factory: object) -> AsyncIterator[LocalStack]:
    tmp = tmp_path_factory.mktemp("seed-stack")  # type: ignore[attr-defined]
    async with LocalStack(stack_config(tmp)) as stack:
        yield stack
