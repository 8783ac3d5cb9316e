"""Simulated pods publish vLLM's KV events over real ZMQ sockets: schema, replay, restart, LoRA."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import zmq
import zmq.asyncio

from epp.sim.cluster import SimCluster, SimPodSpec
from epp.sim.spec import KvEventsConfig
from epp.tokenization import Tokenizer
from tests.fixtures.vllm_kv_events import DECODER, BlockStored, KVEventBatch

pytestmark = pytest.mark.integration

MODEL = "tiny"
TOKENIZER = str(Path(__file__).resolve().parents[2] / "epp" / "assets" / "tiny-tokenizer")
EVENTS = KvEventsConfig(True, "zmq", "tcp://*:0", "tcp://*:0", topic="kv@pod-a@tiny")


@pytest.fixture
async def cluster() -> AsyncIterator[SimCluster]:
    spec = SimPodSpec(
        "127.0.0.2", 0, "pod-a", model=MODEL, loras=("sql-lora",), kv_events=EVENTS,
        tokenizer=TOKENIZER, hash_seed="42", num_gpu_blocks=64,
    )  # fmt: skip
    async with SimCluster([spec]) as c:
        yield c


@pytest.fixture
async def sub(cluster: SimCluster) -> AsyncIterator[zmq.asyncio.Socket]:
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    publisher = cluster.pods[0].publisher
    assert publisher is not None
    sock.connect(publisher.endpoint)
    sock.subscribe(b"kv@")
    await asyncio.sleep(0.2)  # a SUB socket misses what is sent before it joined
    yield sock
    sock.close()


async def ask(address: str, content: str, model: str = MODEL) -> None:
    body = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": content}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{address}/v1/chat/completions", json=body) as r,
    ):
        assert r.status == 200, await r.text()


async def next_batch(sock: zmq.asyncio.Socket) -> tuple[bytes, int, KVEventBatch]:
    topic, seq, payload = await asyncio.wait_for(sock.recv_multipart(), 5)
    return topic, int.from_bytes(seq, "big"), DECODER.decode(payload)


async def test_events_decode_with_vllms_schema(
    cluster: SimCluster, sub: zmq.asyncio.Socket
) -> None:
    pod = cluster.pods[0]
    text = "explain the prefix cache " * 30
    await ask(pod.address, text)
    topic, seq, batch = await next_batch(sub)
    assert topic == b"kv@pod-a@tiny" and seq == 0 and batch.data_parallel_rank == 0
    (event,) = batch.events
    assert isinstance(event, BlockStored)
    ids = Tokenizer.from_dir(TOKENIZER).prompt_ids(
        {"messages": [{"role": "user", "content": text}]}
    )
    assert ids is not None
    full = len(ids) // 16
    assert event.block_hashes == pod.hasher.hashes(ids)[:full]
    assert event.parent_block_hash is None and event.block_size == 16
    assert event.token_ids == list(ids[: full * 16])
    assert (event.medium, event.lora_id, event.lora_name, event.extra_keys) == (
        "GPU",
        None,
        None,
        None,
    )


async def test_lora_blocks_hash_apart(cluster: SimCluster, sub: zmq.asyncio.Socket) -> None:
    pod = cluster.pods[0]
    text = "the same words for base and adapter " * 20
    await ask(pod.address, text)
    await ask(pod.address, text, model="sql-lora")
    _, _, base = await next_batch(sub)
    _, _, lora = await next_batch(sub)
    b, lo = base.events[0], lora.events[0]
    assert isinstance(b, BlockStored) and isinstance(lo, BlockStored)
    assert b.token_ids == lo.token_ids
    assert not set(b.block_hashes) & set(lo.block_hashes)
    assert (lo.lora_id, lo.lora_name) == (1, "sql-lora")
    assert lo.extra_keys == [("sql-lora",)] * len(lo.block_hashes)


async def test_replay_resends_from_a_sequence_number(
    cluster: SimCluster, sub: zmq.asyncio.Socket
) -> None:
    pod = cluster.pods[0]
    for i in range(3):
        await ask(pod.address, f"question number {i} " * 30)
    live = [await next_batch(sub) for _ in range(3)]
    assert [seq for _, seq, _ in live] == [0, 1, 2]
    # a DEALER, not vLLM example's REQ: a REQ socket takes one reply per request
    req = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    req.setsockopt(zmq.LINGER, 0)
    assert pod.publisher is not None and pod.publisher.replay_endpoint
    req.connect(pod.publisher.replay_endpoint)
    await req.send_multipart((b"", (1).to_bytes(8, "big")))
    replayed = []
    while True:
        _, seq_bytes, payload = await asyncio.wait_for(req.recv_multipart(), 5)
        if int.from_bytes(seq_bytes, "big", signed=True) == -1:
            assert payload == b""
            break
        replayed.append((int.from_bytes(seq_bytes, "big"), DECODER.decode(payload)))
    req.close()
    assert [s for s, _ in replayed] == [1, 2]
    assert [b.events for _, b in replayed] == [b.events for _, _, b in live[1:]]


async def test_restart_empties_the_cache_and_restarts_the_sequence(
    cluster: SimCluster, sub: zmq.asyncio.Socket
) -> None:
    pod = cluster.pods[0]
    await ask(pod.address, "before the restart " * 30)
    await ask(pod.address, "before the restart, again " * 30)
    assert [(await next_batch(sub))[1] for _ in range(2)] == [0, 1]
    pod.restart()
    assert not pod.engine.kv._cached
    await ask(pod.address, "after the restart " * 30)
    _, seq, batch = await next_batch(sub)
    assert seq == 0 and isinstance(batch.events[0], BlockStored)


async def test_without_the_flag_no_socket_is_opened() -> None:
    spec = dataclasses.replace(
        SimPodSpec("127.0.0.2", 0, "quiet"),
        kv_events=KvEventsConfig(enable_kv_cache_events=False),
    )
    async with SimCluster([spec]) as c:
        assert c.pods[0].publisher is None and c.pods[0].engine.kv.events is None
