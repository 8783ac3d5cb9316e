"""Under saturation, sheddable requests get a 429 through Envoy while critical ones are served."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml

from epp.local.stack import SEED_EXAMPLE, LocalStack
from tests.e2e.conftest import stack_config, until_the_epp_sees

pytestmark = pytest.mark.e2e

BATCH = {
    "apiVersion": "gateway.networking.x-k8s.io/v1alpha1",
    "kind": "InferenceModel",
    "metadata": {"name": "llama2-7b-batch"},
    "spec": {"poolRef": {"name": "llama2-gpu-pool"}, "routing": {"priority": "low"}},
}


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_sheddable_gets_429_when_saturated_and_critical_is_served(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "inference.yaml").write_text((SEED_EXAMPLE / "inference.yaml").read_text())
    (folder / "batch.yaml").write_text(yaml.safe_dump(BATCH))
    async with LocalStack(stack_config(tmp_path / "run", (folder,), first_pod_ip=160)) as stack:
        assert stack.sim is not None
        async with httpx.AsyncClient(base_url=stack.url, timeout=20) as client:
            calm = await client.post("/v1/chat/completions", json=chat("llama2-7b-batch"))
            assert calm.status_code == 200, calm.text
            for spec in stack.pods:  # every pod reports a long queue and a full KV cache
                stack.sim.pod(spec.name).set_fake_metrics(waiting=40, kv_usage=0.97)
            await until_the_epp_sees(stack, waiting=40)
            shed = await client.post("/v1/chat/completions", json=chat("llama2-7b-batch"))
            critical = await client.post("/v1/chat/completions", json=chat("llama2-7b-chat"))
            for spec in stack.pods:
                stack.sim.pod(spec.name).set_fake_metrics(waiting=None, kv_usage=None)
            await until_the_epp_sees(stack, waiting=0)
            recovered = await client.post("/v1/chat/completions", json=chat("llama2-7b-batch"))
    assert shed.status_code == 429
    assert shed.json()["error"]["type"] == "rate_limit_error"
    assert shed.headers["x-gateway-inference-error"] == "Shed"
    assert critical.status_code == 200, critical.text
    assert recovered.status_code == 200
