"""The simulator hashes blocks as vLLM does; its KV events agree with its cache block for block."""

from __future__ import annotations

import hashlib
import pickle
import random

import cbor2
import msgpack
import pytest
import xxhash

from epp.sim.blockhash import BlockHasher, cbor
from epp.sim.driver import ManualDriver
from epp.sim.engine import Engine, EngineConfig, Seq
from epp.sim.profiles import get_profile
from epp.sim.spec import KvEventsConfig
from tests.fixtures.vllm_kv_events import DECODER, BlockRemoved, BlockStored


def vllm_hash(algo: str, value: object) -> bytes:
    """vLLM's four hash functions (`vllm/utils/hashing.py`), written out with the libraries."""
    if algo == "sha256":
        return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()
    if algo == "sha256_cbor":
        return hashlib.sha256(cbor2.dumps(value, canonical=True)).digest()
    if algo == "xxhash":
        return xxhash.xxh3_128_digest(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return xxhash.xxh3_128_digest(cbor2.dumps(value, canonical=True))


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"])
@pytest.mark.parametrize("lora", [None, "sql-lora"])
def test_block_hashes_chain_as_vllm(algo: str, lora: str | None) -> None:
    tokens = [random.Random(1).randrange(100_000) for _ in range(50)]
    hasher = BlockHasher(16, algo, seed="1234")
    none_hash = vllm_hash(algo, "1234")  # init_none_hash with PYTHONHASHSEED=1234
    extra = (lora,) if lora else None
    parent, expected = none_hash, []
    for start in (0, 16, 32):  # 50 tokens: three full blocks, the partial one is not hashed
        parent = vllm_hash(algo, (parent, tuple(tokens[start : start + 16]), extra))
        expected.append(parent)
    assert hasher.digests(tokens, lora) == expected
    assert hasher.hashes(tokens, lora) == [int.from_bytes(d[-8:], "big") for d in expected]


def test_cbor_is_canonical_cbor() -> None:
    for value in [
        (b"\x01" * 32, tuple(range(0, 70_000, 997)), None),
        (b"", (0, 23, 24, 255, 256, 65_535, 65_536, 2**32, 2**40), ("lora",)),
        ("1234", -1, -25, [True, False]),
    ]:
        assert cbor(value) == cbor2.dumps(value, canonical=True)


def test_unseeded_hashes_are_random_and_bad_algos_refused() -> None:
    assert BlockHasher(4).hashes([1, 2, 3, 4]) != BlockHasher(4).hashes([1, 2, 3, 4])
    with pytest.raises(ValueError, match="hash algo"):
        BlockHasher(4, "md5")


def _replay(events: list[dict[str, object]], state: set[int]) -> int:
    """Apply decoded events to `state`; the number of blocks removed."""
    gone = 0
    for raw in events:
        batch = DECODER.decode(msgpack.packb([0.0, [raw], 0]))
        event = batch.events[0]
        if isinstance(event, BlockStored):
            assert len(event.token_ids) == len(event.block_hashes) * event.block_size
            state.update(int(h) for h in event.block_hashes)
        elif isinstance(event, BlockRemoved):
            state.difference_update(int(h) for h in event.block_hashes)
            gone += len(event.block_hashes)
        else:
            state.clear()
    return gone


def test_events_agree_with_the_cache_under_eviction() -> None:
    """Shared prefixes over a cache that holds a fraction of them: after every step, the set
    of hashes the events describe is exactly the set the cache can hit."""
    engine = Engine(EngineConfig(profile=get_profile("H100"), num_gpu_blocks=120, block_size=16))
    engine.kv.events = []
    driver = ManualDriver(engine)
    hasher = BlockHasher(16, "sha256", "0")
    rng = random.Random(3)
    prefixes = [[rng.randrange(5000) for _ in range(256)] for _ in range(8)]
    for i in range(80):
        ids = [*prefixes[rng.randrange(8)], *(rng.randrange(5000) for _ in range(40))]
        adapter = "a" if i % 5 == 0 else None
        hashes = hasher.hashes(ids, adapter)
        seq = Seq(
            f"{i}", len(ids), 4, hashes, adapter, token_ids=ids, lora_id=1 if adapter else None
        )
        driver.submit_at(i * 0.01, seq)
    state: set[int] = set()
    evicted = 0
    for _ in range(100_000):
        if not (engine.waiting or engine.running or driver._arrivals):
            break
        driver.run(until=driver.now + 0.005)
        evicted += _replay(engine.kv.events, state)
        engine.kv.events = []
        assert state == set(engine.kv._cached)
    assert evicted > 50 and len(state) > 50
    engine.kv.reset_prefix_cache()
    _replay(engine.kv.events, state)
    assert state == set() == set(engine.kv._cached)


def test_kv_events_config_is_vllms_json() -> None:
    cfg = KvEventsConfig.parse(
        '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557",'
        ' "replay_endpoint": "tcp://*:5558", "topic": "kv@pod@model"}'
    )
    assert cfg.active and cfg.replay_endpoint == "tcp://*:5558" and cfg.buffer_steps == 10_000
    assert KvEventsConfig.parse('{"enable_kv_cache_events": true}').active
    assert not KvEventsConfig.parse('{"enable_kv_cache_events": false}').active
    for bad in ('{"enable_kv_cache_events": 1}', '{"endpont": "x"}', "[]", "{", '{"hwm": true}'):
        with pytest.raises(ValueError, match="kv-events-config"):
            KvEventsConfig.parse(bad)
