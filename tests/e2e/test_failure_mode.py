"""Fail-open and fail-close with the EPP killed mid-run, and recovery when it comes back."""

from __future__ import annotations

import httpx
import pytest

from epp.local.stack import LocalStack
from tests.e2e.conftest import stack_config

pytestmark = pytest.mark.e2e

BODY = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def post(stack: LocalStack) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.url, timeout=20) as client:
        return await client.post("/v1/chat/completions", json=BODY)


@pytest.mark.parametrize("fail_open", [True, False])
async def test_epp_killed_mid_run(tmp_path: object, fail_open: bool) -> None:
    # Failing open bypasses the EPP's model rewrite: the local stack's pods also answer to the
    # client-facing model names (as vLLM does with several --served-model-name values).
    config = stack_config(
        tmp_path,  # type: ignore[arg-type]
        failure_mode_allow=fail_open,
        first_pod_ip=20,
    )
    async with LocalStack(config) as stack:
        pods = {f"{p.host}:{p.port}" for p in stack.pods}
        before = await post(stack)
        assert before.status_code == 200
        assert before.json()["model"] == "llama2-7b-chat"  # the EPP restored the client's name
        assert stack.epp is not None
        await stack.epp.kill()
        during = [await post(stack) for _ in range(5)]
        if fail_open:
            assert all(r.status_code == 200 for r in during), [
                (r.status_code, r.headers) for r in during
            ]
            assert {r.headers["x-inference-pod-address"] for r in during} <= pods
            assert all("x-inference-endpoint" not in r.headers for r in during)  # no EPP
        else:
            assert all(500 <= r.status_code < 600 for r in during)
        await stack.start_epp()
        for _ in range(50):  # Envoy reconnects to the restarted EPP
            after = await post(stack)
            if after.status_code == 200 and "x-inference-endpoint" in after.headers:
                break
        assert after.status_code == 200
        assert after.headers["x-inference-endpoint"] == after.headers["x-inference-pod-address"]
