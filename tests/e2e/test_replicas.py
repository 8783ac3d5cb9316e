"""Three EPP replicas behind one Envoy: streams spread over all of them, they agree on in-flight
counts, a SIGKILLed replica costs at most its own streams, a rolling restart costs nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from epp.local.stack import LocalStack
from tests.e2e.conftest import stack_config
from tests.ports import free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

BODY = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
CLIENTS = 8
MAX_LOAD_SECONDS = 90.0


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float
    ended: float
    status: int  # 0: the connection failed


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    tmp: Path = tmp_path_factory.mktemp("replicas")
    (peer_port,) = free_ports(1)
    config = stack_config(tmp, epp_replicas=3, peer_port=peer_port, first_pod_ip=70)
    async with LocalStack(config) as running:
        yield running


async def load(stack: LocalStack, done: asyncio.Event) -> list[Outcome]:
    """CLIENTS closed-loop clients until `done` (bounded by MAX_LOAD_SECONDS)."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + MAX_LOAD_SECONDS

    async def client(http: httpx.AsyncClient) -> None:
        while not done.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                status = (await http.post("/v1/chat/completions", json=BODY)).status_code
            except httpx.HTTPError:
                status = 0
            outcomes.append(Outcome(started, time.monotonic(), status))

    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
    return outcomes


async def requests_seen(stack: LocalStack) -> list[float]:
    assert stack.replicas is not None
    seen = []
    async with httpx.AsyncClient(timeout=5) as http:
        for i in range(stack.replicas.count):
            url = stack.replicas.ready_url(i).replace("/healthz", "/metrics")
            text = (await http.get(url)).text
            seen.append(
                sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("inference_objective_request_total{")
                )
            )
    return seen


async def test_streams_spread_over_every_replica_and_replicas_share_in_flight(
    stack: LocalStack,
) -> None:
    before = await requests_seen(stack)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        answers = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=BODY) for _ in range(30))
        )
    assert [r.status_code for r in answers] == [200] * 30
    after = await requests_seen(stack)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    assert stack.replicas is not None
    async with httpx.AsyncClient(timeout=5) as http:
        url = stack.replicas.ready_url(0).replace("/healthz", "/debug/peers")
        peers = (await http.get(url)).json()
    assert peers["sharing"] and set(peers["peers"]) == {"epp-1", "epp-2"}
    assert peers["received"] > 0 and peers["sent"] > 0


async def test_a_killed_replica_loses_at_most_its_own_streams(stack: LocalStack) -> None:
    assert stack.replicas is not None
    done = asyncio.Event()
    running = asyncio.create_task(load(stack, done))
    await asyncio.sleep(2.0)
    killed_at = time.monotonic()
    await stack.replicas.kill(1)
    await asyncio.sleep(5.0)
    done.set()
    outcomes = await running
    failed = [o for o in outcomes if o.status != 200]
    late = [o for o in failed if o.started >= killed_at + 2.0]
    print(f"\nSIGKILL of 1 of 3 replicas: {len(outcomes)} requests, {len(failed)} failed")
    assert not late, late
    # lost: only the streams the killed replica carried, about a third of the CLIENTS in flight
    assert len(failed) <= CLIENTS // 2, failed
    assert sum(o.started >= killed_at + 2.0 for o in outcomes) > 10  # the load went on
    await stack.replicas.start(1)


async def test_a_rolling_restart_of_every_replica_fails_no_request(stack: LocalStack) -> None:
    assert stack.replicas is not None
    done = asyncio.Event()
    running = asyncio.create_task(load(stack, done))
    await asyncio.sleep(1.0)
    for i in range(stack.replicas.count):
        await stack.replicas.restart(i)
    await asyncio.sleep(1.0)
    done.set()
    outcomes = await running
    failed = [o for o in outcomes if o.status != 200]
    print(f"\nrolling restart of 3 replicas: {len(outcomes)} requests, {len(failed)} failed")
    assert not failed, failed
    assert len(outcomes) > 50


async def test_the_control_plane_spreads_streams_over_replicas_too(tmp_path: Path) -> None:
    (peer_port,) = free_ports(1)
    config = stack_config(
        tmp_path, epp_replicas=2, peer_port=peer_port, first_pod_ip=80, control_plane=True
    )
    async with LocalStack(config) as running:
        async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
            answers = await asyncio.gather(
                *(
                    http.post(
                        "/v1/chat/completions",
                        json=BODY,
                        headers={"x-model-name": "llama2-7b-chat"},
                    )
                    for _ in range(20)
                )
            )
        assert [r.status_code for r in answers] == [200] * 20
        assert all(seen > 0 for seen in await requests_seen(running))
