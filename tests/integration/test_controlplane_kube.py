"""The control plane in Kubernetes mode: resources from the API emulator, status written back.

The seed's canary (Gateway, HTTPRoute, PriorityFilter, two pools, one model), its Pods, a TLS
Secret and our GatewayClass live in the emulator (tests/kube/apiserver.py); the control plane
watches them in-process with the real client over HTTP, a real Envoy connects over ADS, and one
EPP process (file mode) serves the pools' simulated pods. Asserts what lands in the API server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import shutil
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from epp.api.load import load_paths
from epp.controlplane.clusters import TranslateOptions
from epp.controlplane.kubemode import KubeControlPlaneConfig, KubeMode
from epp.controlplane.kubesource import CONTROLLER_NAME, GatewaySourceConfig
from epp.controlplane.plane import ControlPlane
from epp.controlplane.tls import CertificateFolder
from epp.controlplane.xds import start_server
from epp.kube.client import ClientConfig, KubeApi, connect
from epp.kube.leader import LeaderSettings
from epp.kube.watch import WatchSettings
from epp.local.pods import plan_pods
from epp.local.processes import ChildProcess, wait_until
from epp.sim.cluster import SimCluster, SimPodSpec
from tests.integration.test_controlplane_harness import HOST, Gateway, start_envoy
from tests.kube.apiserver import ApiServer
from tests.ports import free_ports

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(60),
]

CANARY = Path(__file__).resolve().parents[2] / "examples" / "canary"
GATEWAY = ("gateway.networking.k8s.io", "v1", "gateways")
ROUTE = ("gateway.networking.k8s.io", "v1", "httproutes")
ROUTE_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes"
GW_KEY = "ai-inference-gateway"
ROUTE_KEY = "llama2-inference-route"
OUR_CLASS = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "GatewayClass",
    "metadata": {"name": "inference-gateway-class"},
    "spec": {"controllerName": CONTROLLER_NAME},
}
FOREIGN_GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "someone-elses", "namespace": "default"},
    "spec": {
        "gatewayClassName": "other-class",
        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
    },
}
RE2_INVALID_ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "bad-regex", "namespace": "default"},
    "spec": {
        "parentRefs": [{"name": GW_KEY}],
        "hostnames": [HOST],
        "rules": [
            {
                "matches": [{"path": {"type": "RegularExpression", "value": "/v1/(?=models)"}}],
                "backendRefs": [
                    {
                        "group": "gateway.networking.x-k8s.io",
                        "kind": "InferenceModel",
                        "name": "llama2-7b-chat",
                    }
                ],
            }
        ],
    },
}


class KubeGateway(Gateway):
    """The harness's gateway with the control plane fed by the API emulator instead of a folder."""

    def __init__(
        self, run_dir: Path, manifests: Path, pods: Sequence[SimPodSpec], server: ApiServer
    ) -> None:
        super().__init__(run_dir, manifests, pods, {"main": [manifests]})
        self.server = server
        self.kube: KubeMode | None = None
        self.api: KubeApi | None = None

    async def _start(self) -> None:
        self.sim = SimCluster(self.pods)
        await self.sim.__aenter__()
        epp = self.epps["main"]
        epp.grpc_port, epp.metrics_port = free_ports(2)
        await self.start_epp("main")
        options = TranslateOptions(
            default_epp=f"127.0.0.1:{epp.grpc_port}",
            ignore_extension_refs=True,
            listen_host="127.0.0.1",
            port_map={443: self.https_port, 80: self.http_port},
        )
        self.plane = ControlPlane(options)  # no cert folder: the certificate is the Secret's
        config = KubeControlPlaneConfig(
            client=ClientConfig(host=self.server.url, request_timeout=5),
            source=GatewaySourceConfig(watch=WatchSettings(backoff_max=1.0), debounce=0.02),
            leader=LeaderSettings(
                name="cp-test",
                identity="cp-a",
                lease_duration=3,
                renew_deadline=2,
                retry_period=0.2,
            ),
            status_poll=0.05,
        )
        self.kube = await KubeMode.open(self.plane, config)
        await self.kube.start()
        self._grpc, xds_port = await start_server(self.plane.server, "127.0.0.1", 0)
        self._follow = asyncio.create_task(self.kube.run())
        self.envoy, self.admin_port = await start_envoy(self.run_dir, xds_port)
        await self.plane.server.wait_synced(timeout=30)
        await wait_until(self._listening, "Envoy's gateway listener", 30, self.envoy)
        self.api = await connect(ClientConfig(host=self.server.url, request_timeout=5))

    async def stop(self) -> None:
        await super().stop()  # cancels the Kubernetes-mode loops (`_follow`)
        if self.kube is not None:
            await self.kube.aclose()
        if self.api is not None:
            await self.api.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KubeGateway]:
    run = tmp_path_factory.mktemp("cp-kube")
    manifests = run / "manifests"  # the EPP's (file mode); the control plane reads the emulator
    shutil.copytree(CANARY, manifests)
    specs, pods = plan_pods(load_paths([manifests]), first_pod_ip=200, sim_options={"speed": 10.0})
    (manifests / "pods.yaml").write_text(yaml.safe_dump_all(pods))
    pair = CertificateFolder(run / "certs").pair("default/inference-tls-cert", {HOST})
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "inference-tls-cert", "namespace": "default"},
        "data": {
            "tls.crt": base64.b64encode(pair.cert_pem).decode(),
            "tls.key": base64.b64encode(pair.key_pem).decode(),
        },
    }
    server = ApiServer()
    await server.start()
    for path in sorted(CANARY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                server.put(doc)
    for doc in (*copy.deepcopy(pods), secret, OUR_CLASS, FOREIGN_GATEWAY):
        server.put(doc)
    try:
        kube_gateway = KubeGateway(run, manifests, specs, server)
        async with kube_gateway:
            yield kube_gateway
    finally:
        await server.stop()


async def eventually(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.suppress(KeyError, StopIteration, TypeError, IndexError):
            if (found := check()) is not None and found is not False:
                return found
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def conditions(conds: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conds}


def gateway_conditions(gw: KubeGateway) -> dict[str, tuple[str, str]]:
    obj = gw.server.get(GATEWAY, "default", GW_KEY)
    assert obj is not None
    return conditions(obj["status"]["conditions"])


def route_parent(gw: KubeGateway, name: str = ROUTE_KEY) -> dict[str, Any]:
    obj = gw.server.get(ROUTE, "default", name)
    assert obj is not None
    return next(p for p in obj["status"]["parents"] if p["controllerName"] == CONTROLLER_NAME)


async def test_gateway_and_route_status_are_written_to_the_api_server(
    gateway: KubeGateway,
) -> None:
    want = {"Accepted": ("True", "Accepted"), "Programmed": ("True", "Programmed")}
    await eventually(lambda: gateway_conditions(gateway) == want, "Gateway Programmed=True")
    obj = gateway.server.get(GATEWAY, "default", GW_KEY)
    assert obj is not None
    (listener,) = obj["status"]["listeners"]
    assert listener["name"] == "https" and listener["attachedRoutes"] == 1
    assert listener["supportedKinds"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}
    ]
    assert conditions(listener["conditions"])["Programmed"] == ("True", "Programmed")
    assert {c["observedGeneration"] for c in obj["status"]["conditions"]} == {1}
    parent = await eventually(lambda: route_parent(gateway), "the HTTPRoute's parent status")
    assert parent["parentRef"] == {"name": GW_KEY}
    assert conditions(parent["conditions"]) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }
    foreign = gateway.server.get(GATEWAY, "default", "someone-elses")
    assert foreign is not None and "status" not in foreign  # another class: not ours to touch
    ours = gateway.server.get(("gateway.networking.k8s.io", "v1", "gatewayclasses"), "",
                              "inference-gateway-class")  # fmt: skip
    assert ours is not None
    assert conditions(ours["status"]["conditions"]) == {"Accepted": ("True", "Accepted")}
    lease = gateway.server.get(("coordination.k8s.io", "v1", "leases"), "default", "cp-test")
    assert lease is not None and lease["spec"]["holderIdentity"] == "cp-a"


async def test_a_request_is_routed_to_a_simulated_pod(gateway: KubeGateway) -> None:
    hits = await gateway.pods_hit("/v1/chat/completions", None, 6)
    assert sum(v for k, v in hits.items() if k.startswith("llama2-gpu-pool")) == 6, hits


async def test_missing_backend_reports_backend_not_found_then_recovers(
    gateway: KubeGateway,
) -> None:
    assert gateway.api is not None
    path = f"{ROUTE_PATH}/{ROUTE_KEY}"
    route = await gateway.api.get(path)
    original = copy.deepcopy(route["spec"])
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = "no-such-model"
    loop = asyncio.get_running_loop()
    started = loop.time()
    await gateway.api.request("PUT", path, body=route)

    def refs() -> tuple[str, str]:
        return conditions(route_parent(gateway)["conditions"])["ResolvedRefs"]

    await eventually(lambda: refs() == ("False", "BackendNotFound"), "ResolvedRefs=False")
    print(f"HTTPRoute edit -> status in the API server: {1000 * (loop.time() - started):.0f} ms")
    assert "no-such-model" in next(
        c["message"] for c in route_parent(gateway)["conditions"] if c["type"] == "ResolvedRefs"
    )
    assert {c["observedGeneration"] for c in route_parent(gateway)["conditions"]} == {2}
    await gateway.plane.server.wait_synced(timeout=10)  # type: ignore[union-attr]
    async with gateway.client() as client:
        response = await gateway.post(client, "/v1/chat/completions")
    assert 500 <= response.status_code < 600, response.text

    fresh = await gateway.api.get(path)
    fresh["spec"] = original
    await gateway.api.request("PUT", path, body=fresh)
    await eventually(lambda: refs() == ("True", "ResolvedRefs"), "ResolvedRefs=True again")
    await gateway.plane.server.wait_synced(timeout=10)  # type: ignore[union-attr]
    hits = await gateway.pods_hit("/v1/chat/completions", None, 2)
    assert sum(v for k, v in hits.items() if k.startswith("llama2-gpu-pool")) == 2, hits


async def test_an_envoy_nack_turns_programmed_false_in_the_api_server_and_back(
    gateway: KubeGateway,
) -> None:
    assert gateway.api is not None
    await gateway.api.request("POST", ROUTE_PATH, body=copy.deepcopy(RE2_INVALID_ROUTE))
    await eventually(
        lambda: gateway_conditions(gateway)["Programmed"] == ("False", "Invalid"),
        "Programmed=False after Envoy's NACK",
    )
    await gateway.api.request("DELETE", f"{ROUTE_PATH}/bad-regex")
    await eventually(
        lambda: gateway_conditions(gateway)["Programmed"] == ("True", "Programmed"),
        "Programmed=True after the bad route is gone",
    )


async def test_the_controlplane_process_in_kubernetes_mode_writes_status_and_leads(
    tmp_path: Path,
) -> None:
    server = ApiServer()
    await server.start()
    for path in sorted(CANARY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                server.put(doc)
    xds_port, status_port = free_ports(2)
    argv = [sys.executable, "-m", "epp", "controlplane", "--kubernetes", "--api-server"]
    argv += [server.url, "--xds-port", str(xds_port), "--status-port", str(status_port)]
    argv += ["--lease-name", "cp-proc", "--cert-dir", str(tmp_path / "certs")]
    plane = ChildProcess("controlplane", argv, tmp_path / "controlplane.log")
    lease_kind = ("coordination.k8s.io", "v1", "leases")
    try:
        await plane.start()

        def written() -> dict[str, tuple[str, str]] | None:
            obj = server.get(GATEWAY, "default", GW_KEY)
            return conditions(obj["status"]["conditions"]) if obj and "status" in obj else None

        conds = await eventually(written, f"status from the process: {plane.log_tail()}", 20)
        assert conds == {"Accepted": ("True", "Accepted"), "Programmed": ("False", "Pending")}
        lease = server.get(lease_kind, "default", "cp-proc")
        assert lease is not None and lease["spec"]["holderIdentity"]
        async with httpx.AsyncClient(timeout=5) as client:
            status = (await client.get(f"http://127.0.0.1:{status_port}/status")).json()
        assert status["httproutes"][0]["key"] == f"default/{ROUTE_KEY}"
    finally:
        await plane.stop()
        await server.stop()
    assert plane.proc is not None and plane.proc.returncode == 0, plane.log_tail()
    lease = server.get(lease_kind, "default", "cp-proc")
    assert lease is not None and lease["spec"]["holderIdentity"] == ""  # handed back on SIGTERM
