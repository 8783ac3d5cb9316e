"""The endpoint-picker protocol through a real Envoy: processing modes, chunking, fallbacks,
subset hints, trusted control headers, data-parallel pools, conformance-style steering."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from epp.local.stack import SEED_EXAMPLE, LocalStack
from tests.e2e.conftest import stack_config

pytestmark = pytest.mark.e2e

SUBSET = "x-gateway-destination-endpoint-subset"


def chat(stream: bool = False, model: str = "llama2-7b-chat") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
            "stream": stream}  # fmt: skip


def ext_proc_filter(bootstrap: dict[str, Any]) -> dict[str, Any]:
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters: list[dict[str, Any]] = hcm["typed_config"]["http_filters"]
    return next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")["typed_config"]


def write(folder: Path, name: str, docs: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump_all(docs))
    return folder


def pod(name: str, ip: str, labels: dict[str, str]) -> dict[str, Any]:
    ready = [{"type": "Ready", "status": "True"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "status": {"podIP": ip, "conditions": ready}}  # fmt: skip


def dp_manifests(folder: Path) -> Path:
    pool = {
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "dp-pool"},
        "spec": {"selector": {"matchLabels": {"app": "dp"}},
                 "targetPorts": [{"number": 8000}, {"number": 8001}],
                 "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}},
    }  # fmt: skip
    pods = [pod(f"dp-{i}", f"127.0.0.{70 + i}", {"app": "dp"}) for i in range(3)]
    return write(folder, "dp.yaml", [pool, *pods])


async def served(stack: LocalStack, body: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        return await client.post("/v1/chat/completions", json=body, headers=headers)


async def test_following_the_epp_for_one_two_and_three_named_endpoints(tmp_path: Path) -> None:
    """Conformance GatewayFollowingEPPRouting(+DataParallelism): 100 requests, 10 at a time."""
    config = stack_config(tmp_path / "run", (dp_manifests(tmp_path / "m"),),
                          epp_args=("--trust-control-headers",))  # fmt: skip
    async with LocalStack(config) as stack:
        every = sorted(f"{p.host}:{p.port}" for p in stack.pods)
        assert len(every) == 6
        cases = [every[:1], every[1:3], [every[0], every[3], every[5]], ["127.0.0.71"]]
        for named in cases:
            allowed = (
                set(named)
                if ":" in named[0]
                else {a for a in every if a.startswith(named[0] + ":")}
            )
            sem = asyncio.Semaphore(10)

            async def one(named: list[str] = named, sem: asyncio.Semaphore = sem) -> str:
                async with sem:
                    r = await served(stack, chat(model="any-model"), **{SUBSET: ",".join(named)})
                    assert r.status_code == 200, r.text
                    return r.headers["x-inference-pod-address"]

            landed = await asyncio.gather(*(one() for _ in range(100)))
            assert set(landed) <= allowed, (named, set(landed))
            assert len(set(landed)) == len(allowed)  # every named endpoint was used
        r = await served(stack, chat(model="any-model"), **{SUBSET: "10.1.2.3:8000"})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "service_unavailable"


async def test_untrusted_subset_header_is_ignored_and_removed(tmp_path: Path) -> None:
    config = stack_config(tmp_path / "run", (dp_manifests(tmp_path / "m"),))
    async with LocalStack(config) as stack:
        landed = {
            (await served(stack, chat(model="m"), **{SUBSET: "127.0.0.70:8000"})).headers[
                "x-inference-pod-address"
            ]
            for _ in range(30)
        }
        assert len(landed) > 1  # the client did not steer


async def test_subset_hint_from_proxy_metadata(tmp_path: Path) -> None:
    target = "127.0.0.72:8001"

    def add_hint(hint: list[str]) -> Any:
        def patch(bootstrap: dict[str, Any]) -> None:
            hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            hcm["typed_config"]["http_filters"].insert(0, {
                "name": "envoy.filters.http.set_metadata",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http"
                    ".set_metadata.v3.Config",
                    "metadata": [{"metadata_namespace": "envoy.lb.subset_hint",
                                  "value": {SUBSET: hint}}],
                },
            })  # fmt: skip

        return patch

    config = stack_config(
        tmp_path / "a", (dp_manifests(tmp_path / "m"),), envoy_patch=add_hint([target])
    )
    async with LocalStack(config) as stack:
        for _ in range(20):
            r = await served(stack, chat(model="m"))
            assert r.headers["x-inference-pod-address"] == target
    config = stack_config(tmp_path / "b", (dp_manifests(tmp_path / "m"),), envoy_patch=add_hint([]))
    async with LocalStack(config) as stack:
        assert (await served(stack, chat(model="m"))).status_code == 503


async def test_fallback_endpoint_serves_when_the_primary_is_dead(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    for f in SEED_EXAMPLE.glob("inference.yaml"):
        (folder).mkdir(parents=True, exist_ok=True)
        (folder / f.name).write_text(f.read_text())
    dead = "127.0.0.89"
    write(
        folder,
        "dead.yaml",
        [pod("dead", dead, {"inference.networking.x-k8s.io/pool": "llama2-gpu-pool"})],
    )
    config = stack_config(tmp_path / "run", (folder,), first_pod_ip=86,
                          epp_args=("--trust-control-headers", "--fallback-endpoints", "1",
                                    "--scrape-interval", "3600"))  # fmt: skip
    async with LocalStack(config) as stack:
        live = f"{stack.pods[0].host}:8000"
        primaries = []
        for _ in range(30):
            r = await served(stack, chat(), **{SUBSET: f"{dead}:8000,{live}"})
            assert r.status_code == 200, r.text
            assert r.headers["x-inference-pod-address"] == live
            primaries.append(r.headers["x-inference-endpoint"])
        assert f"{dead}:8000" in primaries  # the dead one was picked first and Envoy fell back
        async with httpx.AsyncClient(timeout=5) as client:
            rows = (
                await client.get(f"http://127.0.0.1:{stack.config.metrics_port}/debug/endpoints")
            ).json()
        assert all(row["in_flight"] == 0 for row in rows["endpoints"])


async def messages_seen(stack: LocalStack) -> dict[str, float]:
    """The ext_proc messages the EPP received so far, by kind."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"http://127.0.0.1:{stack.config.metrics_port}/metrics")).text
    prefix = 'epp_ext_proc_messages_total{kind="'
    return {
        line[len(prefix) :].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


async def test_response_bodies_cross_ext_proc_only_when_the_model_name_is_restored(
    tmp_path: Path,
) -> None:
    config = stack_config(tmp_path, first_pod_ip=103)
    async with LocalStack(config) as stack:
        await asyncio.sleep(0.5)  # the pods' pace counters are scraped once
        before = await messages_seen(stack)
        events = 0
        for stream in (False, True):  # the served name: nothing to restore
            r = await served(stack, {**chat(stream, model="meta-llama/Llama-2-7b-chat-hf"),
                                     "max_tokens": 32})  # fmt: skip
            assert r.status_code == 200, r.text
            events = r.text.count("data: {")  # every event went through
        assert events > 32
        plain = await messages_seen(stack)
        assert plain["response_body"] == before.get("response_body", 0)
        assert plain["response_headers"] - before.get("response_headers", 0) == 2
        r = await served(stack, {**chat(True), "max_tokens": 32})  # the client's name restored
        assert r.text.count('"model":"llama2-7b-chat"') == events
        read = (await messages_seen(stack))["response_body"] - plain["response_body"]
        assert read >= events // 2  # (Envoy may read two events at once)
        url = f"http://127.0.0.1:{stack.config.metrics_port}/debug/endpoints"
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(50):  # the stream's end reaches the EPP just after the last byte
                rows = (await client.get(url)).json()["endpoints"]
                if all(row["in_flight"] == 0 for row in rows):
                    break
                await asyncio.sleep(0.05)
        assert all(row["in_flight"] == 0 for row in rows)
        # each pod's KV size came with its scrape: what its free KV cache takes is known
        assert all(row["kv_room_tokens"] is not None for row in rows)
        assert all(0 < row["kv_room_tokens"] <= 16 * 1_000_000 for row in rows)
        assert all(0.0 <= row["cache_hit"] <= 1.0 for row in rows)


@pytest.mark.parametrize(
    "modes",
    [
        ("BUFFERED", "STREAMED"),
        ("STREAMED", "FULL_DUPLEX_STREAMED"),
        ("FULL_DUPLEX_STREAMED", "FULL_DUPLEX_STREAMED"),  # upstream's reference configuration
    ],
)
async def test_other_processing_modes(tmp_path: Path, modes: tuple[str, str]) -> None:
    def patch(bootstrap: dict[str, Any]) -> None:
        mode = ext_proc_filter(bootstrap)["processing_mode"]
        mode.update(request_body_mode=modes[0], response_body_mode=modes[1])
        if modes[0] == "FULL_DUPLEX_STREAMED":  # Envoy requires it with a full-duplex body
            mode["request_trailer_mode"] = "SEND"

    config = stack_config(tmp_path, envoy_patch=patch, first_pod_ip=95)
    async with LocalStack(config) as stack:
        headers = {"x-model-name": "llama2-7b-chat"}
        for stream in (False, True):
            r = await served(stack, chat(stream), **headers)
            assert r.status_code == 200, r.text
            if stream:
                events = [orjson.loads(line[6:]) for line in r.text.splitlines()
                          if line.startswith("data: {")]  # fmt: skip
                models = {e["model"] for e in events}
            else:
                models = {r.json()["model"]}
            # BUFFERED / FULL_DUPLEX: the body was rewritten to the served name and restored;
            # STREAMED request bodies route before the body is seen, so the pods answer to the
            # client name.
            assert models == {"llama2-7b-chat"}
            assert r.headers["x-inference-endpoint"] == r.headers["x-inference-pod-address"]


async def test_one_mebibyte_prompt_arrives_whole(tmp_path: Path) -> None:
    config = stack_config(tmp_path, first_pod_ip=98, sim_options={"max_model_len": 2_000_000})
    prompt = "lorem ipsum " * (1 << 20 // 12 + 1)
    body = {"model": "llama2-7b-chat", "prompt": prompt, "max_tokens": 2}
    async with LocalStack(config) as stack:
        async with httpx.AsyncClient(timeout=60) as client:
            via = await client.post(f"{stack.url}/v1/completions", json=body)
            assert via.status_code == 200, via.text[:300]
            pod_address = via.headers["x-inference-pod-address"]
            direct = await client.post(
                f"http://{pod_address}/v1/completions",
                json={**body, "model": "meta-llama/Llama-2-7b-chat-hf"},
            )
        assert via.json()["usage"]["prompt_tokens"] == direct.json()["usage"]["prompt_tokens"]
        assert via.json()["model"] == "llama2-7b-chat"
