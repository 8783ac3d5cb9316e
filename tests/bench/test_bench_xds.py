"""Config push latency: a resource change in the control plane → Envoy's ACK, for 1/10/100 routes.

An in-process control plane serves a real Envoy over ADS, state of the world (`GRPC`) and then
delta (`DELTA_GRPC`), each with a fresh plane and Envoy, printed side by side. For each size N
(N HTTPRoutes, each to its own InferencePool, on one HTTP listener), it measures two kinds of
change, several times: a route edit (a path changes: RDS only) and a new route with a new pool
(CDS, then LDS/RDS after the clusters' ACK). The time runs from `ControlPlane.apply` (translate
included) until every type Envoy subscribes to is ACKed. In file mode the manifest poll
(2 x --interval) comes on top. Run: `.venv/bin/pytest -m bench -s tests/bench/test_bench_xds.py`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from epp.api.load import load_paths
from epp.api.model import ResourceSet
from epp.controlplane.clusters import TranslateOptions
from epp.controlplane.plane import ControlPlane
from epp.controlplane.xds import start_server
from epp.local.envoy import envoy_binary, render_xds_bootstrap
from epp.local.processes import ChildProcess
from tests.ports import free_ports

pytestmark = pytest.mark.bench

SIZES = (1, 10, 100)
REPEATS = 5
ApiType = Literal["GRPC", "DELTA_GRPC"]
Row = tuple[int, float, float, float, float]  # routes, edit p50/max, add p50/max (ms)


def _docs(n: int, version: int) -> list[dict[str, Any]]:
    (port,) = free_ports(1)
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "gw"},
            "spec": {
                "gatewayClassName": "epp",
                "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}],
            },
        }
    ]
    for i in range(n):
        docs.append(
            {
                "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
                "kind": "InferencePool",
                "metadata": {"name": f"pool-{i}"},
                "spec": {
                    "selector": {"app": f"pool-{i}"},
                    "targetPortNumber": 8000,
                    "extensionRef": {"name": f"epp-{i}"},
                },
            }
        )
        path = f"/r{i}/v{version}" if i == 0 else f"/r{i}"
        docs.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": f"route-{i}"},
                "spec": {
                    "parentRefs": [{"name": "gw"}],
                    "rules": [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": path}}],
                            "backendRefs": [
                                {
                                    "group": "inference.networking.x-k8s.io",
                                    "kind": "InferencePool",
                                    "name": f"pool-{i}",
                                }
                            ],
                        }
                    ],
                },
            }
        )
    return docs


def _resources(folder: Path, docs: list[dict[str, Any]]) -> ResourceSet:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "all.yaml").write_text(yaml.safe_dump_all(docs))
    return load_paths([folder])


async def _push(plane: ControlPlane, resources: ResourceSet) -> float:
    started = time.perf_counter()
    assert plane.apply(resources)
    await plane.server.wait_synced(timeout=30)
    assert plane.server.acked_everywhere(), plane.debug()["nacks"]
    return (time.perf_counter() - started) * 1000


async def _start_envoy(run_dir: Path, xds_port: int, api_type: ApiType) -> ChildProcess:
    (admin_port,) = free_ports(1)
    name = f"bench-envoy-{api_type.lower()}"
    path = run_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(render_xds_bootstrap(admin_port, xds_port, api_type=api_type)))
    argv = [envoy_binary(), "-c", str(path), "--log-level", "warning", "--concurrency", "1"]
    argv += ["--disable-hot-restart", "--base-id-path", str(run_dir / f"{name}.base-id")]
    envoy = ChildProcess(name, argv, run_dir / f"{name}.log")
    await envoy.start()
    return envoy


async def _measure(tmp_path: Path, api_type: ApiType) -> list[Row]:
    options = TranslateOptions(default_epp="127.0.0.1:9", listen_host="127.0.0.1")
    plane = ControlPlane(options)
    grpc_server, xds_port = await start_server(plane.server, "127.0.0.1", 0)
    envoy = await _start_envoy(tmp_path, xds_port, api_type)
    rows = []
    try:
        await plane.server.wait_synced(timeout=30)
        protocols = {s.protocol for s in plane.server.streams.values()}
        assert protocols == {"delta" if api_type == "DELTA_GRPC" else "sotw"}, protocols
        for n in SIZES:
            base = _docs(n, 0)
            gateway = base[0]
            folder = tmp_path / api_type
            await _push(plane, _resources(folder / f"n{n}", base))
            edits, additions = [], []
            for k in range(1, REPEATS + 1):
                docs = [gateway, *_docs(n, k)[1:]]
                edits.append(await _push(plane, _resources(folder / f"n{n}-e{k}", docs)))
                grown = [gateway, *_docs(n + 1, k)[1:]]
                additions.append(await _push(plane, _resources(folder / f"n{n}-a{k}", grown)))
            rows.append(
                (
                    n,
                    statistics.median(edits),
                    max(edits),
                    statistics.median(additions),
                    max(additions),
                )
            )
    finally:
        await envoy.stop()
        await grpc_server.stop(0.5)
    return rows


async def test_config_push_latency(tmp_path: Path) -> None:
    sotw = await _measure(tmp_path, "GRPC")
    delta = await _measure(tmp_path, "DELTA_GRPC")
    print("\nconfig push latency, change → Envoy ACK (ms), real Envoy 1.40, one listener")
    print(f"{'':>7} {'--- state of the world (GRPC) ---':>39}   {'--- delta (DELTA_GRPC) ---':>39}")
    head = f"{'edit p50':>9} {'edit max':>9} {'add p50':>9} {'add max':>9}"
    print(f"{'routes':>7} {head}   {head}")
    for (n, *s_ms), (_n, *d_ms) in zip(sotw, delta, strict=True):
        left = " ".join(f"{v:>9.1f}" for v in s_ms)
        right = " ".join(f"{v:>9.1f}" for v in d_ms)
        print(f"{n:>7} {left}   {right}")
    for rows in (sotw, delta):
        assert [r[0] for r in rows] == list(SIZES) and all(r[1] > 0 for r in rows)
