"""Block keys by prefix chain: the keys of hashing whole prompts, a shared prefix hashed once."""

from __future__ import annotations

import itertools

import pytest

from epp.kvcache.chain import CHUNK_BLOCKS, RELEASE_STEP, SEEN_BITS, PrefixChain
from epp.kvcache.hashing import ALGOS, BlockHasher


@pytest.mark.parametrize("algo", sorted(ALGOS))
@pytest.mark.parametrize("lora", [None, "sql"])
def test_the_walk_yields_what_hashing_the_whole_prompt_gives(algo: str, lora: str | None) -> None:
    hasher = BlockHasher(16, algo, "7")
    chain = PrefixChain(hasher)
    ids = list(range(3000, 3000 + 16 * 9 + 5))
    assert list(chain.walk(ids, lora)) == hasher.hashes(ids, lora)
    assert list(chain.walk(ids, lora)) == hasher.hashes(ids, lora)  # now from the chain
    assert list(chain.walk(ids, lora, limit=3)) == hasher.hashes(ids, lora, limit=3)
    assert chain.blocks(ids) == 9 and chain.blocks(ids, 3) == 3


def test_a_shared_prefix_is_stored_at_its_second_sight_and_loras_stay_apart() -> None:
    chain = PrefixChain(BlockHasher(16))
    system = list(range(64))  # 4 blocks
    list(chain.walk((*system, *range(100, 132))))
    assert chain.hashed == 6 and len(chain) == 0  # first sights: hashed, nothing stored
    list(chain.walk((*system, *range(200, 232))))
    assert chain.hashed == 12 and len(chain) == 4  # the system prompt seen again: stored
    list(chain.walk((*system, *range(300, 332))))
    assert chain.hashed == 14  # only the two blocks of the new question
    base = list(chain.walk(system))
    lora = list(chain.walk(system, "sql"))
    assert chain.hashed == 18 and not set(base) & set(lora)


def test_one_off_blocks_are_not_stored_and_a_full_filter_starts_over() -> None:
    chain = PrefixChain(BlockHasher(1))
    for n in range(SEEN_BITS // 8):  # one-off blocks: a mark each, no entry
        list(chain.walk([n]))
    assert len(chain) <= SEEN_BITS // 64  # false hits (a shared bit): an eighth at most
    list(chain.walk([SEEN_BITS]))  # one mark over an eighth: the filter is cleared
    list(chain.walk([0]))
    list(chain.walk([0]))
    stored = len(chain)
    list(chain.walk([0]))
    hashed = chain.hashed
    assert list(chain.walk([0])) == chain.hasher.hashes([0]) and chain.hashed == hashed
    assert len(chain) == stored


def test_a_walk_read_partly_hashes_only_what_was_read() -> None:
    chain = PrefixChain(BlockHasher(16))
    keys = list(itertools.islice(chain.walk(list(range(16 * 50))), 2))
    assert len(keys) == 2 and chain.hashed == 2


def test_two_generations_bound_the_memory_and_keep_what_is_used() -> None:
    hasher = BlockHasher(4)
    chain = PrefixChain(hasher, capacity=8)
    hot = [1, 2, 3, 4]
    for n in range(40):
        list(chain.walk(hot))  # used all along: found in the young or the old generation
        list(chain.walk([n, n, n, n, 9, 9, 9, 9]))
        assert len(chain) <= 16
    assert list(chain.walk(hot)) == hasher.hashes(hot)
    before = chain.hashed
    list(chain.walk(hot))
    assert chain.hashed == before


def test_a_dropped_generation_is_freed_a_few_entries_at_each_store() -> None:
    """A swap does not free the old generation at once (32k blocks held the loop for ~11 ms):
    each later store frees RELEASE_STEP of it, and it is gone before the next swap."""
    capacity = 8 * RELEASE_STEP
    hasher = BlockHasher(1)
    chain = PrefixChain(hasher, capacity=capacity)
    fresh = itertools.count()
    seen = []
    swaps = 0
    for _ in range(4 * capacity):  # one new block a walk, seen twice: one store each
        ids = [next(fresh)]
        assert list(chain.walk(ids)) == hasher.hashes(ids)  # its first sight: no store
        before = chain.releasing
        assert list(chain.walk(ids)) == hasher.hashes(ids)
        if chain.releasing > before:  # a swap: the previous dropped one was gone by then
            assert before == 0
            swaps += 1
        elif before:  # freed a step at a time, never all at once
            assert chain.releasing == before - min(RELEASE_STEP, before)
        seen.append(chain.releasing)
        assert len(chain) + chain.releasing <= 3 * capacity
    assert swaps == 3 and max(seen) == capacity - RELEASE_STEP
    hashed = chain.hashed
    assert list(chain.walk(ids)) == hasher.hashes(ids) and chain.hashed == hashed


def test_a_block_with_an_id_that_is_not_an_int_ends_the_walk() -> None:
    chain = PrefixChain(BlockHasher(4))
    assert len(list(chain.walk([1, 2, 3, 4, 5, "x", 7, 8]))) == 1  # type: ignore[list-item]
    assert list(chain.walk([1.5, 2, 3, 4])) == []  # type: ignore[list-item]
    with pytest.raises(ValueError, match="capacity"):
        PrefixChain(BlockHasher(4), capacity=0)


@pytest.mark.parametrize("lora", [None, "sql"])
def test_a_known_run_of_blocks_is_found_whole_and_gives_the_same_keys(lora: str | None) -> None:
    hasher = BlockHasher(4)
    chain = PrefixChain(hasher)
    system = list(range(4 * CHUNK_BLOCKS * 2 + 6))  # two whole runs and one more block
    assert chain.keys(system, lora) == hasher.hashes(system, lora)  # first sight
    assert chain.hashed == 2 * CHUNK_BLOCKS + 1 and len(chain) == 0
    chain.hashed = 0
    assert chain.keys(system, lora) == hasher.hashes(system, lora)  # stored, runs too
    assert chain.hashed == 2 * CHUNK_BLOCKS + 1
    chain._new.clear()  # the blocks forgotten: the runs alone give their keys
    chain._old.clear()
    assert chain.keys(system, lora) == list(chain.walk(system, lora)) == hasher.hashes(system, lora)
    assert chain.hashed == 2 * CHUNK_BLOCKS + 2  # the block past the runs, hashed once again
    # a prompt that shares the first run and leaves the second inside it
    other = [*system[: 4 * (CHUNK_BLOCKS + 3)], 999, 998, 997, 996]
    assert chain.keys(other, lora) == hasher.hashes(other, lora)
    assert chain.hashed == 2 * CHUNK_BLOCKS + 2 + 4  # 3 blocks forgotten above, and its own
    assert chain.keys(system, limit=CHUNK_BLOCKS + 1) == hasher.hashes(
        system, limit=CHUNK_BLOCKS + 1
    )
    assert chain.keys(system, "other")[0] != chain.keys(system)[0]


def test_last_is_where_a_reader_stopped_inside_a_known_run() -> None:
    hasher = BlockHasher(4)
    chain = PrefixChain(hasher)
    ids = list(range(4 * CHUNK_BLOCKS))
    keys = chain.keys(ids)  # now a known run
    assert chain.last == keys[-1]
    read = list(itertools.islice(chain.walk(ids), 3))
    assert read == keys[:3] and chain.last == keys[2]
