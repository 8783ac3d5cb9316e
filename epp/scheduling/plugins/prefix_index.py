"""The approximate prefix-cache index: which prompt blocks this EPP routed to which endpoint.

Prompts are cut into fixed blocks of characters; block i's hash chains all blocks before it
(xxHash64 seeded with the previous hash, the first seeded with the model name), so holding
hash i means "was sent a prompt with these i + 1 leading blocks". Each endpoint has an LRU of
hashes sized like its KV cache, and a reverse map finds the holders of a hash in O(1).
Pure data structure, no clock of its own; `prefix_cache.py` owns one and feeds it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import xxhash


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


class PrefixIndex:
    def __init__(self, default_capacity: int = 31_250) -> None:
        if default_capacity < 1:
            raise ValueError("capacity must be positive")
        self.default_capacity = default_capacity
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._capacity: dict[str, int] = {}
        # one holder is stored as the bare address, several as a set: most blocks have one
        # holder, and a one-element set costs ~200 bytes per indexed block
        self._holders: dict[int, str | set[str]] = {}
        self._last_added: dict[str, float] = {}

    def __len__(self) -> int:
        return sum(len(lru) for lru in self._lru.values())

    def endpoints(self) -> list[str]:
        return list(self._lru)

    def set_capacity(self, address: str, capacity: int) -> None:
        self._capacity[address] = max(1, capacity)
        self._trim(address)

    def room(self, address: str) -> int:
        """Blocks the endpoint can still take before its cache evicts (as the index counts;
        never negative: every add and capacity change trims to the capacity)."""
        lru = self._lru.get(address)
        return self._capacity.get(address, self.default_capacity) - (len(lru) if lru else 0)

    def match(self, hashes: Sequence[int]) -> dict[str, int]:
        """Blocks held per endpoint, walking from block 0 until no endpoint holds one."""
        counts: dict[str, int] = {}
        holders_of = self._holders
        # consecutive blocks mostly have the same holders (a shared system prompt): count such
        # a run once per holder instead of once per block and holder (set == set runs in C)
        run_of: str | set[str] | None = None
        run = 0
        for h in hashes:
            holders = holders_of.get(h)
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
            lru = self._lru[address] = OrderedDict()
        holders_of = self._holders
        # deepest block first, so the shared roots end up most recent and are evicted last
        for h in reversed(hashes):
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                holders = holders_of.get(h)
                if holders is None:
                    holders_of[h] = address
                elif isinstance(holders, str):
                    holders_of[h] = {holders, address}
                else:
                    holders.add(address)
        self._last_added[address] = now
        self._trim(address)

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
        self._holders.clear()
        self._last_added.clear()

    def _trim(self, address: str) -> None:
        lru = self._lru.get(address)
        if lru is None:
            return
        excess = len(lru) - self._capacity.get(address, self.default_capacity)
        if excess <= 0:
            return
        # `_unlink` inlined: with a full index every pick evicts about as many blocks as it
        # adds, and this loop was the largest single cost left on the decision path
        holders_of = self._holders
        oldest = lru.popitem
        for _ in range(excess):
            h = oldest(last=False)[0]
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
        holders = self._holders.get(h)
        if holders is None:
            return
        if isinstance(holders, str):
            if holders == address:
                del self._holders[h]
            return
        holders.discard(address)
        if len(holders) == 1:
            self._holders[h] = next(iter(holders))


def _credit(counts: dict[str, int], holders: str | set[str], blocks: int) -> None:
    if isinstance(holders, str):
        counts[holders] = counts.get(holders, 0) + blocks
    else:
        for address in holders:
            counts[address] = counts.get(address, 0) + blocks
