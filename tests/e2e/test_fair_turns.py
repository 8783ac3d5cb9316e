"""Through Envoy, tenants take turns: one pod with a batch of two, tenant A queues eight
requests (three go to the pod at once, two running and one in its queue; the rest wait in the
EPP), then tenant B sends one. With fairness B's request goes at the next free slot but one
(A's oldest waiter holds an equal turn, and is older), ahead of A's backlog; with
`--no-fairness` it waits behind all of it. The flow comes from
the header named by `--fairness-header` (the gateway is not trusted, so a client's own
`x-gateway-inference-fairness-id` decides nothing). Real processes: the EPP, Envoy and the
simulator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import yaml

from epp.local.stack import LocalStack
from tests.e2e.conftest import stack_config

pytestmark = pytest.mark.e2e

POOL = {
    "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
    "kind": "InferencePool",
    "metadata": {"name": "fair-pool"},
    "spec": {
        "deployment": {
            "replicas": 1,
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "vllm-server",
                            "image": "vllm/vllm-openai:latest",
                            "args": ["--max-num-seqs", "2"],
                            "env": [{"name": "MODEL_NAME", "value": "fair-model"}],
                        }
                    ]
                }
            },
        }
    },
}
MODEL = {
    "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": "chat"},
    "spec": {"poolRef": {"name": "fair-pool"}},
}
A_REQUESTS = 8


async def first_token(client: httpx.AsyncClient, tenant: str, started: float) -> float:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": f"{tenant} says hello"}],
        "max_tokens": 150,
        "stream": True,
    }
    headers = {"x-tenant": tenant, "x-gateway-inference-fairness-id": "spoofed"}
    first = None
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        async for _ in r.aiter_bytes():  # read to the end: the answer holds its batch slot
            first = first or time.monotonic() - started
    assert first is not None
    return first


async def b_position(tmp_path: Path, fair: bool) -> int:
    """How many of A's queued requests got their first token before B's."""
    folder = tmp_path / ("fair" if fair else "fcfs")
    folder.mkdir()
    (folder / "inference.yaml").write_text(yaml.safe_dump_all([POOL, MODEL]))
    args = ("--fairness-header", "x-tenant", *(() if fair else ("--no-fairness",)))
    config = stack_config(
        folder / "run",
        (folder,),
        first_pod_ip=180 if fair else 190,
        epp_args=args,
        sim_options={"speed": 0.5},  # an answer takes a few seconds: a backlog forms
    )
    async with (
        LocalStack(config) as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=60) as client,
    ):
        started = time.monotonic()
        flood = []
        for _ in range(A_REQUESTS):
            flood.append(asyncio.create_task(first_token(client, "A", started)))
            await asyncio.sleep(0.02)  # in this order
        await asyncio.sleep(0.3)  # A's backlog waits in the EPP
        b = await first_token(client, "B", started)
        a = await asyncio.gather(*flood)
    print(f"fair={fair}: A's first tokens {[round(t, 2) for t in a]}, B's {b:.2f}")
    return sum(1 for t in a[3:] if t < b)  # the pod took three at once (two running, one queued)


async def test_a_second_tenant_is_served_ahead_of_a_flood_only_with_fairness(
    tmp_path: Path,
) -> None:
    assert await b_position(tmp_path, fair=True) <= 1
    assert await b_position(tmp_path, fair=False) == A_REQUESTS - 3
