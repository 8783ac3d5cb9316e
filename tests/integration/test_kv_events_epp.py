"""The EPP follows simulated pods' KV events over real ZMQ sockets and scores with them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from epp.kvcache.hashing import BlockHasher
from epp.kvcache.index import KvBlockIndex
from epp.kvcache.wire import KvEventsSettings
from epp.kvevents.subscriber import KvEventsSubscriber
from epp.scheduling.base import SchedulingRequest
from epp.scheduling.plugins.precise_prefix import PreciseCacheScorer
from epp.server import EppServer, ServeConfig
from epp.settings import ServerSettings, Settings
from epp.sim.cluster import SimCluster, SimPod, SimPodSpec
from epp.sim.spec import KvEventsConfig
from epp.tokenization import Tokenizer
from epp.types import Endpoint, EndpointState
from tests.ports import free_ports

pytestmark = pytest.mark.integration

TOKENIZER = str(Path(__file__).resolve().parents[2] / "epp" / "assets" / "tiny-tokenizer")
SEED = "1234"


@pytest.fixture
def ports() -> tuple[int, int]:
    pub, replay = free_ports(2)
    return pub, replay


@pytest.fixture
async def cluster(ports: tuple[int, int]) -> AsyncIterator[SimCluster]:
    events = KvEventsConfig(True, "zmq", f"tcp://*:{ports[0]}", f"tcp://*:{ports[1]}")
    specs = [
        SimPodSpec(f"127.0.0.{2 + i}", 0, f"pod-{i}", model="tiny", loras=("sql",),
                   kv_events=events, tokenizer=TOKENIZER, hash_seed=SEED, num_gpu_blocks=96)
        for i in range(2)
    ]  # fmt: skip
    async with SimCluster(specs) as c:
        yield c


def endpoints(cluster: SimCluster) -> Callable[[], list[Endpoint]]:
    return lambda: [Endpoint(a, a, "pool") for a in cluster.addresses]


async def until(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def body(text: str, model: str = "tiny") -> dict[str, object]:
    return {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": text}]}


async def ask(address: str, text: str, model: str = "tiny") -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"http://{address}/v1/chat/completions", json=body(text, model)) as r,
    ):
        assert r.status == 200, await r.text()


def agrees(index: KvBlockIndex, cluster: SimCluster) -> bool:
    return all(index.blocks_of(p.address) == len(p.engine.kv._cached) > 0 for p in cluster.pods)


@pytest.fixture
async def following(
    cluster: SimCluster, ports: tuple[int, int]
) -> AsyncIterator[KvEventsSubscriber]:
    settings = KvEventsSettings(port=ports[0], replay_port=ports[1], resync_s=0.05)
    sub = KvEventsSubscriber(KvBlockIndex(), endpoints(cluster), settings)
    task = asyncio.create_task(sub.run())
    await asyncio.sleep(0.3)  # SUB sockets join late: what is published before is missed
    yield sub
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_index_is_what_each_pod_caches(
    cluster: SimCluster, following: KvEventsSubscriber
) -> None:
    for i in range(12):  # 96 blocks a pod: the later prompts evict the earlier ones
        await ask(cluster.addresses[i % 2], f"conversation {i} " * 120)
    await until(lambda: agrees(following.index, cluster), "index == caches")
    stats = following.stats
    assert stats.events > 12 and stats.gaps == 0 and stats.bad == 0


async def test_a_gap_is_filled_from_the_replay_socket(cluster: SimCluster) -> None:
    pod = cluster.pods[0]
    for i in range(4):
        await ask(pod.address, f"words number {i} " * 60)
    assert pod.publisher is not None
    buffered = list(pod.publisher._buffer)
    assert [seq for seq, _ in buffered] == [0, 1, 2, 3]
    settings = cluster_settings(pod)
    # sequence 0, then 3: 1 and 2 were lost on the way and come from the replay socket
    mid = KvEventsSubscriber(KvBlockIndex(), list, settings)
    await mid.receive(pod.address, 0, buffered[0][1])
    await mid.receive(pod.address, 3, buffered[3][1])
    assert (mid.stats.gaps, mid.stats.replayed, mid.stats.dropped_pods) == (1, 2, 0)
    assert mid.index.blocks_of(pod.address) == len(pod.engine.kv._cached)
    # a subscriber that joins late replays the stream from its start
    late = KvEventsSubscriber(KvBlockIndex(), list, settings)
    await late.receive(pod.address, 3, buffered[3][1])
    assert late.stats.replayed == 3
    assert late.index.blocks_of(pod.address) == len(pod.engine.kv._cached)
    # a pod without a replay socket: what was missed is unknown, so nothing is claimed
    blind = KvEventsSubscriber(KvBlockIndex(), list, KvEventsSettings(port=1, replay_port=0))
    await blind.receive(pod.address, 0, buffered[0][1])
    await blind.receive(pod.address, 3, buffered[3][1])
    assert blind.stats.dropped_pods == 1
    assert blind.index.blocks_of(pod.address) < len(pod.engine.kv._cached)


def cluster_settings(pod: SimPod) -> KvEventsSettings:
    assert pod.publisher is not None and pod.publisher.replay_endpoint
    port = int(pod.publisher.endpoint.rsplit(":", 1)[1])
    replay = int(pod.publisher.replay_endpoint.rsplit(":", 1)[1])
    return KvEventsSettings(port=port, replay_port=replay)


async def test_an_engine_restart_clears_that_pod_only(
    cluster: SimCluster, following: KvEventsSubscriber
) -> None:
    a, b = cluster.pods
    await ask(a.address, "kept on a " * 60)
    await ask(b.address, "kept on b " * 60)
    await until(lambda: agrees(following.index, cluster), "both pods indexed")
    before_b = following.index.blocks_of(b.address)
    a.restart()
    await ask(a.address, "after the restart " * 60)
    await until(lambda: following.stats.restarts == 1, "restart seen")
    assert following.index.blocks_of(a.address) == len(a.engine.kv._cached)
    assert following.index.blocks_of(b.address) == before_b


async def test_the_precise_scorer_prefers_the_holder_and_keeps_lora_apart(
    cluster: SimCluster, following: KvEventsSubscriber
) -> None:
    scorer = PreciseCacheScorer(
        Tokenizer.from_dir(TOKENIZER), BlockHasher(16, "sha256", SEED), following.index
    )
    b = cluster.pods[1]
    text = "a long shared system prompt " * 80
    await ask(b.address, text)
    await until(lambda: following.index.blocks_of(b.address) > 0, "b indexed")
    states = [EndpointState(Endpoint(p.address, p.name, "pool")) for p in cluster.pods]
    base = SchedulingRequest("r1", "tiny", payload=body(text))
    score_a, score_b = scorer.score(base, states)
    assert score_a == 0.0 and score_b > 0.9
    lora = SchedulingRequest("r2", "sql", lora_adapter="sql", payload=body(text, "sql"))
    # the adapter's blocks are not the base model's: b holds none of them (and with no prefill
    # queued anywhere, the cold-prompt spread adds the same nothing to both)
    assert scorer.score(lora, states) == [0.0, 0.0]


async def test_the_server_follows_events_for_a_configured_precise_scorer(
    cluster: SimCluster, ports: tuple[int, int]
) -> None:
    config = {
        "apiVersion": "inference.networking.x-k8s.io/v1alpha1",
        "kind": "EndpointPickerConfig",
        "plugins": [
            {
                "type": "precise-prefix-cache-scorer",
                "parameters": {
                    "tokenizer": TOKENIZER,
                    "hashSeed": SEED,
                    "kvEventsPort": ports[0],
                    "kvEventsReplayPort": ports[1],
                },
            },
            {"type": "max-score-picker"},
        ],
        "schedulingProfiles": [
            {
                "name": "gpu-aware",
                "plugins": [
                    {"pluginRef": "precise-prefix-cache-scorer"},
                    {"pluginRef": "max-score-picker"},
                ],
            }
        ],
    }
    settings = Settings(server=ServerSettings("127.0.0.1", 0, 0, 0, drain_seconds=0))
    server = EppServer(
        ServeConfig(settings, endpoints=tuple(cluster.addresses), scheduler_config=config)
    )
    await server.start()
    try:
        (events,) = server.kv_events
        await asyncio.sleep(1.2)  # one resync: the pods are followed
        await ask(cluster.addresses[1], "through the server " * 60)
        await until(lambda: events.index.blocks_of(cluster.addresses[1]) > 0, "indexed")
    finally:
        await server.stop()


async def test_a_pod_annotation_names_where_its_engine_publishes() -> None:
    pub, replay, convention = free_ports(3)
    events = KvEventsConfig(True, "zmq", f"tcp://*:{pub}", f"tcp://*:{replay}")
    spec = SimPodSpec("127.0.0.2", 0, "pod-0", model="tiny", kv_events=events,
                      tokenizer=TOKENIZER, hash_seed=SEED, num_gpu_blocks=96)  # fmt: skip
    async with SimCluster([spec]) as cluster:
        pod = cluster.pods[0]
        annotated = [Endpoint(pod.address, "ns/pod-0", "pool", kv_events=str(pub),
                              kv_events_replay=f"tcp://*:{replay}")]  # fmt: skip
        # the convention's port has no publisher: only the annotation finds the events
        settings = KvEventsSettings(port=convention, resync_s=0.05)
        sub = KvEventsSubscriber(KvBlockIndex(), lambda: annotated, settings)
        task = asyncio.create_task(sub.run())
        try:
            await asyncio.sleep(0.3)
            await ask(pod.address, "published where the annotation says " * 40)
            await until(lambda: agrees(sub.index, cluster), "index == cache")
            assert sub._sockets[pod.address] == (
                f"tcp://127.0.0.2:{pub}",
                f"tcp://127.0.0.2:{replay}",
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
