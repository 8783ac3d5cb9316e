"""The EPP's side of KV events: decoding both vLLM encodings, the index, gaps and restarts."""

from __future__ import annotations

import random

import msgpack
import pytest

from epp.kvcache.hashing import BlockHasher
from epp.kvcache.index import KvBlockIndex
from epp.kvcache.wire import Cleared, KvEventsSettings, Removed, Stored, WireError, decode
from epp.kvevents.subscriber import KvEventsSubscriber
from epp.sim.blockhash import BlockHasher as SimHasher
from epp.sim.kvevents import cleared, removed, stored
from tests.fixtures.vllm_kv_events import (
    LEGACY_ENCODER,
    LegacyAllBlocksCleared,
    LegacyBlockRemoved,
    LegacyBlockStored,
    LegacyKVEventBatch,
)


def batch(*events: object, ts: float = 1.0) -> bytes:
    return msgpack.packb([ts, list(events), 0])


def test_decodes_map_events_as_vllm_026_sends_them() -> None:
    b = decode(
        batch(
            stored([1, 2], None, [7] * 32, 16, 3, "sql"),
            removed([1]),
            cleared(),
            {"type": "SomethingNew", "x": 1},
        )
    )
    assert b.ts == 1.0 and b.rank == 0
    assert b.events == [Stored([1, 2], None, "GPU", "sql", 32), Removed([1], "GPU"), Cleared()]


def test_decodes_positional_events_of_older_vllm() -> None:
    legacy = LegacyKVEventBatch(
        2.0,
        [
            LegacyBlockStored([2**64 - 1], 5, [1] * 16, 16, None, "cpu", None),
            LegacyBlockRemoved([9], None),
            LegacyAllBlocksCleared(),
        ],
        1,
    )
    b = decode(LEGACY_ENCODER.encode(legacy))
    assert b.rank == 1
    assert b.events == [Stored([2**64 - 1], 5, "CPU", None, 16), Removed([9], "GPU"), Cleared()]


def test_bytes_hashes_become_their_low_64_bits() -> None:
    digest = bytes(range(32))
    (event,) = decode(batch({"type": "BlockRemoved", "block_hashes": [digest]})).events
    assert event == Removed([int.from_bytes(digest[-8:], "big")], "GPU")


@pytest.mark.parametrize("payload", [b"\xc1", msgpack.packb({"a": 1}), batch([1, 2])])
def test_garbage_is_a_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode(payload)


def test_the_epp_hashes_blocks_as_the_simulator_does() -> None:
    ids = list(range(1000, 1100))
    for algo in ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor"):
        for lora in (None, "sql"):
            ours = BlockHasher(16, algo, "9").hashes(ids, lora)
            assert ours == SimHasher(16, algo, "9").hashes(ids, lora)
    base, lora_hashes = BlockHasher(16).hashes(ids), BlockHasher(16).hashes(ids, "sql")
    assert not set(base) & set(lora_hashes)  # a LoRA's blocks never match the base model's
    assert BlockHasher(16).hashes(ids, limit=2) == base[:2]


def test_index_counts_leading_blocks_gpu_before_cpu() -> None:
    index = KvBlockIndex(slow_weight=0.5)
    index.store("a", [1, 2, 3])
    index.store("b", [1, 2])
    index.store("b", [3], "CPU")
    index.store("c", [2, 3])  # no block 1: nothing counts
    assert index.match([1, 2, 3, 4]) == {"a": 3.0, "b": 2.5}
    index.remove("a", [2])
    assert index.match([1, 2, 3]) == {"a": 1.0, "b": 2.5}
    index.clear("b")
    assert index.match([1, 2, 3]) == {"a": 1.0}
    assert index.blocks_of("b") == 0 and len(index) == 3  # a: 1, 3; c: 2, 3


def test_index_runs_of_shared_holders() -> None:
    index = KvBlockIndex()
    index.store("a", range(100))
    index.store("b", range(50))
    index.store("c", range(60, 100))
    assert index.match(list(range(120))) == {"a": 100.0, "b": 50.0}
    index.remove("a", [0])
    assert index.match(list(range(120))) == {"b": 50.0}


def test_index_in_shards_agrees_with_a_plain_model_of_who_holds_what() -> None:
    """Random 64-bit hashes land in every shard; stores, removes and clears in both media,
    checked against sets per pod and the block-by-block definition of a match."""
    rng = random.Random(18)
    index = KvBlockIndex(slow_weight=0.5)
    pods, media = ["a", "b", "c"], ["GPU", "CPU"]
    chains = [[rng.getrandbits(64) for _ in range(40)] for _ in range(6)]
    model: dict[tuple[str, str], set[int]] = {(p, m): set() for p in pods for m in media}
    for step in range(3_000):
        pod, medium, chain = rng.choice(pods), rng.choice(media), rng.choice(chains)
        lo = rng.randrange(40)
        part = chain[lo : rng.randrange(lo + 1, 41)]
        op = rng.random()
        if op < 0.55:
            index.store(pod, part, medium)
            model[pod, medium].update(part)
        elif op < 0.97:
            index.remove(pod, part, medium)
            model[pod, medium].difference_update(part)
        else:
            index.clear(pod)
            for m in media:
                model[pod, m].clear()
        if step % 50:
            continue
        for chain in chains:
            expected: dict[str, float] = {}
            alive = set(pods)
            for h in chain:  # leading blocks without a gap, a CPU-only block counting 0.5
                here = {p for p in pods if h in model[p, "GPU"] or h in model[p, "CPU"]}
                alive &= here
                if not alive:
                    break
                for p in alive:
                    expected[p] = expected.get(p, 0.0) + (1.0 if h in model[p, "GPU"] else 0.5)
            assert index.match(chain) == expected
        for p in pods:
            assert index.blocks_of(p) == len(model[p, "GPU"]) + len(model[p, "CPU"])
        distinct = {(h, m) for (_, m), held in model.items() for h in held}
        assert len(index) == len(distinct)


async def test_restart_and_unrecoverable_gap_clear_the_pod() -> None:
    index = KvBlockIndex()
    sub = KvEventsSubscriber(index, list, KvEventsSettings(replay_port=0), clock=lambda: 1.5)
    await sub.receive("p:1", 0, batch(stored([1, 2], None, [0] * 32, 16, None, None)))
    second = batch(stored([3], 2, [0] * 16, 16, None, None))
    await sub.receive("p:1", 1, second)
    assert index.match([1, 2, 3]) == {"p:1": 3.0}
    index.remove("p:1", [3])
    await sub.receive("p:1", 1, second)  # the same batch again: ignored
    assert index.blocks_of("p:1") == 2
    await sub.receive("p:1", 0, batch(stored([5], None, [0] * 16, 16, None, None)))  # restarted
    assert index.match([1]) == {} and index.match([5]) == {"p:1": 1.0}
    assert sub.stats.restarts == 1
    await sub.receive("p:1", 0, batch(stored([7], None, [0] * 16, 16, None, None)))  # again
    assert sub.stats.restarts == 2 and index.match([7]) == {"p:1": 1.0}
    await sub.receive("p:1", 4, batch(stored([6], None, [0] * 16, 16, None, None)))  # lost 1-3
    assert index.match([7]) == {} and index.match([6]) == {"p:1": 1.0}
    assert (sub.stats.gaps, sub.stats.dropped_pods) == (1, 1)
    assert list(sub.stats.latencies)[-1] == pytest.approx(0.5)
    await sub.receive("p:1", 5, b"\xc1")
    assert sub.stats.bad == 1


async def test_the_subscribers_counts_per_pod_on_the_metrics_page() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from epp.kvevents.metrics import KvEventsCollector

    index = KvBlockIndex()
    sub = KvEventsSubscriber(index, list, KvEventsSettings(replay_port=0), clock=lambda: 1.25)
    await sub.receive("p:1", 0, batch(stored([1, 2], None, [0] * 32, 16, None, None)))
    await sub.receive("p:1", 1, batch(removed([2])))
    await sub.receive("p:1", 0, batch(stored([5], None, [0] * 16, 16, None, None)))  # restarted
    await sub.receive("q:1", 3, batch(stored([9], None, [0] * 16, 16, None, None)))  # a gap
    registry = CollectorRegistry()
    registry.register(KvEventsCollector(lambda: [sub]))
    page = generate_latest(registry).decode()
    for line in (
        'epp_kv_events_batches_total{pod="p:1"} 3.0',
        'epp_kv_events_total{pod="p:1"} 3.0',
        'epp_kv_events_restarts_total{pod="p:1"} 1.0',
        'epp_kv_events_restarts_total{pod="q:1"} 0.0',
        'epp_kv_events_gaps_total{pod="q:1"} 1.0',
        'epp_kv_events_dropped_total{pod="q:1"} 1.0',
        'epp_kv_events_lag_seconds{pod="p:1"} 0.25',
        'epp_kv_index_blocks{pod="p:1"} 1.0',
        'epp_kv_events_recent_lag_seconds{quantile="0.99"} 0.25',
    ):
        assert line in page, line
    sub._forget("q:1")  # the pod left: its series go
    assert 'pod="q:1"' not in generate_latest(registry).decode()


def test_publisher_addresses_from_annotations_or_the_port_convention() -> None:
    from epp.kvevents.subscriber import publisher

    assert publisher("", "10.0.0.7:8000", 5557) == "tcp://10.0.0.7:5557"
    assert publisher("", "10.0.0.7:8000", 0) is None  # no replay socket
    assert publisher("6000", "10.0.0.7:8000", 5557) == "tcp://10.0.0.7:6000"
    assert publisher("tcp://*:6000", "10.0.0.7:8000", 5557) == "tcp://10.0.0.7:6000"
    assert publisher("tcp://10.1.1.1:6001", "10.0.0.7:8000", 0) == "tcp://10.1.1.1:6001"
    assert publisher("7000", "[fd00::7]:8000", 0) == "tcp://[fd00::7]:7000"
    for bad in ("tcp://host", "ipc:///tmp/x", "99999", "tcp://*:0x10"):
        with pytest.raises(ValueError, match="is not tcp://HOST:PORT"):
            publisher(bad, "10.0.0.7:8000", 5557)


def test_a_pods_kv_events_annotations_reach_its_endpoints() -> None:
    from epp.api.core import KV_EVENTS_ANNOTATION, KV_EVENTS_REPLAY_ANNOTATION, read_pod
    from epp.api.fields import Findings, Obj
    from epp.api.model import Pool
    from epp.datastore import endpoints_of

    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "vllm-0",
            "labels": {"app": "vllm"},
            "annotations": {
                KV_EVENTS_ANNOTATION: " tcp://*:6000 ",
                KV_EVENTS_REPLAY_ANNOTATION: "6001",
            },
        },
        "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    pod = read_pod(Obj(doc, "pod", Findings()))
    assert (pod.kv_events, pod.kv_events_replay) == ("tcp://*:6000", "6001")
    pool = Pool("default", "p", selector=(("app", "vllm"),), target_ports=(8000,))
    (ep,) = endpoints_of(pool, [pod])
    assert (ep.kv_events, ep.kv_events_replay) == ("tcp://*:6000", "6001")
    plain = read_pod(Obj({**doc, "metadata": {"name": "vllm-1"}}, "pod", Findings()))
    assert (plain.kv_events, plain.kv_events_replay) == ("", "")
