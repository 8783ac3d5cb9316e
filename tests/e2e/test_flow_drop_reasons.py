"""Through Envoy, a waiting request that cannot be served says why: a sheddable request with a
TTL waits, then gets 503 `TTLExpired`; a full room answers 429 `QueueFull`; a malformed TTL
header is a 400. Meanwhile `/debug/flows` and `epp top` show what waits, per flow. Real
processes: the EPP, Envoy and the simulator."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import httpx
import pytest
import yaml

from epp import top
from epp.local.stack import SEED_EXAMPLE, LocalStack
from tests.e2e.conftest import stack_config, until_the_epp_sees

pytestmark = pytest.mark.e2e

BATCH = {
    "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": "llama2-7b-batch"},
    "spec": {
        "poolRef": {"name": "llama2-gpu-pool"},
        "routing": {"priority": "low", "queueing": {"fairnessId": "batch", "ttlSeconds": 1.5}},
    },
}


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_waiting_sheddable_requests_expire_and_a_full_room_refuses(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "inference.yaml").write_text((SEED_EXAMPLE / "inference.yaml").read_text())
    (folder / "batch.yaml").write_text(yaml.safe_dump(BATCH))
    config = stack_config(
        tmp_path / "run",
        (folder,),
        first_pod_ip=170,
        epp_args=("--queue-max-pool-requests", "1"),
    )
    async with LocalStack(config) as stack:
        assert stack.sim is not None
        async with httpx.AsyncClient(base_url=stack.url, timeout=20) as client:
            calm = await client.post("/v1/chat/completions", json=chat("llama2-7b-batch"))
            assert calm.status_code == 200, calm.text
            for spec in stack.pods:  # saturated: no room to spare for sheddable requests
                stack.sim.pod(spec.name).set_fake_metrics(waiting=40, kv_usage=0.97)
            await until_the_epp_sees(stack, waiting=40)
            started = time.monotonic()
            waiting = asyncio.create_task(
                client.post("/v1/chat/completions", json=chat("llama2-7b-batch"))
            )
            await asyncio.sleep(0.3)
            debug = f"http://127.0.0.1:{stack.config.metrics_port}"
            flows = (await client.get(f"{debug}/debug/flows")).raise_for_status().json()
            shown = io.StringIO()
            assert await asyncio.to_thread(top.run, debug, 0.0, True, shown) == 0
            full = await client.post("/v1/chat/completions", json=chat("llama2-7b-batch"))
            expired = await waiting
            waited = time.monotonic() - started
            told = await client.post(
                "/v1/chat/completions",
                json=chat("llama2-7b-batch"),
                headers={"x-gateway-inference-ttl-ms": "200"},
            )
            bad = await client.post(
                "/v1/chat/completions",
                json=chat("llama2-7b-chat"),
                headers={"x-gateway-inference-ttl-ms": "soon"},
            )
            for spec in stack.pods:
                stack.sim.pod(spec.name).set_fake_metrics(waiting=None, kv_usage=None)
            await asyncio.sleep(0.5)
            recovered = await client.post("/v1/chat/completions", json=chat("llama2-7b-batch"))
    assert flows["flow_control"] is True
    assert [(f["priority"], f["flow"], f["waiting"]) for f in flows["flows"]] == [(-1, "batch", 1)]
    assert flows["flows"][0]["bytes"] > 0
    table = shown.getvalue().splitlines()
    assert any(line.split()[1:4] == ["-1", "batch", "1"] for line in table), table
    assert full.status_code == 429, full.text
    assert full.headers["x-gateway-inference-error"] == "QueueFull"
    assert "--queue-max-pool-requests 1" in full.json()["error"]["message"]
    assert expired.status_code == 503, expired.text
    assert expired.headers["x-gateway-inference-error"] == "TTLExpired"
    assert 1.4 <= waited < 5.0  # the model's TTL, answered at once when it ran out
    assert told.status_code == 503 and told.headers["x-gateway-inference-error"] == "TTLExpired"
    assert "TTL of 0.2s" in told.json()["error"]["message"]
    assert bad.status_code == 400 and bad.headers["x-gateway-inference-error"] == "BadRequest"
    assert "x-gateway-inference-ttl-ms" in bad.json()["error"]["message"]
    assert recovered.status_code == 200
