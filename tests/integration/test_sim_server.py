"""The simulator over real loopback sockets: OpenAI API, headers, adapters, admin and faults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from epp.sim.cluster import SimCluster, SimPodSpec

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-2-7b-chat-hf"


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    specs = [
        SimPodSpec("127.0.0.2", 0, "pod-a", loras=("sql-lora",), metrics_delay_s=0.3),
        SimPodSpec("127.0.0.3", 0, "pod-b", speed=4.0, accept_any_model=True),
    ]
    async with SimCluster(specs, gpu_exporter=("127.0.0.1", 0)) as c:
        yield c


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


def chat(model: str = MODEL, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi " * 40}], **extra}


def events(raw: bytes) -> list[bytes]:
    return [e[len(b"data: ") :] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


async def test_addresses_and_pod_lookup(cluster: SimCluster) -> None:
    a, b = cluster.addresses
    assert a.startswith("127.0.0.2:") and b.startswith("127.0.0.3:")
    assert cluster.pod("pod-b") is cluster.pod(b)
    with pytest.raises(KeyError):
        cluster.pod("nope")


async def test_streaming_chat(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    addr = cluster.addresses[0]
    body = chat(max_tokens=7, stream=True, stream_options={"include_usage": True})
    async with http.post(f"http://{addr}/v1/chat/completions", json=body) as r:
        assert r.status == 200
        assert r.headers["x-inference-pod"] == "pod-a"
        assert r.headers["x-inference-pod-address"] == addr
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = await r.read()
    evs = events(raw)
    assert evs[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in evs[:-1]]
    assert all(c["model"] == MODEL for c in chunks)
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([c for c in content if c]) == 7
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["prompt_tokens"] == chunks[-1]["usage"]["total_tokens"] - 7


async def test_completion_reports_cached_tokens(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    url = f"http://{cluster.addresses[0]}/v1/completions"
    body = {"model": MODEL, "prompt": "a shared system prompt " * 20, "max_tokens": 3}
    results = []
    for _ in range(2):
        async with http.post(url, json=body) as r:
            assert r.status == 200
            results.append(await r.json())
    assert results[0]["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert results[1]["usage"]["prompt_tokens_details"]["cached_tokens"] >= 96
    assert results[1]["choices"][0]["text"] == " the quick brown"
    assert results[0]["object"] == "text_completion"


async def test_output_length_is_drawn_deterministically(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    url = f"http://{cluster.addresses[1]}/v1/chat/completions"
    lengths = []
    for _ in range(2):
        async with http.post(url, json=chat()) as r:
            data = await r.json()
            lengths.append(data["usage"]["completion_tokens"])
            assert data["choices"][0]["finish_reason"] == "stop"
    assert lengths[0] == lengths[1] and 32 <= lengths[0] <= 384


async def test_errors_in_openai_format(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    base = f"http://{cluster.addresses[0]}"
    cases = [
        (b"{not json", 400),
        (orjson.dumps({"model": MODEL}), 400),
        (orjson.dumps(chat(max_tokens=0)), 400),
        (orjson.dumps(chat(stream="yes")), 400),
        (orjson.dumps(chat(max_tokens=5000)), 400),
        (orjson.dumps(chat("unknown-model")), 404),
    ]
    for raw, status in cases:
        async with http.post(f"{base}/v1/chat/completions", data=raw) as r:
            assert r.status == status, raw
            assert r.headers["x-inference-pod"] == "pod-a"
            err = (await r.json())["error"]
            assert err["code"] == status and err["message"]


async def test_accept_any_model(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    url = f"http://{cluster.addresses[1]}/v1/chat/completions"
    async with http.post(url, json=chat("llama2-7b-chat", max_tokens=2)) as r:
        assert r.status == 200
        assert (await r.json())["model"] == "llama2-7b-chat"


async def test_adapters(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    base = f"http://{cluster.addresses[0]}"
    async with http.get(f"{base}/v1/models") as r:
        ids = {m["id"]: m for m in (await r.json())["data"]}
    assert ids["sql-lora"]["parent"] == MODEL and ids[MODEL]["parent"] is None
    async with http.post(
        f"{base}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"}
    ) as r:
        assert r.status == 200
    async with http.post(
        f"{base}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"}
    ) as r:
        assert r.status == 400
    async with http.post(f"{base}/v1/chat/completions", json=chat("x", max_tokens=2)) as r:
        assert r.status == 200 and (await r.json())["model"] == "x"
    async with http.post(f"{base}/v1/unload_lora_adapter", json={"lora_name": "x"}) as r:
        assert r.status == 200
    async with http.post(f"{base}/v1/unload_lora_adapter", json={"lora_name": "x"}) as r:
        assert r.status == 404
    async with http.post(f"{base}/v1/chat/completions", json=chat("x")) as r:
        assert r.status == 404


async def test_health_and_metrics(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    base = f"http://{cluster.addresses[0]}"
    async with http.get(f"{base}/health") as r:
        assert r.status == 200 and r.headers["x-inference-pod"] == "pod-a"
    async with http.post(
        f"{base}/sim/config", json={"fake_metrics": {"waiting": 10, "kv_usage": 0.9}}
    ) as r:
        assert r.status == 200
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    assert 'vllm:num_requests_waiting{engine="0",model_name="' + MODEL + '"} 10.0' in text
    assert "vllm:kv_cache_usage_perc" in text and "} 0.9\n" in text
    async with http.post(f"{base}/sim/config", json={"fake_metrics": None}) as r:
        assert (await r.json())["fake_metrics"]["waiting"] is None
    async with http.get(f"{base}/sim/config") as r:
        pages = (await r.json())["metrics_pages"]
    async with http.get(f"{base}/metrics"):
        pass
    async with http.get(f"{base}/sim/config") as r:
        assert (await r.json())["metrics_pages"] == pages + 1  # routers' scrapes are counted


async def test_admin_config_and_faults(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    base = f"http://{cluster.addresses[0]}"
    pod = cluster.pod("pod-a")
    async with http.post(f"{base}/sim/config", json={"speed": 0.2}) as r:
        assert r.status == 200 and (await r.json())["speed"] == 0.2
    assert pod.engine.speed == 0.2
    async with http.post(f"{base}/sim/config", json={"speed": "fast"}) as r:
        assert r.status == 400
    async with http.post(f"{base}/sim/config", json={"faults": {"error_rate": 2}}) as r:
        assert r.status == 400
    async with http.post(f"{base}/sim/config", json={"faults": {"error_rate": 1.0}}) as r:
        assert r.status == 200
    async with http.post(f"{base}/v1/chat/completions", json=chat()) as r:
        assert r.status == 500 and r.headers["x-inference-pod"] == "pod-a"
    pod.set_faults(error_rate=0.0, metrics="garbage")
    async with http.get(f"{base}/metrics") as r:
        assert r.status == 200 and b"not prometheus" in await r.read()
    pod.set_faults(metrics="slow")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with http.get(f"{base}/metrics") as r:
        assert r.status == 200
    assert loop.time() - t0 >= 0.3
    async with http.post(f"{base}/sim/config", json={"faults": {"hang": True}}) as r:
        assert (await r.json())["faults"]["hang"] is True
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(f"{base}/health", timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    async with http.post(f"{base}/sim/config", json={"faults": None, "speed": 1}) as r:
        assert (await r.json())["faults"] == {
            "error_rate": 0.0, "hang": False, "metrics": None, "die_mid_stream": False
        }  # fmt: skip
    async with http.get(f"{base}/health") as r:
        assert r.status == 200


async def test_die_mid_stream(cluster: SimCluster, http: aiohttp.ClientSession) -> None:
    base = f"http://{cluster.addresses[1]}"
    cluster.pod("pod-b").set_faults(die_mid_stream=True)
    got = b""
    with pytest.raises(aiohttp.ClientError):
        async with http.post(
            f"{base}/v1/chat/completions", json=chat(max_tokens=20, stream=True)
        ) as r:
            assert r.status == 200
            async for chunk in r.content.iter_any():
                got += chunk
    assert b"[DONE]" not in got and got.count(b"content") >= 10
    with pytest.raises(aiohttp.ClientError):
        async with http.post(f"{base}/v1/chat/completions", json=chat(max_tokens=4)) as r:
            await r.read()
    cluster.pod("pod-b").set_faults(die_mid_stream=False)
    assert not cluster.pod("pod-b").engine.running


async def test_client_disconnect_aborts_the_request(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    pod = cluster.pod("pod-a")
    url = f"http://{cluster.addresses[0]}/v1/chat/completions"
    async with http.post(url, json=chat(max_tokens=2000, stream=True)) as r:
        await r.content.readline()
        assert len(pod.engine.running) == 1
    for _ in range(100):
        if not pod.engine.running:
            break
        await asyncio.sleep(0.02)
    assert not pod.engine.running and pod.engine.kv.usage() == 0.0
    assert pod.engine.stats.finished["abort"] == 1


async def test_gpu_exporter_reports_busy_pod(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    url = f"http://{cluster.addresses[0]}/v1/chat/completions"
    task = asyncio.ensure_future(http.post(url, json=chat(max_tokens=100)))
    await asyncio.sleep(0.3)
    async with http.get(f"http://{cluster.gpu_exporter_address}/metrics") as r:
        text = await r.text()
    resp = await task
    resp.release()
    util = {
        line.split('pod="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("DCGM_FI_DEV_GPU_UTIL{")
    }
    assert util["pod-b"] == 0
    assert 20 <= util["pod-a"] <= 40  # busy 0.3 s of the last second


async def test_queue_builds_up_and_drains_in_real_time(http: aiohttp.ClientSession) -> None:
    spec = SimPodSpec("127.0.0.4", 0, "small", max_num_seqs=2, num_gpu_blocks=64, speed=2.0)
    async with SimCluster([spec]) as c:
        base = f"http://{c.addresses[0]}"

        async def gauges() -> dict[str, float]:
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
            return {
                line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith(("vllm:num_requests", "vllm:kv_cache_usage_perc"))
            }

        async def call() -> int:
            async with http.post(f"{base}/v1/chat/completions", json=chat(max_tokens=40)) as r:
                return int((await r.json())["usage"]["completion_tokens"])

        tasks = [asyncio.ensure_future(call()) for _ in range(6)]
        await asyncio.sleep(0.05)
        busy = await gauges()
        assert busy["vllm:num_requests_running"] == 2
        assert busy["vllm:num_requests_waiting"] == 4
        assert busy["vllm:kv_cache_usage_perc"] > 0
        assert await asyncio.gather(*tasks) == [40] * 6
        idle = await gauges()
        assert idle == {
            "vllm:num_requests_running": 0.0,
            "vllm:num_requests_waiting": 0.0,
            "vllm:kv_cache_usage_perc": 0.0,
        }


async def timed_chat(http: aiohttp.ClientSession, url: str, tokens: int) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with http.post(url, json=chat(max_tokens=tokens)) as r:
        assert r.status == 200
        await r.read()
    return loop.time() - t0


def dcgm_values(text: str, name: str) -> dict[str, float]:
    return {
        line.split('pod="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


async def test_gpu_throttle_slows_steps_and_shows_on_the_exporter(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    base = f"http://{cluster.addresses[0]}"
    exporter = f"http://{cluster.gpu_exporter_address}/metrics"
    url = f"{base}/v1/chat/completions"
    healthy = await timed_chat(http, url, 60)
    body = {"gpu": {"throttle": "thermal", "clock": 0.5}}
    async with http.post(f"{base}/sim/config", json=body) as r:
        assert r.status == 200
        view = await r.json()
    assert view["gpu"] == {"throttle": "thermal", "clock": 0.5, "xid": None, "temperature": None}
    assert view["effective_speed"] == 0.5
    throttled = await timed_chat(http, url, 60)
    assert 1.6 < throttled / healthy < 2.5  # steps take twice as long
    async with http.get(exporter) as r:
        text = await r.text()
    assert dcgm_values(text, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS")["pod-a"] == 0x20 | 0x40 | 0x8
    assert dcgm_values(text, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS")["pod-b"] == 0x1  # idle
    assert dcgm_values(text, "DCGM_FI_DEV_GPU_TEMP")["pod-a"] >= 87
    assert dcgm_values(text, "DCGM_FI_DEV_SM_CLOCK")["pod-a"] == 990
    assert dcgm_values(text, "DCGM_FI_DEV_THERMAL_VIOLATION")["pod-a"] >= throttled * 1e6
    assert dcgm_values(text, "DCGM_FI_DEV_THERMAL_VIOLATION")["pod-b"] == 0
    async with http.post(f"{base}/sim/config", json={"gpu": None}) as r:
        assert (await r.json())["effective_speed"] == 1.0
    assert await timed_chat(http, url, 60) < 0.75 * throttled
    async with http.get(exporter) as r:
        text = await r.text()
    assert dcgm_values(text, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS")["pod-a"] in (0, 0x1)
    assert dcgm_values(text, "DCGM_FI_DEV_GPU_TEMP")["pod-a"] < 87


async def test_an_xid_error_fails_requests_until_cleared(
    cluster: SimCluster, http: aiohttp.ClientSession
) -> None:
    base = f"http://{cluster.addresses[0]}"
    url = f"{base}/v1/chat/completions"
    in_flight = asyncio.ensure_future(http.post(url, json=chat(max_tokens=2000)))
    stream = await http.post(url, json=chat(max_tokens=2000, stream=True))
    assert stream.status == 200
    await stream.content.readline()
    async with http.post(f"{base}/sim/config", json={"gpu": {"xid": 79}}) as r:
        assert r.status == 200 and (await r.json())["gpu"]["xid"] == 79
    async with await in_flight as r:  # the request the GPU was serving fails too
        assert r.status == 500 and "Xid 79" in (await r.json())["error"]["message"]
    with pytest.raises(aiohttp.ClientPayloadError):  # a stream is cut short
        await stream.read()
    stream.release()
    async with http.post(url, json=chat(max_tokens=5)) as r:
        assert r.status == 500 and r.headers["x-inference-pod"] == "pod-a"
        assert "Xid 79" in (await r.json())["error"]["message"]
    async with http.get(f"http://{cluster.gpu_exporter_address}/metrics") as r:
        assert dcgm_values(await r.text(), "DCGM_FI_DEV_XID_ERRORS") == {"pod-a": 79, "pod-b": 0}
    async with http.post(f"{base}/sim/config", json={"gpu": {"xid": None}}) as r:
        assert r.status == 200
    async with http.post(url, json=chat(max_tokens=5)) as r:
        assert r.status == 200
    async with http.get(f"http://{cluster.gpu_exporter_address}/metrics") as r:
        assert dcgm_values(await r.text(), "DCGM_FI_DEV_XID_ERRORS")["pod-a"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"gpu": {"throttle": "warm"}}, "gpu.throttle must be one of ['power', 'thermal']"),
        ({"gpu": {"clock": 0}}, "gpu.clock must be a number in (0, 1], not 0"),
        ({"gpu": {"xid": "79"}}, "gpu.xid must be a positive integer XID or null, not '79'"),
        ({"gpu": {"fault": "xid"}}, "unknown gpu keys: ['fault']"),
        ({"gpu": [79]}, "gpu must be an object or null"),
    ],
)
async def test_bad_gpu_faults_answer_400_and_change_nothing(
    cluster: SimCluster, http: aiohttp.ClientSession, body: dict[str, object], message: str
) -> None:
    base = f"http://{cluster.addresses[0]}"
    async with http.post(f"{base}/sim/config", json=body) as r:
        assert r.status == 400
        assert message in (await r.json())["error"]["message"]
    async with http.get(f"{base}/sim/config") as r:
        view = await r.json()
    assert view["gpu"]["throttle"] is None and view["gpu"]["xid"] is None
    assert view["effective_speed"] == 1.0
