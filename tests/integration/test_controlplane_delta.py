"""The seed's Gateway through a real Envoy that speaks delta xDS (`api_type: DELTA_GRPC`).

The gateway of `test_controlplane_harness` with one change: Envoy's bootstrap asks for
`api_type: DELTA_GRPC`. Covers serving the seed's
route, a route added and removed over xDS while Envoy keeps running (ACKed, seen in the server's
stream state), and a NACKed route that leaves traffic on the last accepted config.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from epp.controlplane.delta import DeltaTypeState
from epp.controlplane.xds import ROUTE
from tests.integration.test_controlplane_harness import Gateway, canary_manifests
from tests.integration.test_controlplane_seed import RE2_INVALID_ROUTE

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

PATH = "/v1/completions"
COMPLETIONS_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: llama2-completions}
spec:
  parentRefs: [{name: ai-inference-gateway}]
  hostnames: ["api.ai-platform.example.com"]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1/completions}}]
    backendRefs: [{group: gateway.networking.x-k8s.io, kind: InferenceModel, name: llama2-7b-chat}]
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    run = tmp_path_factory.mktemp("cp-delta")
    manifests, specs = canary_manifests(run, 220)
    gw = Gateway(run, manifests, specs, {"main": [manifests]}, api_type="DELTA_GRPC")
    await gw.__aenter__()
    try:
        yield gw
    finally:
        await gw.stop()


def _route_state(gateway: Gateway) -> DeltaTypeState:
    assert gateway.plane is not None
    (stream,) = gateway.plane.server.streams.values()
    assert stream.protocol == "delta"
    state = stream.types[ROUTE]
    assert isinstance(state, DeltaTypeState)
    return state


async def _wait_acked(gateway: Gateway) -> None:
    assert gateway.plane is not None
    for _ in range(100):
        if gateway.plane.server.acked_everywhere():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"Envoy never ACKed: {gateway.plane.debug()}")


async def test_delta_envoy_serves_the_seed_route(gateway: Gateway) -> None:
    assert gateway.plane is not None
    await _wait_acked(gateway)
    assert [s.protocol for s in gateway.plane.server.streams.values()] == ["delta"]
    envoys = gateway.plane.debug()["envoys"]
    assert isinstance(envoys, list) and [e["protocol"] for e in envoys] == ["delta"]
    async with gateway.client() as client:
        response = await gateway.post(client, "/v1/chat/completions")
    assert response.status_code == 200, response.text
    assert response.headers["x-inference-pod"].startswith("llama2-gpu-pool")
    programmed = gateway.plane.status().condition(
        "Gateway", "default/ai-inference-gateway", "Programmed"
    )
    assert programmed is not None and programmed.status == "True"


async def test_a_route_added_and_removed_over_delta_without_restarting_envoy(
    gateway: Gateway,
) -> None:
    assert gateway.plane is not None and gateway.envoy is not None
    assert gateway.envoy.proc is not None
    pid = gateway.envoy.proc.pid
    async with gateway.client() as client:
        before = await gateway.post(client, PATH, {"x-model-name": "other"})
        assert before.status_code == 404 and "x-inference-pod" not in before.headers
        route_file = gateway.manifests / "completions.yaml"
        await gateway.synced_after(route_file, COMPLETIONS_ROUTE)
        await _wait_acked(gateway)
        added = await gateway.post(client, PATH, {"x-model-name": "other"})
        # a pod answers (it refuses the chat body on this path; what matters is the route)
        assert added.headers.get("x-inference-pod", "").startswith("llama2-gpu-pool"), added
        version = gateway.plane.cache.versions[ROUTE]
        state = _route_state(gateway)
        assert state.acked_version == version
        assert state.have == {
            n: h for n, h in gateway.plane.cache.resource_versions(ROUTE).items() if n in state.have
        }
        route_file.unlink()
        generation = gateway.plane.cache.generation
        for _ in range(100):
            if gateway.plane.cache.generation != generation:
                break
            await asyncio.sleep(0.05)
        assert gateway.plane.cache.generation != generation, "the removal was not picked up"
        await _wait_acked(gateway)
        removed = await gateway.post(client, PATH, {"x-model-name": "other"})
    assert removed.status_code == 404 and "x-inference-pod" not in removed.headers
    assert gateway.envoy.proc.pid == pid and gateway.envoy.running


async def test_a_nacked_delta_update_keeps_the_last_accepted_config(gateway: Gateway) -> None:
    assert gateway.plane is not None
    accepted = dict(_route_state(gateway).have)
    bad = gateway.manifests / "bad-route.yaml"
    await gateway.synced_after(bad, RE2_INVALID_ROUTE)
    nacks = [n for n in gateway.plane.server.nacks if n.type_url == ROUTE]
    assert nacks and "(?=" in nacks[-1].message
    assert _route_state(gateway).have == accepted  # what Envoy still runs
    programmed = gateway.plane.status().condition(
        "Gateway", "default/ai-inference-gateway", "Programmed"
    )
    assert programmed is not None and (programmed.status, programmed.reason) == ("False", "Invalid")
    hits = await gateway.pods_hit("/v1/chat/completions", None, 8)
    assert sum(v for k, v in hits.items() if k.startswith("llama2-gpu-pool")) == 8, hits
    bad.unlink()
    await _wait_acked(gateway)
    programmed = gateway.plane.status().condition(
        "Gateway", "default/ai-inference-gateway", "Programmed"
    )
    assert programmed is not None and programmed.status == "True"
