"""The approximate prefix-cache index: which prompt blocks this EPP routed to which endpoint.

Prompts are cut into fixed blocks of characters; block i's hash chains all blocks before it
(xxHash64 seeded with the previous hash, the first seeded with the model name), so holding
hash i means "was sent a prompt with these i + 1 leading blocks". Each endpoint has an LRU of
hashes sized like its KV cache, and a reverse map finds the holders of a hash in O(1); both are
cut so that no rebuild of one holds the event loop long (`epp.kvcache.shards`, `_Lru`).
Pure data structure, no clock of its own; `prefix_cache.py` owns one and feeds it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import xxhash

from epp.kvcache.shards import SHARD_MASK, SHARDS


def block_hashes(model: str, prompt: bytes, block_chars: int, max_blocks: int) -> list[int]:
    """Chained hashes of the prompt's full blocks (a trailing partial block is not hashed)."""
    count = min(len(prompt) // block_chars, max_blocks)
    if count <= 0:
        return []
    view = memoryview(prompt)
    digest = xxhash.xxh64_intdigest
    h: int = digest(model.encode())
    out = []
    for start in range(0, count * block_chars, block_chars):
        h = digest(view[start : start + block_chars], h)
        out.append(h)
    return out


# A pod's LRU is one OrderedDict (an exact LRU) below twice this many blocks, which covers the
# default capacity and most KV caches; a larger one is a power of two of sets (by a block hash's
# low bits) of this many to twice as many each. An OrderedDict under churn rebuilds now and then
# (`epp.kvcache.shards`): 3 ms at 32k blocks, 6 ms at 64k, 26 ms at 250k (a small model on a
# large GPU). Smaller sets would stall less but cost every pick more: 4 sets of 7.8k for the
# default capacity still stalled 2 ms and made an add of a new prompt a third slower.
LRU_SET_BLOCKS = 32_768

Holders = str | set[str]


class _Lru:
    """One endpoint's blocks, least recently used first, in `len(sets)` sets chosen by a
    block's hash (`h & mask`); each set evicts its own oldest past its share of the capacity.
    One set (a capacity under `2 * LRU_SET_BLOCKS`) is an exact LRU; several are an LRU per
    set, whose occupancies differ a little (about the square root of a set's size), so near
    the eviction horizon a block may go a little before an older one of another set."""

    __slots__ = ("caps", "mask", "sets")

    def __init__(self, capacity: int) -> None:
        count = 1
        while count * 2 * LRU_SET_BLOCKS <= capacity:
            count *= 2
        self.sets: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(count)]
        self.mask = count - 1
        base, extra = divmod(capacity, count)
        self.caps = [base + (i < extra) for i in range(count)]

    def __len__(self) -> int:
        return sum(map(len, self.sets))

    def __contains__(self, h: int) -> bool:
        return h in self.sets[h & self.mask]

    def __iter__(self) -> Iterator[int]:
        for s in self.sets:
            yield from s

    def touch(self, hashes: Iterable[int]) -> list[int]:
        """Make these blocks the most recently used, the last of `hashes` most; returns those
        that were not held (now added, each set possibly past its share)."""
        added: list[int] = []
        sets, mask = self.sets, self.mask
        if not mask:  # one set: no set to choose per block
            lru = sets[0]
            for h in hashes:
                if h in lru:
                    lru.move_to_end(h)
                else:
                    lru[h] = None
                    added.append(h)
            return added
        for h in hashes:
            lru = sets[h & mask]
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                added.append(h)
        return added


class PrefixIndex:
    def __init__(self, default_capacity: int = 31_250) -> None:
        if default_capacity < 1:
            raise ValueError("capacity must be positive")
        self.default_capacity = default_capacity
        self._lru: dict[str, _Lru] = {}
        self._capacity: dict[str, int] = {}
        # one holder is stored as the bare address, several as a set: most blocks have one
        # holder, and a one-element set costs ~200 bytes per indexed block
        self._holders: list[dict[int, Holders]] = [{} for _ in range(SHARDS)]
        self._last_added: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(map(len, self._lru.values()))

    def endpoints(self) -> list[str]:
        return list(self._lru)

    def holds(self, address: str, h: int) -> bool:
        lru = self._lru.get(address)
        return lru is not None and h in lru

    def set_capacity(self, address: str, capacity: int) -> None:
        capacity = max(1, capacity)
        if self._capacity.get(address) == capacity:
            return
        self._capacity[address] = capacity
        old = self._lru.get(address)
        if old is None:
            return
        lru = _Lru(capacity)
        if len(lru.sets) == len(old.sets):
            lru.sets = old.sets
        else:  # another number of sets: each old set's blocks again, oldest first
            for blocks in old.sets:
                lru.touch(blocks)
        self._lru[address] = lru
        self._trim(address, lru)

    def room(self, address: str) -> int:
        """Blocks the endpoint can still take before its cache evicts (as the index counts;
        never negative: every add and capacity change trims to the capacity)."""
        lru = self._lru.get(address)
        return self._capacity.get(address, self.default_capacity) - (len(lru) if lru else 0)

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Blocks held per endpoint, walking from block 0 until no endpoint holds one."""
        counts: dict[str, int] = {}
        shards, mask = self._holders, SHARD_MASK
        # consecutive blocks mostly have the same holders (a shared system prompt): count such
        # a run once per holder instead of once per block and holder (set == set runs in C)
        run_of: str | set[str] | None = None
        run = 0
        for h in hashes:
            holders = shards[h & mask].get(h)
            if holders is None:
                break
            if holders == run_of:
                run += 1
                continue
            if run_of is not None:
                _credit(counts, run_of, run)
            run_of, run = holders, 1
        if run_of is not None:
            _credit(counts, run_of, run)
        return counts

    def add(self, address: str, hashes: Sequence[int], now: float = 0.0) -> None:
        """Record that `address` now holds these blocks (most recently used)."""
        lru = self._lru.get(address)
        if lru is None:
            capacity = self._capacity.get(address, self.default_capacity)
            lru = self._lru[address] = _Lru(capacity)
        # deepest block first, so the shared roots end up most recent and are evicted last
        added = lru.touch(reversed(hashes))
        shards, mask = self._holders, SHARD_MASK
        for h in added:
            holders_of = shards[h & mask]
            holders = holders_of.get(h)
            if holders is None:
                holders_of[h] = address
            elif isinstance(holders, str):
                holders_of[h] = {holders, address}
            else:
                holders.add(address)
        self._last_added[address] = now
        if added:
            self._trim(address, lru)

    def forget(self, address: str) -> None:
        """Drop everything recorded for an endpoint (gone, restarted, or idle too long)."""
        lru = self._lru.pop(address, None)
        self._capacity.pop(address, None)
        self._last_added.pop(address, None)
        for h in lru or ():
            self._unlink(h, address)

    def purge_idle(self, before: float) -> list[str]:
        """Forget endpoints that were last given anything before `before`; returns them."""
        idle = [a for a, t in self._last_added.items() if t < before]
        for address in idle:
            self.forget(address)
        return idle

    def clear(self) -> None:
        self._lru.clear()
        self._capacity.clear()
        for shard in self._holders:
            shard.clear()
        self._last_added.clear()

    def _trim(self, address: str, lru: _Lru) -> None:
        """Each set back to its share of the capacity, its oldest blocks going first."""
        shards, mask = self._holders, SHARD_MASK
        for blocks, cap in zip(lru.sets, lru.caps, strict=True):
            excess = len(blocks) - cap
            if excess <= 0:
                continue
            # `_unlink` inlined: with a full index every pick evicts about as many blocks as
            # it adds, and this loop was the largest single cost left on the decision path
            oldest = blocks.popitem
            for _ in range(excess):
                h = oldest(last=False)[0]
                holders_of = shards[h & mask]
                holders = holders_of.get(h)
                if holders is None:
                    continue
                if isinstance(holders, str):
                    if holders == address:
                        del holders_of[h]
                    continue
                holders.discard(address)
                if len(holders) == 1:
                    holders_of[h] = next(iter(holders))

    def _unlink(self, h: int, address: str) -> None:
        holders_of = self._holders[h & SHARD_MASK]
        holders = holders_of.get(h)
        if holders is None:
            return
        if isinstance(holders, str):
            if holders == address:
                del holders_of[h]
            return
        holders.discard(address)
        if len(holders) == 1:
            holders_of[h] = next(iter(holders))


def _credit(counts: dict[str, int], holders: Holders, blocks: int) -> None:
    if isinstance(holders, str):
        counts[holders] = counts.get(holders, 0) + blocks
    else:
        for address in holders:
            counts[address] = counts.get(address, 0) + blocks
