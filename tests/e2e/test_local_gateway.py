"""`epp up` on the seed's manifests: Envoy configured by the control plane from the seed's own
Gateway and HTTPRoute, over plain HTTP and over HTTPS with the generated certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from epp.local.stack import LocalStack
from tests.e2e.conftest import stack_config

pytestmark = pytest.mark.e2e

CHAT = {"model": "llama2-7b-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_seed_gateway_over_http_and_https(tmp_path: Path) -> None:
    config = stack_config(tmp_path, control_plane=None, first_pod_ip=120)
    async with LocalStack(config) as stack:
        assert stack.uses_control_plane
        banner = stack.banner()
        assert "Programmed=True" in banner and "--cacert" in banner
        host = stack.gateway_host
        assert host == "api.ai-platform.example.com"
        pods = {f"{p.host}:{p.port}" for p in stack.pods}
        async with httpx.AsyncClient(timeout=20) as client:
            plain = await client.post(f"{stack.url}/v1/chat/completions", json=CHAT)
        tls = ssl.create_default_context(cafile=stack.run_dir / "certs" / "ca.crt")
        https = f"https://127.0.0.1:{config.https_port}/v1/chat/completions"
        async with httpx.AsyncClient(verify=tls, timeout=20) as client:
            secure = await client.post(
                https, json=CHAT, headers={"host": host, "x-model-name": "llama2-7b-chat"}
            )
        for response in (plain, secure):
            assert response.status_code == 200, response.text
            assert response.json()["model"] == "llama2-7b-chat"
            assert response.headers["x-inference-pod-address"] in pods
            assert (
                response.headers["x-inference-endpoint"]
                == response.headers["x-inference-pod-address"]
            )


async def test_seed_gateway_with_the_lean_grpc_server(tmp_path: Path) -> None:
    """`epp serve --grpc-server lean` behind the control plane's Envoy configuration (its
    ext_proc filter, processing modes and gRPC health checks), streamed and not."""
    config = stack_config(
        tmp_path, control_plane=None, first_pod_ip=124, epp_args=("--grpc-server", "lean")
    )
    async with LocalStack(config) as stack:
        assert stack.uses_control_plane
        pods = {f"{p.host}:{p.port}" for p in stack.pods}
        async with httpx.AsyncClient(timeout=20) as client:
            plain = await client.post(f"{stack.url}/v1/chat/completions", json=CHAT)
            assert plain.status_code == 200, plain.text
            assert plain.json()["model"] == "llama2-7b-chat"
            assert plain.headers["x-inference-pod-address"] in pods
            body = {**CHAT, "stream": True}
            async with client.stream(
                "POST", f"{stack.url}/v1/chat/completions", json=body
            ) as streamed:
                assert streamed.status_code == 200
                text = "".join([chunk async for chunk in streamed.aiter_text()])
            assert '"model":"llama2-7b-chat"' in text.replace(" ", "") and "[DONE]" in text
            unknown = await client.post(
                f"{stack.url}/v1/chat/completions", json={**CHAT, "model": "no-such-model"}
            )
            assert unknown.status_code == 404, unknown.text
