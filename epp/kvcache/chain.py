"""A prompt's block keys, remembered by prefix chain: a shared prefix is hashed once.

vLLM chains its block hashes: block i's depends only on block i-1's, block i's token ids and the
LoRA adapter. `PrefixChain.walk` yields a prompt's 64-bit block keys one at a time and looks
each (parent key, block tokens) up before hashing, so a new question after a cached system
prompt hashes only its own blocks, and a caller that stops early (`KvBlockIndex.match` stops at
the first block no pod holds) hashes nothing past that. Token ids are checked as blocks are
hashed: a block with an id that is not an int ends the walk. `last` is the key a walk yielded
last: where a caller stopped reading. Memory is bounded by two
generations of at most `capacity` blocks each (a full one becomes the old one; a hit in the old
one moves back), which costs no bookkeeping per hit. Used by `precise-prefix-cache-scorer`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from epp.kvcache.hashing import BlockHasher

CHAIN_BLOCKS = 1 << 15  # per generation: 512k tokens of 16-token blocks, about 16 MiB

# (parent block's key, or the LoRA name for the first block; the block's token ids)
_Key = tuple[int | str | None, tuple[int, ...]]
_Entry = tuple[int, bytes]  # (the block's key, its full digest: the next block's parent)


class PrefixChain:
    def __init__(self, hasher: BlockHasher, capacity: int = CHAIN_BLOCKS) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.hasher = hasher
        self.capacity = capacity
        self._new: dict[_Key, _Entry] = {}
        self._old: dict[_Key, _Entry] = {}
        self.hashed = 0  # blocks hashed (the others were found in the chain)
        self.last: int | None = None  # the key the latest walk yielded last

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    def blocks(self, ids: Sequence[int], limit: int = 1 << 30) -> int:
        """How many full blocks of `ids` a walk covers."""
        return min(len(ids) // self.hasher.block_size, limit)

    def walk(
        self, ids: Sequence[int], lora: str | None = None, limit: int = 1 << 30
    ) -> Iterator[int]:
        """The keys of the full blocks of `ids` (at most `limit`), as vLLM's events carry them."""
        tokens = ids if isinstance(ids, tuple) else tuple(ids)
        bs = self.hasher.block_size
        new, old = self._new, self._old
        parent: int | str | None = lora or None
        digest = self.hasher.root
        self.last = None
        for start in range(0, self.blocks(tokens, limit) * bs, bs):
            block = tokens[start : start + bs]
            key = (parent, block)
            entry = new.get(key)
            if entry is None:
                entry = old.get(key)
                if entry is None:
                    if not all(type(t) is int for t in block):
                        return
                    digest = self.hasher.step(digest, block, lora)
                    entry = (int.from_bytes(digest[-8:], "big"), digest)
                    self.hashed += 1
                self._put(key, entry)
                new, old = self._new, self._old
            parent, digest = entry
            self.last = parent
            yield parent

    def _put(self, key: _Key, entry: _Entry) -> None:
        new = self._new
        new[key] = entry
        if len(new) >= self.capacity:  # the young generation becomes the old one
            self._old, self._new = new, {}
