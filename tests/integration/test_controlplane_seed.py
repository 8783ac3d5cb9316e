"""The seed's Gateway and HTTPRoute through the control plane and a real Envoy, over HTTPS.

One EPP serves both pools of the seed's canary (examples/canary); the control plane follows the
same manifests folder. Covers routing by the seed's matches, the canary shift after a manifest
edit, a NACKed update that leaves traffic on the last good config, and a route to a missing pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.integration.test_controlplane_harness import HOST, Gateway, canary_manifests

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

MISSING_POOL_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-nowhere}
spec:
  parentRefs: [{name: ai-inference-gateway}]
  hostnames: ["api.ai-platform.example.com"]
  rules:
  - matches: [{path: {type: PathPrefix, value: /nowhere}}]
    backendRefs: [{group: inference.networking.x-k8s.io, kind: InferencePool, name: nope}]
"""
# Python's `re` accepts the lookahead; Envoy's RE2 does not, so only Envoy can reject it.
RE2_INVALID_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex}
spec:
  parentRefs: [{name: ai-inference-gateway}]
  hostnames: ["api.ai-platform.example.com"]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/v1/(?=models)"}}]
    backendRefs: [{group: gateway.networking.x-k8s.io, kind: InferenceModel, name: llama2-7b-chat}]
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    run = tmp_path_factory.mktemp("cp-seed")
    manifests, specs = canary_manifests(run, 160)
    async with Gateway(run, manifests, specs, {"main": [manifests]}) as gw:
        yield gw


def _canary_share(hits: dict[str, int]) -> float:
    served = {k: v for k, v in hits.items() if k.startswith("llama2-gpu-pool")}
    assert sum(served.values()) == sum(hits.values()), hits
    return sum(v for k, v in served.items() if "canary" in k) / sum(served.values())


async def test_seed_route_serves_https_with_the_generated_certificate(gateway: Gateway) -> None:
    async with gateway.client() as client:
        by_path = await gateway.post(client, "/v1/chat/completions", {"x-model-name": "other"})
        by_header = await gateway.post(client, "/v1/completions")
        wrong_host = await gateway.post(client, "/v1/chat/completions", {"host": "evil.example"})
    assert by_path.status_code == 200, by_path.text
    assert by_path.headers["x-inference-pod"].startswith("llama2-gpu-pool")
    assert by_path.json()["model"] == "llama2-7b-chat"
    # the seed's second match (the header alone) reaches a pod too, which refuses a chat body
    assert by_header.headers["x-inference-pod"].startswith("llama2-gpu-pool"), by_header.text
    assert wrong_host.status_code == 404
    assert gateway.plane is not None
    status = gateway.plane.status()
    programmed = status.condition("Gateway", "default/ai-inference-gateway", "Programmed")
    assert programmed is not None and programmed.status == "True"


async def test_canary_weights_shift_without_restarting_envoy(gateway: Gateway) -> None:
    assert gateway.envoy is not None and gateway.envoy.proc is not None
    pid = gateway.envoy.proc.pid
    before = _canary_share(await gateway.pods_hit("/v1/chat/completions", None, 80))
    inference = gateway.manifests / "inference.yaml"
    text = inference.read_text()
    inference.write_text(
        text.replace("weight: 90", "weight: 50").replace("weight: 10", "weight: 50")
    )
    await _eventually_shifted(gateway)
    after = _canary_share(await gateway.pods_hit("/v1/chat/completions", None, 80))
    print(f"canary share: {before:.2f} at 90/10, {after:.2f} at 50/50")
    assert before < 0.3
    assert after > 0.3
    assert gateway.envoy.proc.pid == pid and gateway.envoy.running


async def _eventually_shifted(gateway: Gateway) -> None:
    import asyncio

    for _ in range(40):  # the EPP re-reads the folder within a second or two
        # 40 samples and a 30 % bar: at the old 10 % weight, reaching it by chance is ~1e-5
        hits = await gateway.pods_hit("/v1/chat/completions", None, 40)
        if _canary_share(hits) >= 0.3:
            return
        await asyncio.sleep(0.25)


async def test_rejected_update_is_nacked_and_traffic_stays_on_the_old_config(
    gateway: Gateway,
) -> None:
    assert gateway.plane is not None
    bad = gateway.manifests / "bad-route.yaml"
    await gateway.synced_after(bad, RE2_INVALID_ROUTE)
    nacks = [n for n in gateway.plane.server.nacks if n.type_url.endswith("RouteConfiguration")]
    assert nacks and "(?=" in nacks[-1].message  # RE2: "invalid perl operator"
    programmed = gateway.plane.status().condition(
        "Gateway", "default/ai-inference-gateway", "Programmed"
    )
    assert programmed is not None and programmed.status == "False"
    assert programmed.reason == "Invalid"
    hits = await gateway.pods_hit("/v1/chat/completions", None, 8)
    assert set(hits) <= {k for k in hits if k.startswith("llama2-gpu-pool")}, hits
    bad.unlink()
    await _wait_acked(gateway)
    programmed = gateway.plane.status().condition(
        "Gateway", "default/ai-inference-gateway", "Programmed"
    )
    assert programmed is not None and programmed.status == "True"


async def _wait_acked(gateway: Gateway) -> None:
    import asyncio

    assert gateway.plane is not None
    for _ in range(100):
        if gateway.plane.server.acked_everywhere():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"Envoy never ACKed: {gateway.plane.debug()}")


async def test_route_to_missing_pool_reports_backend_not_found_and_answers_5xx(
    gateway: Gateway,
) -> None:
    assert gateway.plane is not None
    await gateway.synced_after(gateway.manifests / "nowhere.yaml", MISSING_POOL_ROUTE)
    refs = gateway.plane.status().condition("HTTPRoute", "default/to-nowhere", "ResolvedRefs")
    assert refs is not None and refs.status == "False" and refs.reason == "BackendNotFound"
    async with gateway.client() as client:
        response = await gateway.post(client, "/nowhere", {"x-model-name": "none"})
    assert response.status_code == 500
    assert HOST in {h for a in gateway.plane.resolved.attachments for h in a.domains}


async def test_an_epp_serving_tls_is_reached_over_tls(tmp_path: Path) -> None:
    manifests, specs = canary_manifests(tmp_path, 180)
    async with Gateway(tmp_path, manifests, specs, {"main": [manifests]}, epp_tls=True) as gw:
        hits = await gw.pods_hit("/v1/chat/completions", None, 4)
    assert sum(v for k, v in hits.items() if k.startswith("llama2-gpu-pool")) == 4, hits
