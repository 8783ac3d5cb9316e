"""The simulator's block hashes of a byte prompt (4 bytes a token), for tests that build `Seq`s."""

from __future__ import annotations

from epp.sim.blockhash import BlockHasher
from epp.sim.tokenizer import byte_ids

_HASHERS: dict[int, BlockHasher] = {}


def block_hashes(prompt: bytes, num_tokens: int, block_size: int, lora: str) -> list[int]:
    hasher = _HASHERS.setdefault(block_size, BlockHasher(block_size, "sha256", "0"))
    return hasher.hashes(byte_ids(prompt)[:num_tokens], lora or None)
