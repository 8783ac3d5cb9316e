"""Canary rollouts that run themselves, through the whole local stack: simulated pods, the EPP,
Envoy and `epp up`'s rollout controller, with the official OpenAI SDK streaming chat requests.

A healthy canary is promoted 10 → 25 → 50 → 100 % with a passing analysis at every step; a canary
whose pod is made 2x slower, or fails 5 % of its requests (the simulator's runtime faults, set
over its /sim/config), is rolled back before it passes 25 %, its reason in the status, and from
one analysis interval after the rollback no request reaches it. No request fails because of
the rollout: the only failures are the faults the simulator injected.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from epp.local.stack import REPO, LocalStack
from epp.rollout.command import render
from epp.rollout.files import FileStore
from epp.rollout.machine import RolloutStatus, parse_stamp
from tests.e2e.conftest import stack_config

pytestmark = pytest.mark.e2e

MODEL = "llama2-7b-chat"
INTERVAL = 2.0
POLICY: dict[str, Any] = {
    "steps": [10, 25, 50, 100],
    "interval": f"{INTERVAL:g}s",
    "stepDuration": "4s",
    "minRequests": 20,
    "windowIntervals": 3,
    "analysis": {
        "minSamples": 10,
        "maxErrorRate": 0.02,
        "maxTPOTRatio": 1.5,
        "maxTTFTRatio": 4.0,  # TTFT on a shared 2-core machine is mostly queueing noise
        # ... which can still be 5x a 15 ms stable p90; a slow canary is seconds slower
        "minTTFTIncrease": "200ms",
    },
}


def canary_manifests(folder: Path, policy: dict[str, Any]) -> Path:
    shutil.copytree(REPO / "examples" / "canary", folder)
    path = folder / "inference.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if doc["kind"] == "InferencePool" and doc["metadata"]["name"] == "llama2-gpu-pool":
            doc["spec"]["deployment"]["replicas"] = 2
        if doc["kind"] == "InferenceModel":
            stable, canary = doc["spec"]["routing"]["trafficSplit"]
            stable["weight"], canary["weight"] = 100, 0
            canary["rollout"] = policy
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return folder


@dataclass
class Load:
    """Streaming chat requests from a few concurrent users until told to stop."""

    url: str
    served: list[tuple[float, str]] = field(default_factory=list)  # (start, version)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def user(self, client: openai.AsyncOpenAI) -> None:
        while not self.stop.is_set():
            started = time.time()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Tell me about canaries."}],
                    max_tokens=16,
                    stream=True,
                )
                version = raw.headers.get("x-inference-version", "?")
                stream = raw.parse()
                async for _ in stream:
                    pass
                self.served.append((started, version))
            except openai.APIError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    async def run(self, users: int) -> None:
        async with openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key="none", max_retries=0, timeout=30
        ) as client:
            await asyncio.gather(*(self.user(client) for _ in range(users)))


async def until_finished(stack: LocalStack, limit: float) -> RolloutStatus:
    assert stack.rollouts is not None
    store = FileStore(stack.rollouts.served)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        (tracked,) = await store.rollouts()
        status = RolloutStatus.from_dict(tracked.status)
        if status is not None and status.finished:
            print(render(tracked))
            return status
        await asyncio.sleep(0.25)
    (tracked,) = await store.rollouts()
    raise AssertionError(f"the rollout did not finish in {limit:.0f}s:\n{render(tracked)}")


async def roll(
    tmp_path: Path, fault: dict[str, Any] | None, first_ip: int, policy: dict[str, Any]
) -> tuple[RolloutStatus, Load, LocalStack]:
    folder = canary_manifests(tmp_path / "manifests", policy)
    config = stack_config(tmp_path / "run", (folder,), first_pod_ip=first_ip)
    async with LocalStack(config) as stack:
        assert stack.rollouts is not None
        if fault is not None:
            (canary,) = [p for p in stack.pods if p.name.startswith("llama2-gpu-pool-canary")]
            async with httpx.AsyncClient() as client:
                r = await client.post(f"http://{canary.host}:{canary.port}/sim/config", json=fault)
                assert r.status_code == 200, r.text
        load = Load(stack.url)
        users = asyncio.create_task(load.run(users=8))
        try:
            status = await until_finished(stack, 90)
            if status.phase != "Promoted":
                await asyncio.sleep(INTERVAL * 1.5)  # traffic after the rollback, for the checks
        finally:
            load.stop.set()
            await users
        return status, load, stack


async def test_a_healthy_canary_is_promoted_through_every_step(tmp_path: Path) -> None:
    status, load, _ = await roll(tmp_path, None, 150, POLICY)
    assert status.phase == "Promoted", status.reason
    assert status.weights == {"stable": 0, "canary": 100}
    assert [h["weight"] for h in status.history] == [10, 25, 50]
    for step in status.history:  # every step shows the analysis that let it pass
        assert step["analysis"]["verdict"] == "Pass", step
        assert step["analysis"]["canary"]["requests"] >= 10
        assert step["analysis"]["canary"]["tpotSeconds"] > 0
    canary = sum(v == "canary" for _, v in load.served)
    print(f"requests {len(load.served)}, canary {canary}, failed {len(load.failures)}")
    assert canary >= 3 * 20  # minRequests per step
    assert load.failures == []


# 5 % of failures shows in enough requests only: 60 canary requests a step make the chance that
# none fails before 25 % is passed 0.95^120 = 0.2 %, and 1 % lets a single failure in a window
# of up to 100 requests count
STRICT = {
    **POLICY,
    "minRequests": 60,
    "analysis": {**POLICY["analysis"], "maxErrorRate": 0.01},
}


@pytest.mark.parametrize(
    ("fault", "policy", "reason"),
    [
        ({"speed": 0.5}, POLICY, "TPOT"),
        ({"faults": {"error_rate": 0.05}}, STRICT, "error rate"),
    ],
    ids=["2x-slower", "5pct-errors"],
)
async def test_a_bad_canary_is_rolled_back_before_it_passes_25_percent(
    tmp_path: Path, fault: dict[str, Any], policy: dict[str, Any], reason: str
) -> None:
    first_ip = 160 if "speed" in fault else 170
    status, load, _ = await roll(tmp_path, fault, first_ip, policy)
    assert status.phase == "RolledBack", status.reason
    assert reason in status.reason
    assert max(h["weight"] for h in status.history) <= 25
    assert status.weights == {"stable": 100, "canary": 0}
    assert status.history[-1]["analysis"]["verdict"] == "Fail"
    rolled_back = parse_stamp(status.as_dict()["updatedAt"])
    assert rolled_back is not None
    late = [t - rolled_back for t, v in load.served if v == "canary" and t > rolled_back]
    after = [v for t, v in load.served if t > rolled_back + INTERVAL]
    print(
        f"requests {len(load.served)}, failed {len(load.failures)}, canary requests started "
        f"after the rollback {len(late)} (last {max(late, default=0):.2f}s after it), "
        f"stable requests after one interval {len(after)}"
    )
    assert all(d <= INTERVAL for d in late)  # all traffic on stable within one interval
    assert after and set(after) == {"stable"}
    # a failure is an injected fault of the canary, never the rollout's doing
    assert all("injected fault" in f for f in load.failures), load.failures
    if "speed" in fault:
        assert load.failures == []
