"""A prompt's block keys, remembered by prefix chain: a shared prefix is hashed once.

vLLM chains its block hashes: block i's depends only on block i-1's, block i's token ids and the
LoRA adapter. `PrefixChain.walk` yields a prompt's 64-bit block keys one at a time and looks
each (parent key, block tokens) up before hashing, so a new question after a cached system
prompt hashes only its own blocks, and a caller that stops early (`KvBlockIndex.match` stops at
the first block no pod holds) hashes nothing past that. Runs of `CHUNK_BLOCKS` whole blocks are
remembered as one entry too (the parent key and the run's tokens: its keys and last digest), so
a known prefix costs a lookup per run rather than per block (`keys` adds a run's keys at once):
the per-block lookups were the largest single cost of a precise pick, 17 of ~80 us at 64
endpoints for a 1,089-token prompt. A block is stored at its second sight, not its first: most
blocks of real traffic (questions, documents) are seen once, and storing them filled the
generations with entries nobody looked up again, each later freed; a bit per key in a fixed
filter (`SEEN_BITS`, cleared when an eighth is set) remembers what was hashed once, so a shared
prefix or a conversation's history is hashed twice and then looked up, and a one-off block costs
its hash alone. Token ids are checked as blocks are hashed: a block with an
id that is not an int ends the walk. `last` is the key a walk yielded last: where a caller
stopped reading. Memory is bounded by two generations of at most `capacity` blocks each (a full
one becomes the old one; a hit in the old one moves back), which costs no bookkeeping per hit;
runs likewise, `capacity // CHUNK_BLOCKS` of them. The generation a swap drops is released a
few entries at each later store (`RELEASE_STEP`), not at once: freeing 32k blocks' keys in one go
held the event loop for 8-11 ms. Used by `precise-prefix-cache-scorer`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from epp.kvcache.hashing import BlockHasher

CHAIN_BLOCKS = 1 << 15  # per generation: 512k tokens of 16-token blocks, about 16 MiB
CHUNK_BLOCKS = 16  # blocks a run entry covers (its entries add about a quarter to the memory)
RELEASE_STEP = 2  # entries of a dropped generation freed at each store (2: done in half the time)
SEEN_BITS = 1 << 20  # the first-sight filter: one bit a block key, 128 KiB

# (parent block's key, or the LoRA name for the first block; the block's token ids)
_Key = tuple[int | str | None, tuple[int, ...]]
_Entry = tuple[int, bytes]  # (the block's key, its full digest: the next block's parent)
_Run = tuple[tuple[int, ...], bytes]  # (a run's block keys, its last block's full digest)


class PrefixChain:
    def __init__(self, hasher: BlockHasher, capacity: int = CHAIN_BLOCKS) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.hasher = hasher
        self.capacity = capacity
        self._new: dict[_Key, _Entry] = {}
        self._old: dict[_Key, _Entry] = {}
        self._runs_new: dict[_Key, _Run] = {}
        self._runs_old: dict[_Key, _Run] = {}
        self._dropped: list[dict[_Key, _Entry] | dict[_Key, _Run]] = []  # being released
        self._seen = bytearray(SEEN_BITS // 8)  # blocks hashed once and not stored
        self._seen_marks = 0
        self.hashed = 0  # blocks hashed (the others were found in the chain)
        self.last: int | None = None  # the key the latest walk yielded last

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    @property
    def releasing(self) -> int:
        """Entries of dropped generations not freed yet."""
        return sum(len(dropped) for dropped in self._dropped)

    def blocks(self, ids: Sequence[int], limit: int = 1 << 30) -> int:
        """How many full blocks of `ids` a walk covers."""
        return min(len(ids) // self.hasher.block_size, limit)

    def walk(
        self, ids: Sequence[int], lora: str | None = None, limit: int = 1 << 30
    ) -> Iterator[int]:
        """The keys of the full blocks of `ids` (at most `limit`), as vLLM's events carry them."""
        for piece in self._pieces(ids, lora, limit):
            for key in piece:
                self.last = key  # where a caller that stops reading stopped, inside a run too
                yield key

    def keys(self, ids: Sequence[int], lora: str | None = None, limit: int = 1 << 30) -> list[int]:
        """`list(walk(...))`, a known run added at once rather than key by key."""
        out: list[int] = []
        for piece in self._pieces(ids, lora, limit):
            out += piece
        return out

    def _pieces(
        self, ids: Sequence[int], lora: str | None, limit: int
    ) -> Iterator[tuple[int, ...]]:
        """The walk's keys: a known run's at once, else one block's at a time."""
        tokens = ids if isinstance(ids, tuple) else tuple(ids)
        bs = self.hasher.block_size
        span = bs * CHUNK_BLOCKS
        stop = self.blocks(tokens, limit) * bs
        new, old = self._new, self._old
        parent: int | str | None = lora or None
        digest = self.hasher.root
        self.last = None
        start = 0
        while start < stop:
            end = start + span
            if end <= stop:  # a whole run: one lookup if it is known
                run_key = (parent, tokens[start:end])
                run = self._runs_new.get(run_key)
                if run is None:
                    run = self._runs_old.get(run_key)
                    if run is not None:
                        self._put_run(run_key, run)
                if run is not None:
                    keys, digest = run
                    parent = self.last = keys[-1]
                    yield keys
                    start = end
                    continue
            else:
                run_key, end = None, stop
            keys_here: list[int] = []
            kept = True  # every block of the piece is in the chain
            for first in range(start, end, bs):
                block = tokens[first : first + bs]
                key = (parent, block)
                entry = new.get(key)
                if entry is None:
                    entry = old.get(key)
                    store = entry is not None  # an old generation's entry moves back
                    if entry is None:
                        if not all(type(t) is int for t in block):
                            return
                        digest = self.hasher.step(digest, block, lora)
                        entry = (int.from_bytes(digest[-8:], "big"), digest)
                        self.hashed += 1
                        store = self._seen_before(entry[0])  # stored at its second sight
                        kept = kept and store
                    if store:
                        self._put(key, entry)
                        new, old = self._new, self._old
                parent, digest = entry
                self.last = parent
                keys_here.append(parent)
                yield (parent,)
            if run_key is not None and kept:  # walked whole: remembered as a run
                self._put_run(run_key, (tuple(keys_here), digest))
            start = end

    def _seen_before(self, key: int) -> bool:
        """Whether a block with this key was hashed before (since the filter was last cleared,
        or another key shares its bit); marks it seen."""
        bit = key & (SEEN_BITS - 1)
        at, mask = bit >> 3, 1 << (bit & 7)
        seen = self._seen
        if seen[at] & mask:
            return True
        seen[at] |= mask
        self._seen_marks += 1
        if self._seen_marks > SEEN_BITS // 8:  # an eighth set: a false hit would be common
            self._seen = bytearray(SEEN_BITS // 8)
            self._seen_marks = 0
        return False

    def _put(self, key: _Key, entry: _Entry) -> None:
        new = self._new
        new[key] = entry
        if len(new) >= self.capacity:  # the young generation becomes the old one
            self._dropped.append(self._old)
            self._old, self._new = new, {}
        if self._dropped:
            self._release()

    def _put_run(self, key: _Key, run: _Run) -> None:
        new = self._runs_new
        new[key] = run
        if len(new) >= max(1, self.capacity // CHUNK_BLOCKS):
            self._dropped.append(self._runs_old)
            self._runs_old, self._runs_new = new, {}
        if self._dropped:
            self._release()

    def _release(self) -> None:
        """Free a few entries of the generations dropped by swaps (a store makes at most one
        swap, and a generation takes `capacity` stores to fill: each is gone before the next)."""
        dropped = self._dropped[-1]
        for _ in range(min(RELEASE_STEP, len(dropped))):
            dropped.popitem()
        if not dropped:
            self._dropped.pop()
