"""Prefix-cache block hashes computed from token ids the way vLLM computes them.

Follows vLLM 0.26 (`vllm/v1/core/kv_cache_utils.py`: `hash_block_tokens`, `init_none_hash`,
`maybe_convert_block_hash`; `vllm/utils/hashing.py`): block i's hash is
`hash_fn((parent_hash, tuple(block_token_ids), extra_keys))`, the first block's parent being
`NONE_HASH = hash_fn(PYTHONHASHSEED)` (random bytes when no seed is set, as in vLLM), extra keys
`(lora_name,)` for a LoRA request. `hash_fn` is `--prefix-caching-hash-algo`: `sha256` (pickle,
vLLM's default), `sha256_cbor`, `xxhash` or `xxhash_cbor` (XXH3-128). Events carry the low 64
bits of each digest as an integer (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`, vLLM's default), which
is also the key `epp.sim.kvcache` caches blocks under. The EPP has its own copy
(`epp.kvcache.hashing`): the simulator imports nothing of the EPP.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
from collections.abc import Callable, Sequence

import xxhash

HashFn = Callable[[object], bytes]
MASK64 = (1 << 64) - 1


def _head(major: int, n: int) -> bytes:
    """A CBOR item head in its shortest form (RFC 8949 deterministic encoding)."""
    if n < 24:
        return bytes(((major << 5) | n,))
    if n < 0x100:
        return bytes(((major << 5) | 24, n))
    if n < 0x10000:
        return bytes(((major << 5) | 25,)) + struct.pack(">H", n)
    if n < 0x100000000:
        return bytes(((major << 5) | 26,)) + struct.pack(">I", n)
    return bytes(((major << 5) | 27,)) + struct.pack(">Q", n)


def cbor(value: object) -> bytes:
    """Canonical CBOR of the values a block key holds: bytes, str, ints, None, tuples, lists."""
    if value is None:
        return b"\xf6"
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, bytes):
        return _head(2, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return _head(3, len(raw)) + raw
    if isinstance(value, tuple | list):
        return _head(4, len(value)) + b"".join(cbor(v) for v in value)
    raise TypeError(f"no CBOR encoding here for {type(value).__name__}")


def _sha256(value: object) -> bytes:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def _sha256_cbor(value: object) -> bytes:
    return hashlib.sha256(cbor(value)).digest()


def _xxhash(value: object) -> bytes:
    return xxhash.xxh3_128_digest(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def _xxhash_cbor(value: object) -> bytes:
    return xxhash.xxh3_128_digest(cbor(value))


HASH_FUNCTIONS: dict[str, HashFn] = {
    "sha256": _sha256,
    "sha256_cbor": _sha256_cbor,
    "xxhash": _xxhash,
    "xxhash_cbor": _xxhash_cbor,
}


class BlockHasher:
    """Chained block hashes for one hash function and seed (one per engine, like vLLM's)."""

    def __init__(self, block_size: int, algo: str = "sha256", seed: str | None = None) -> None:
        if algo not in HASH_FUNCTIONS:
            raise ValueError(f"unknown prefix caching hash algo {algo!r}: {sorted(HASH_FUNCTIONS)}")
        self.block_size = block_size
        self.algo = algo
        self.fn = HASH_FUNCTIONS[algo]
        self.none_hash = os.urandom(32) if seed is None else self.fn(seed)

    def digests(self, token_ids: Sequence[int], lora_name: str | None = None) -> list[bytes]:
        """Full digests of the full blocks of `token_ids` (a trailing partial block has none)."""
        bs = self.block_size
        extra = (lora_name,) if lora_name else None
        parent = self.none_hash
        out: list[bytes] = []
        fn = self.fn
        for start in range(0, len(token_ids) - bs + 1, bs):
            parent = fn((parent, tuple(token_ids[start : start + bs]), extra))
            out.append(parent)
        return out

    def hashes(self, token_ids: Sequence[int], lora_name: str | None = None) -> list[int]:
        """The blocks' external hashes: each digest's low 64 bits, as vLLM's events carry them."""
        return [int.from_bytes(d, "big") & MASK64 for d in self.digests(token_ids, lora_name)]
