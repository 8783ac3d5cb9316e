"""File mode reads DRA too: a manifests folder with pods, claims, slices and taint rules gives
each pod its capacity prior and taint health, and an edit to the folder is followed live.
`epp up`'s pods carry their pool template's claims."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from epp.api.load import load_paths
from epp.datastore import Datastore
from epp.hardware import HEALTH_DRAIN, HEALTH_OK
from epp.local.pods import plan_pods
from epp.sources.files import FolderSource
from tests.kube.dra_objects import claim_v1, claiming_pod, gpu, slice_v1, taint_rule
from tests.kube.objects import seed_model, seed_pool

pytestmark = pytest.mark.integration

POOL = "default/llama2-pool"


def write(path: Path, docs: list[dict[str, Any]]) -> None:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def cluster(folder: Path, rules: list[dict[str, Any]] | None = None) -> None:
    mig = [gpu("gpu-1-mig-0", profile="1g.5gb")]
    write(folder / "pool.yaml", [seed_pool(), seed_model("llama2-7b-chat")])
    write(
        folder / "pods.yaml",
        [claiming_pod("vllm-0", "127.0.0.2", "claim-0"),
         claiming_pod("vllm-1", "127.0.0.3", "claim-1", new_style=False)],
    )  # fmt: skip
    write(
        folder / "dra.yaml",
        [slice_v1("gpu-node-1", [gpu("gpu-0"), *mig]),
         claim_v1("claim-0", ["gpu-0"]), claim_v1("claim-1", ["gpu-1-mig-0"]), *(rules or [])],
    )  # fmt: skip


async def test_a_folder_gives_capacity_and_follows_a_taint_live(tmp_path: Path) -> None:
    cluster(tmp_path)
    source = FolderSource([tmp_path], 0.05)
    first = source.current()
    pods = {p.name: p for p in first.pods}
    assert pods["vllm-0"].capacity == pytest.approx(1.0)
    assert pods["vllm-1"].capacity == pytest.approx(1 / 7)
    assert {p.device_health for p in first.pods} == {HEALTH_OK}
    store = Datastore()
    store.apply_resources(first)
    assert len(store.ready(POOL)) == 2

    async def next_set() -> Any:
        async for resources in source.watch():
            return resources
        raise AssertionError("the watch ended")

    waiting = asyncio.create_task(next_set())
    await asyncio.sleep(0.2)
    cluster(tmp_path, [taint_rule("maintenance", "NoSchedule", device="gpu-0")])
    changed = await asyncio.wait_for(waiting, 5)
    assert {p.name: p.device_health for p in changed.pods} == {
        "vllm-0": HEALTH_DRAIN,
        "vllm-1": HEALTH_OK,
    }
    store.apply_resources(changed)
    assert [s.address for s in store.ready(POOL)] == ["127.0.0.3:8000"]


def test_epp_up_pods_carry_their_templates_claims(tmp_path: Path) -> None:
    pool = seed_pool(replicas=2)
    template = pool["spec"]["deployment"]["template"]["spec"]
    template["resourceClaims"] = [{"name": "gpu", "resourceClaimName": "shared-a100"}]
    write(tmp_path / "pool.yaml", [pool])
    write(tmp_path / "dra.yaml", [slice_v1("gpu-node-1", [gpu("gpu-0")]),
                                  claim_v1("shared-a100", ["gpu-0"])])  # fmt: skip
    _, manifests = plan_pods(load_paths([tmp_path]))
    assert [m["spec"]["resourceClaims"] for m in manifests] == [template["resourceClaims"]] * 2
    write(tmp_path / "pods.yaml", manifests)
    # both replicas hold the one shared device: each is half of it
    assert [p.capacity for p in load_paths([tmp_path]).pods] == [0.5, 0.5]
