"""Paged KV cache: chained prefix hashes, hits, reference counts and LRU eviction of free blocks."""

from __future__ import annotations

import pytest

from epp.sim.kvcache import KvCache
from tests.sim_hashes import block_hashes


def test_hashes_are_chained_per_full_block_and_salted() -> None:
    a = block_hashes(b"x" * 200, 50, 16, "")
    assert len(a) == 3  # 50 tokens: 3 full blocks of 16
    assert len(set(a)) == 3  # same content, different position: different hash
    b = block_hashes(b"y" + b"x" * 199, 50, 16, "")
    assert not set(a) & set(b)  # a change in block 0 changes every later block
    assert block_hashes(b"x" * 200, 50, 16, "lora") != a


def test_committed_blocks_are_hit_until_evicted_least_recently_freed_first() -> None:
    kv = KvCache(num_blocks=4, block_size=16)
    first = kv.allocate(2)
    assert first == [0, 1]
    kv.commit(0, 100)
    kv.commit(1, 101)
    assert kv.lookup([100, 101, 102]) == [0, 1]
    kv.release(first)
    assert kv.num_free == 4 and kv.usage() == 0.0
    assert kv.lookup([100, 101]) == [0, 1]  # freed but still cached
    assert kv.free_after([0, 1]) == 2
    kv.acquire([0])
    assert kv.usage() == 0.25
    kv.release([0])
    # free order is now 2, 3, 1, 0: block 1 (tail of the released request) goes before block 0
    assert kv.allocate(3) == [2, 3, 1]
    assert kv.lookup([100, 101]) == [0]
    assert kv.allocate(2) is None


def test_shared_blocks_need_every_user_to_release() -> None:
    kv = KvCache(num_blocks=2, block_size=16)
    (b,) = kv.allocate(1) or []
    kv.commit(b, 7)
    kv.acquire(kv.lookup([7]))
    kv.release([b])
    assert kv.num_free == 1
    kv.release([b])
    assert kv.num_free == 2


def test_prefix_caching_off_never_hits() -> None:
    kv = KvCache(num_blocks=2, block_size=16, prefix_caching=False)
    kv.commit(0, 5)
    assert kv.lookup([5]) == []
    with pytest.raises(ValueError):
        KvCache(num_blocks=0, block_size=16)
