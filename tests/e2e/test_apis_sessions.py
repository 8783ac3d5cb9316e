"""A 20-turn agent conversation through the real local stack, with the `anthropic` SDK: the
session token each answer carries keeps the growing conversation (a 2,100-token system prompt,
about 50 tokens more each turn, under 4,000 after 35 turns) on one pod (its context read
from the prefix cache turn after turn), until that pod saturates: then it moves, the answer says
so, and the conversation stays on its new pod. An agent's own session header does the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx
import pytest
import pytest_asyncio

from epp.local.stack import LocalStack
from tests.e2e.conftest import stack_config

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

MODEL = "llama2-7b-chat"
TOOLS = "".join(
    f"Tool {i}: reads, edits and runs files of the project, carefully. " for i in range(130)
)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    tmp: Path = tmp_path_factory.mktemp("sessions-stack")
    config = stack_config(tmp, first_pod_ip=160, epp_args=("--session-header", "x-session-id"))
    async with LocalStack(config) as running:
        yield running


class Agent:
    """One conversation: every turn sends the whole history and the session it was given."""

    def __init__(self, client: anthropic.AsyncAnthropic, headers: dict[str, str]) -> None:
        self.client = client
        self.headers = dict(headers)
        self.turns: list[anthropic.types.MessageParam] = []
        self.pods: list[str] = []
        self.moved: list[str | None] = []
        self.cached = self.prompt = 0
        self.use_token = "x-session-id" not in headers

    async def turn(self, i: int) -> str:
        self.turns.append({"role": "user", "content": f"Step {i}: look at file_{i}.py. " * 4})
        raw = await self.client.messages.with_raw_response.create(
            model=MODEL, system=TOOLS, messages=self.turns, max_tokens=16,
            extra_headers=self.headers,
        )  # fmt: skip
        answer = await raw.parse()
        self.turns.append({"role": "assistant", "content": answer.content[0].text})  # type: ignore[union-attr]
        cached = answer.usage.cache_read_input_tokens or 0
        self.cached += cached
        self.prompt += answer.usage.input_tokens + cached
        if self.use_token:
            self.headers["x-session-token"] = raw.headers["x-session-token"]
        self.moved.append(raw.headers.get("x-session-moved"))
        self.pods.append(raw.headers["x-inference-pod-address"])
        return self.pods[-1]


@pytest_asyncio.fixture(loop_scope="module")
async def client(stack: LocalStack) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=stack.url, api_key="-", default_headers={"x-model-name": MODEL}, max_retries=0
    ) as c:
        yield c


async def fake_queue(address: str, waiting: int | None) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        reply = await http.post(
            f"http://{address}/sim/config", json={"fake_metrics": {"waiting": waiting}}
        )
        assert reply.status_code == 200, reply.text


async def test_a_token_keeps_twenty_turns_on_one_pod_with_their_context_cached(
    client: anthropic.AsyncAnthropic,
) -> None:
    agent = Agent(client, {})
    for i in range(20):
        await agent.turn(i)
    assert len(set(agent.pods)) == 1 and agent.moved == [None] * 20
    hits = agent.cached / agent.prompt
    print(f"prefix-cache hits over 20 turns: {hits:.3f} ({agent.cached}/{agent.prompt} tokens)")
    assert hits >= 0.9
    # the pod saturates: the session moves, says so, and stays on its new pod
    home = agent.pods[-1]
    await fake_queue(home, 50)
    try:
        for i in range(20, 30):  # the EPP sees the queue at its next scrape
            if await agent.turn(i) != home:
                break
            await asyncio.sleep(0.3)
        assert agent.pods[-1] != home and agent.moved[-1] == "saturated"
        new_home = agent.pods[-1]
        await fake_queue(home, None)  # room again on the old pod: the session stays moved
        for i in range(30, 35):
            assert await agent.turn(i) == new_home
        assert agent.moved[-5:] == [None] * 5
    finally:
        await fake_queue(home, None)


async def sim_faults(address: str, metrics: str | None) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        reply = await http.post(
            f"http://{address}/sim/config", json={"faults": {"metrics": metrics}}
        )
        assert reply.status_code == 200, reply.text


async def test_a_session_whose_pod_is_taken_out_moves_and_says_so(
    client: anthropic.AsyncAnthropic,
) -> None:
    """The pod stops answering its metrics sensibly: the EPP marks it unhealthy and stops
    sending it requests (as for a drained pod); the session moves, says why, and stays moved."""
    agent = Agent(client, {})
    for i in range(3):
        await agent.turn(i)
    home = agent.pods[-1]
    assert set(agent.pods) == {home}
    await sim_faults(home, "garbage")
    try:
        for i in range(3, 13):  # the EPP sees it at its next scrapes
            if await agent.turn(i) != home:
                break
            await asyncio.sleep(0.3)
        assert agent.pods[-1] != home and agent.moved[-1] == "unavailable"
        new_home = agent.pods[-1]
        await sim_faults(home, None)
        for i in range(13, 16):
            assert await agent.turn(i) == new_home
    finally:
        await sim_faults(home, None)


async def test_an_agents_own_session_header_keeps_it_on_one_pod(
    client: anthropic.AsyncAnthropic,
) -> None:
    agents = [Agent(client, {"x-session-id": f"agent-{n}"}) for n in range(3)]
    for i in range(8):
        for agent in agents:
            await agent.turn(i)
    for agent in agents:
        assert len(set(agent.pods)) == 1, agent.pods
        assert agent.cached / agent.prompt >= 0.8
