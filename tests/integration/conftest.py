"""Kubernetes integration fixtures: the API emulator and a real client talking to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from epp.kube.client import ClientConfig, KubeApi, connect
from tests.kube.apiserver import ApiServer


@pytest.fixture
async def server() -> AsyncIterator[ApiServer]:
    srv = ApiServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def api(server: ApiServer) -> AsyncIterator[KubeApi]:
    client = await connect(ClientConfig(host=server.url, request_timeout=5))
    yield client
    await client.close()
