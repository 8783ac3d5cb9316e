"""Paged KV cache with automatic prefix caching, as vLLM's block pool does it.

Blocks hold `block_size` tokens. A full prompt block is registered under its chained hash once
computed; when its last user releases it, the block joins the free queue but keeps its hash, so
a later request with the same prefix reuses it until the block is evicted (least recently freed
first). Usage counts cached-but-free blocks as free, like vLLM. Used by `epp.sim.engine`.
With `events` set to a list, every change to what is cached is recorded there as vLLM's KV
event (`epp.sim.kvevents`): the engine adds `BlockStored`, evictions add `BlockRemoved` and a
reset `AllBlocksCleared`, so the events and this cache agree block for block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from epp.sim.kvevents import cleared, removed


class KvCache:
    """Block allocator with reference counts, a hash index and an LRU free queue."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[int, int] = {}
        self.events: list[dict[str, Any]] | None = None  # vLLM's KV events, when published

    @property
    def num_free(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        return 1.0 - len(self._free) / self.num_blocks

    def lookup(self, hashes: Sequence[int]) -> list[int]:
        """Blocks holding the longest cached prefix of `hashes` (not yet acquired)."""
        if not self.prefix_caching:
            return []
        hits: list[int] = []
        cached = self._cached
        for h in hashes:
            block = cached.get(h)
            if block is None:
                break
            hits.append(block)
        return hits

    def free_after(self, hits: Sequence[int]) -> int:
        """Free blocks left once `hits` are acquired (hits sitting in the free queue count)."""
        return len(self._free) - sum(1 for b in hits if self._ref[b] == 0)

    def acquire(self, blocks: Sequence[int]) -> None:
        ref, free = self._ref, self._free
        for b in blocks:
            if ref[b] == 0:
                del free[b]
            ref[b] += 1

    def allocate(self, n: int) -> list[int] | None:
        """`n` fresh blocks, evicting the least recently freed cached ones; None if short."""
        if n > len(self._free):
            return None
        out: list[int] = []
        for _ in range(n):
            b, _none = self._free.popitem(last=False)
            h = self._hash[b]
            if h is not None:
                if self._cached.get(h) == b:
                    del self._cached[h]
                    if self.events is not None:
                        self._removed(h)
                self._hash[b] = None
            self._ref[b] = 1
            out.append(b)
        return out

    def commit(self, block: int, h: int) -> bool:
        """Register a computed full block under its prefix hash (first writer wins); whether
        it was registered."""
        if self.prefix_caching and h not in self._cached:
            self._cached[h] = block
            self._hash[block] = h
            return True
        return False

    def _removed(self, h: int) -> None:
        assert self.events is not None
        last = self.events[-1] if self.events else None
        if last is not None and last["type"] == "BlockRemoved":
            last["block_hashes"].append(h)  # evictions of one allocation travel as one event
        else:
            self.events.append(removed([h]))

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference per block; tail blocks are freed first so they are evicted first."""
        ref, free = self._ref, self._free
        for b in reversed(blocks):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None

    def reset_prefix_cache(self) -> None:
        self._cached.clear()
        self._hash = [None] * self.num_blocks
        if self.events is not None:
            self.events.append(cleared())
