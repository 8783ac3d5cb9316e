from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

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


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def seed_stack(tmp_path_factory: object) -> AsyncIterator[LocalStack]:
    tmp = tmp_path_factory.mktemp("seed-stack")  # type: ignore[attr-defined]
    async with LocalStack(stack_config(tmp)) as stack:
        yield stack
