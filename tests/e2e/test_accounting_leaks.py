"""2,000 requests with client disconnects, upstream errors, dying streams and timeouts: every
in-flight counter of the EPP ends at zero (the lease is released exactly once per request).
Half ask for the served model name, so their response bodies never reach the EPP and only the
end of the ext_proc stream ends them; half ask for the client name, whose bodies are read.
Once with each gRPC server of the EPP (grpc.aio and the lean one)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

import httpx
import pytest

from epp.local.stack import LocalStack
from tests.e2e.conftest import stack_config

pytestmark = pytest.mark.e2e

TOTAL = 2000
WORKERS = 32


async def debug_endpoints(stack: LocalStack) -> list[dict[str, object]]:
    async with httpx.AsyncClient(timeout=5) as client:
        url = f"http://127.0.0.1:{stack.config.metrics_port}/debug/endpoints"
        rows: list[dict[str, object]] = (await client.get(url)).json()["endpoints"]
        return rows


async def running_gauge(stack: LocalStack) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{stack.config.metrics_port}/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("inference_objective_running_requests{")
    )


@pytest.mark.parametrize("grpc_server", ["grpcio", "lean"])
async def test_in_flight_counters_return_to_zero(tmp_path: object, grpc_server: str) -> None:
    epp_args = ("--grpc-server", grpc_server)
    config = stack_config(tmp_path, first_pod_ip=40, epp_args=epp_args)  # type: ignore[arg-type]
    rng = random.Random(42)
    outcomes: Counter[str] = Counter()
    async with LocalStack(config) as stack:
        assert stack.sim is not None
        flaky, dying, _ = stack.pods
        stack.sim.pod(flaky.name).set_faults(error_rate=0.3)
        stack.sim.pod(dying.name).set_faults(die_mid_stream=True)
        budget = iter(range(TOTAL))

        async def one(client: httpx.AsyncClient, i: int) -> None:
            stream = rng.random() < 0.5
            body = {
                "model": rng.choice(("llama2-7b-chat", "meta-llama/Llama-2-7b-chat-hf")),
                "messages": [{"role": "user", "content": f"request {i}"}],
                "max_tokens": rng.choice((2, 8, 64)),
                "stream": stream,
            }
            style = rng.random()
            timeout = 0.02 if style < 0.1 else 30.0  # 10%: the client gives up early
            request = client.post("/v1/chat/completions", json=body, timeout=timeout)
            if style > 0.9:  # 10%: the client goes away while waiting
                task = asyncio.ensure_future(request)
                await asyncio.sleep(rng.random() * 0.05)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await task
                outcomes["cancelled"] += 1
                return
            try:
                response = await request
                outcomes[str(response.status_code)] += 1
            except httpx.TimeoutException:
                outcomes["timeout"] += 1
            except httpx.HTTPError:
                outcomes["broken"] += 1

        async def worker() -> None:
            async with httpx.AsyncClient(base_url=stack.url) as client:
                for i in budget:
                    await one(client, i)

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        stack.sim.pod(flaky.name).set_faults(error_rate=0.0)
        stack.sim.pod(dying.name).set_faults(die_mid_stream=False)
        for _ in range(100):  # cancelled upstream requests drain within moments
            rows = await debug_endpoints(stack)
            if all(r["in_flight"] == 0 and r["in_flight_tokens"] == 0 for r in rows):
                break
            await asyncio.sleep(0.1)
        print("outcomes:", dict(outcomes))
        assert sum(outcomes.values()) == TOTAL
        assert outcomes["200"] > TOTAL // 3
        assert outcomes["500"] > 0 and outcomes["cancelled"] > 0 and outcomes["timeout"] > 0
        assert [(r["address"], r["in_flight"], r["in_flight_tokens"]) for r in rows] == [
            (r["address"], 0, 0) for r in rows
        ]
        assert await running_gauge(stack) == 0
