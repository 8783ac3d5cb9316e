"""Two InferencePools, each with its own EPP, behind one Gateway: isolation, weights, FailOpen.

Upstream-shaped pools (v1alpha2, label selectors, Pod manifests on loopback addresses). pool-a
is FailOpen, pool-b FailClose. Routes by the `x-route` header: a → pool-a, b → pool-b, split →
both by weight (each EPP only knows its own pool, so the weights show only if Envoy splits).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import yaml

from epp.sim.cluster import SimPodSpec
from tests.integration.test_controlplane_harness import Gateway, pod_manifest

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

FIRST_IP = 171
CHAT = "/v1/chat/completions"
ROUTE_A, ROUTE_B, ROUTE_SPLIT = ({"x-route": r} for r in ("a", "b", "split"))


def _pool(name: str, failure_mode: str) -> dict[str, object]:
    return {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
        "kind": "InferencePool",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": name},
            "targetPortNumber": 8000,
            "extensionRef": {"name": f"{name}-epp", "failureMode": failure_mode},
        },
    }


GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: epp
  listeners:
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: gw-cert}]}}
"""


def _route(name: str, weights: dict[str, int]) -> str:
    refs = [
        {"group": "inference.networking.x-k8s.io", "kind": "InferencePool", "name": p, "weight": w}
        for p, w in weights.items()
    ]
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [
                {
                    "matches": [{"headers": [{"name": "x-route", "value": name}]}],
                    "backendRefs": refs,
                }
            ],
        },
    }
    return yaml.safe_dump(route)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    run = tmp_path_factory.mktemp("cp-pools")
    plane_dir = run / "manifests"
    plane_dir.mkdir()
    specs: list[SimPodSpec] = []
    epp_dirs: dict[str, list[Path]] = {}
    ip = FIRST_IP
    for name, mode in (("pool-a", "FailOpen"), ("pool-b", "FailClose")):
        pods = []
        for i in range(2):
            pod = f"{name}-{i}"
            specs.append(SimPodSpec(f"127.0.0.{ip}", 8000, pod, accept_any_model=True, speed=10.0))
            pods.append(pod_manifest(pod, f"127.0.0.{ip}", {"app": name}))
            ip += 1
        text = yaml.safe_dump_all([_pool(name, mode), *pods])
        (plane_dir / f"{name}.yaml").write_text(text)
        own = run / f"epp-{name}"
        own.mkdir()
        (own / "pool.yaml").write_text(text)
        epp_dirs[name] = [own]
    (plane_dir / "gateway.yaml").write_text(GATEWAY)
    (plane_dir / "route-a.yaml").write_text(_route("a", {"pool-a": 1}))
    (plane_dir / "route-b.yaml").write_text(_route("b", {"pool-b": 1}))
    (plane_dir / "split.yaml").write_text(_route("split", {"pool-a": 90, "pool-b": 10}))
    pool_epps = {"default/pool-a": "pool-a", "default/pool-b": "pool-b"}
    async with Gateway(run, plane_dir, specs, epp_dirs, pool_epps) as gw:
        yield gw


async def _stat(gateway: Gateway, name: str) -> int:
    url = f"http://127.0.0.1:{gateway.admin_port}/stats?filter={name}"
    async with httpx.AsyncClient(timeout=5.0) as client:
        text = (await client.get(url)).text
    return sum(int(line.rsplit(":", 1)[1]) for line in text.splitlines() if line.strip())


async def test_two_routes_to_two_pools_stay_isolated(gateway: Gateway) -> None:
    to_a = await gateway.pods_hit(CHAT, ROUTE_A, 24)
    to_b = await gateway.pods_hit(CHAT, ROUTE_B, 24)
    assert set(to_a) == {"pool-a-0", "pool-a-1"}, to_a
    assert set(to_b) == {"pool-b-0", "pool-b-1"}, to_b
    # with its EPP up, pool-a's requests go where the EPP picked, not to the fail-open fallback
    assert await _stat(gateway, r"pool-a/fallback\.upstream_rq_total") == 0
    assert await _stat(gateway, r"default/pool-a\.upstream_rq_total") >= 24


async def test_weighted_backends_split_in_envoy_and_shift_over_xds(gateway: Gateway) -> None:
    before = await gateway.pods_hit(CHAT, ROUTE_SPLIT, 80)
    share_b = sum(v for k, v in before.items() if k.startswith("pool-b")) / 80
    await gateway.synced_after(
        gateway.manifests / "split.yaml", _route("split", {"pool-a": 50, "pool-b": 50})
    )
    after = await gateway.pods_hit(CHAT, ROUTE_SPLIT, 80)
    share_b_after = sum(v for k, v in after.items() if k.startswith("pool-b")) / 80
    print(f"pool-b share: {share_b:.2f} at 90/10, {share_b_after:.2f} at 50/50")
    assert set(before) | set(after) <= {"pool-a-0", "pool-a-1", "pool-b-0", "pool-b-1"}
    assert share_b < 0.3
    assert 0.3 < share_b_after < 0.7


async def test_fail_open_pool_reaches_a_pod_with_its_epp_stopped(gateway: Gateway) -> None:
    await gateway.stop_epp("pool-a")
    await asyncio.sleep(0.2)
    to_a = await gateway.pods_hit(CHAT, ROUTE_A, 12)
    to_b = await gateway.pods_hit(CHAT, ROUTE_B, 6)
    assert set(to_a) <= {"pool-a-0", "pool-a-1"} and sum(to_a.values()) == 12, to_a
    assert set(to_b) <= {"pool-b-0", "pool-b-1"}, to_b
    assert await _stat(gateway, r"pool-a/fallback\.upstream_rq_total") >= 12
