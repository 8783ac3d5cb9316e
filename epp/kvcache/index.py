"""The precise prefix index: which pods hold which KV blocks, and where (GPU, CPU, ...).

Fed by the pods' own KV events (`epp.kvevents`), so it says what a pod caches now rather than
what this EPP once sent it. Keys are vLLM's 64-bit block hashes, which chain every earlier block
and the LoRA adapter's name, so a LoRA's blocks never meet the base model's. A block held on
the GPU counts in full; one only in a slower medium (CPU offload) counts `slow_weight`. One
holder is stored as the bare pod key, several as a set: most blocks have one. Each pod's own
hashes are kept too, so a restarted or departed pod is forgotten without a scan. Every map and set
of hashes is cut into shards by the hash's low bits (`epp.kvcache.shards`): a fleet's index
holds millions of blocks, and one dict that size stalls the event loop for 100 ms when it
rebuilds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from epp.kvcache.shards import POD_SHARD_MASK, POD_SHARDS, SHARD_MASK, SHARDS
from epp.kvcache.wire import MEDIUM_GPU

Holders = str | set[str]
Table = list[dict[int, Holders]]  # hash -> holders, in `SHARDS` shards
Held = list[set[int]]  # one pod's hashes in one medium, in `POD_SHARDS` shards


def _table() -> Table:
    return [{} for _ in range(SHARDS)]


def _held() -> Held:
    return [set() for _ in range(POD_SHARDS)]


def _add(tables: Table, h: int, pod: str) -> None:
    table = tables[h & SHARD_MASK]
    holders = table.get(h)
    if holders is None:
        table[h] = pod
    elif isinstance(holders, str):
        if holders != pod:
            table[h] = {holders, pod}
    else:
        holders.add(pod)


def _drop(tables: Table, h: int, pod: str) -> None:
    table = tables[h & SHARD_MASK]
    holders = table.get(h)
    if holders is None:
        return
    if isinstance(holders, str):
        if holders == pod:
            del table[h]
        return
    holders.discard(pod)
    if len(holders) == 1:
        table[h] = next(iter(holders))


class KvBlockIndex:
    def __init__(self, slow_weight: float = 0.5) -> None:
        self.slow_weight = slow_weight
        self._fast: Table = _table()  # GPU
        self._slow: Table = _table()  # any other medium
        self._held: dict[str, tuple[Held, Held]] = {}  # pod → (GPU, other) hashes
        self._slow_held = 0  # (pod, hash) pairs held in a slower medium
        # told of every `clear` (the pod cleared its cache, restarted or left)
        self.on_clear: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return sum(map(len, self._fast)) + sum(map(len, self._slow))

    def pods(self) -> list[str]:
        return list(self._held)

    def blocks_of(self, pod: str) -> int:
        held = self._held.get(pod)
        return sum(map(len, held[0])) + sum(map(len, held[1])) if held else 0

    def _tables(self, pod: str, medium: str) -> tuple[Table, Held]:
        held = self._held.get(pod)
        if held is None:
            held = self._held[pod] = (_held(), _held())
        return (self._fast, held[0]) if medium == MEDIUM_GPU else (self._slow, held[1])

    def store(self, pod: str, hashes: Iterable[int], medium: str = MEDIUM_GPU) -> None:
        table, held = self._tables(pod, medium)
        added = 0
        for h in hashes:
            mine = held[h & POD_SHARD_MASK]
            if h not in mine:
                mine.add(h)
                _add(table, h, pod)
                added += 1
        if table is self._slow:
            self._slow_held += added

    def remove(self, pod: str, hashes: Iterable[int], medium: str = MEDIUM_GPU) -> None:
        table, held = self._tables(pod, medium)
        removed = 0
        for h in hashes:
            mine = held[h & POD_SHARD_MASK]
            if h in mine:
                mine.discard(h)
                _drop(table, h, pod)
                removed += 1
        if table is self._slow:
            self._slow_held -= removed

    def clear(self, pod: str) -> None:
        """Forget everything `pod` holds (it cleared its cache, restarted or left)."""
        if self.on_clear is not None:
            self.on_clear(pod)
        held = self._held.pop(pod, None)
        if held is None:
            return
        self._slow_held -= sum(map(len, held[1]))
        for table, shards in ((self._fast, held[0]), (self._slow, held[1])):
            for mine in shards:
                for h in mine:
                    _drop(table, h, pod)

    def match(self, hashes: Iterable[int]) -> dict[str, float]:
        """Per pod, the leading blocks of `hashes` it holds without a gap (GPU first, a block
        held only in a slower medium counting `slow_weight`). Reads `hashes` only up to the
        first block no pod holds, so they can be computed as they are read."""
        if not self._slow_held:
            return self._match_fast(hashes)
        fast, slow, w, mask = self._fast, self._slow, self.slow_weight, SHARD_MASK
        counts: dict[str, float] = {}
        alive: set[str] | None = None
        for h in hashes:
            f, s = fast[h & mask].get(h), slow[h & mask].get(h)
            if f is None and s is None:
                break
            on_gpu = {f} if isinstance(f, str) else (f or set())
            here = on_gpu | ({s} if isinstance(s, str) else (s or set()))
            alive = here if alive is None else alive & here
            if not alive:
                break
            for pod in alive:
                counts[pod] = counts.get(pod, 0.0) + (1.0 if pod in on_gpu else w)
        return counts

    def _match_fast(self, hashes: Iterable[int]) -> dict[str, float]:
        # consecutive blocks mostly have the same holders (a shared system prompt): count such
        # a run once per holder instead of once per block and holder
        counts: dict[str, float] = {}
        tables, mask = self._fast, SHARD_MASK
        run_of: Holders | None = None
        alive: set[str] | None = None
        run = 0
        for h in hashes:
            holders = tables[h & mask].get(h)
            if holders is None:
                break
            if holders == run_of:
                run += 1
                continue
            if run_of is not None:
                alive = _credit(counts, run_of, run, alive)
                if not alive:
                    return counts
            run_of, run = holders, 1
        if run_of is not None:
            _credit(counts, run_of, run, alive)
        return counts


def _credit(counts: dict[str, float], holders: Holders, n: int, alive: set[str] | None) -> set[str]:
    """Add `n` blocks to the holders still in their run; the holders still in it."""
    here = {holders} if isinstance(holders, str) else holders
    live = here if alive is None else alive & here
    for pod in live:
        counts[pod] = counts.get(pod, 0.0) + n
    return set(live)
