"""vLLM's prefix-cache block hashes, so the EPP can name the blocks a prompt would use.

As vLLM 0.26 computes them (`vllm/v1/core/kv_cache_utils.py`, `vllm/utils/hashing.py`): block
i's hash is `hash_fn((parent_hash, tuple(block_token_ids), extra_keys))`, the first parent being
`hash_fn(PYTHONHASHSEED)` (set the same seed on the pods and in the EPP, as llm-d requires),
extra keys `(lora_name,)` for a LoRA request, `hash_fn` one of vLLM's `--prefix-caching-hash-algo`
choices. The index keys blocks by the low 64 bits of each digest, the integer vLLM's events carry.
`epp.sim.blockhash` is the simulator's own copy (it imports nothing of the EPP).
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Callable, Sequence
from functools import lru_cache

import xxhash

MASK64 = (1 << 64) - 1


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes(((major << 5) | n,))
    for extra, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes(((major << 5) | extra,)) + struct.pack(fmt, n)
    raise ValueError("integer too large for CBOR")


def cbor(value: object) -> bytes:
    """Deterministic CBOR (RFC 8949 §4.2) of None, bools, ints, bytes, str, tuples and lists."""
    if value is None:
        return b"\xf6"
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, bytes):
        return _head(2, len(value)) + value
    if isinstance(value, str):
        return _head(3, len(value.encode())) + value.encode()
    if isinstance(value, tuple | list):
        return _head(4, len(value)) + b"".join(map(cbor, value))
    raise TypeError(f"cannot CBOR-encode {type(value).__name__}")


@lru_cache(maxsize=1 << 18)
def _uint(n: int) -> bytes:
    return _head(0, n)


def _block_cbor(parent: bytes, tokens: Sequence[int], extra: bytes) -> bytes:
    """`cbor((parent, tuple(tokens), extra_keys))` for token ids >= 0, each id's bytes cached."""
    return b"".join(
        (b"\x83", _head(2, len(parent)), parent, _head(4, len(tokens)), *map(_uint, tokens), extra)
    )


def _pickled(value: object) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


ALGOS: dict[str, Callable[[object], bytes]] = {
    "sha256": lambda v: hashlib.sha256(_pickled(v)).digest(),
    "sha256_cbor": lambda v: hashlib.sha256(cbor(v)).digest(),
    "xxhash": lambda v: xxhash.xxh3_128_digest(_pickled(v)),
    "xxhash_cbor": lambda v: xxhash.xxh3_128_digest(cbor(v)),
}


class BlockHasher:
    def __init__(self, block_size: int = 16, algo: str = "sha256", seed: str = "0") -> None:
        if algo not in ALGOS:
            raise ValueError(f"hash algo must be one of {sorted(ALGOS)}, not {algo!r}")
        if block_size < 1:
            raise ValueError("block size must be positive")
        self.block_size = block_size
        self.algo = algo
        self._fn = ALGOS[algo]
        self._root = self._fn(seed)
        self._cbor = algo.endswith("_cbor")
        self._digest = hashlib.sha256 if algo == "sha256_cbor" else xxhash.xxh3_128

    @property
    def root(self) -> bytes:
        """The parent digest of a prompt's first block (the seed's hash)."""
        return self._root

    def step(self, parent: bytes, tokens: Sequence[int], lora: str | None = None) -> bytes:
        """The digest of one block of `tokens` (int ids) chained to its parent's digest."""
        extra = (lora,) if lora else None
        if self._cbor and all(t >= 0 for t in tokens):
            return self._digest(_block_cbor(parent, tokens, cbor(extra))).digest()
        return self._fn((parent, tuple(tokens), extra))

    def hashes(
        self, token_ids: Sequence[int], lora: str | None = None, limit: int = 1 << 30
    ) -> list[int]:
        """The 64-bit keys of the full blocks of `token_ids` (at most `limit` blocks)."""
        bs, fn = self.block_size, self._fn
        extra = (lora,) if lora else None
        parent = self._root
        out: list[int] = []
        stop = min(len(token_ids) // bs, limit) * bs
        if self._cbor and all(t >= 0 for t in token_ids[:stop]):  # `step`, unrolled
            tail, digest = cbor(extra), self._digest
            for start in range(0, stop, bs):
                parent = digest(_block_cbor(parent, token_ids[start : start + bs], tail)).digest()
                out.append(int.from_bytes(parent[-8:], "big"))
            return out
        for start in range(0, stop, bs):
            parent = fn((parent, tuple(token_ids[start : start + bs]), extra))
            out.append(int.from_bytes(parent[-8:], "big"))
        return out
