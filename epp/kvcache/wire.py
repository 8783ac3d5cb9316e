"""Decoding vLLM's KV event batches: the payload frame of what a pod's PUB socket sends.

A batch is msgpack `[ts, [event, ...], data_parallel_rank]` (the rank is absent before vLLM 0.10).
Events are maps tagged `type` since vLLM 0.26 (vllm-project/vllm#42892) and positional arrays,
tag first, before it; both are read, by name or by position, and fields this EPP does not use
(extra keys, group index, ...) are ignored so newer pods keep working. Block hashes are the 64-bit
integers vLLM sends by default, or the digest bytes (then their low 64 bits, as the EPP hashes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

MEDIUM_GPU = "GPU"


class WireError(ValueError):
    """A payload that is not a KV event batch."""


@dataclass(frozen=True, slots=True)
class Stored:
    hashes: list[int]
    parent: int | None
    medium: str
    lora: str | None  # the adapter's name (or its id, as text, from pods that send no name)
    tokens: int = 0  # tokens in the blocks


@dataclass(frozen=True, slots=True)
class Removed:
    hashes: list[int]
    medium: str


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


Event = Stored | Removed | Cleared


@dataclass(frozen=True, slots=True)
class Batch:
    ts: float
    events: list[Event]
    rank: int


def _key(h: object) -> int:
    if isinstance(h, int) and not isinstance(h, bool):
        return h & 0xFFFF_FFFF_FFFF_FFFF
    if isinstance(h, bytes):
        return int.from_bytes(h[-8:], "big")
    raise WireError(f"block hash of type {type(h).__name__}")


def _keys(hashes: object) -> list[int]:
    if not isinstance(hashes, list):
        raise WireError("block_hashes is not a list")
    return [_key(h) for h in hashes]


def _medium(value: object) -> str:
    return value.upper() if isinstance(value, str) else MEDIUM_GPU


# positional fields before vLLM 0.26: BlockStored(block_hashes, parent_block_hash, token_ids,
# block_size, lora_id, medium, lora_name, ...), BlockRemoved(block_hashes, medium, ...)
_STORED = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium",
           "lora_name")  # fmt: skip
_REMOVED = ("block_hashes", "medium")


def _event(raw: Any) -> Event | None:
    if isinstance(raw, dict):
        kind, fields = raw.get("type"), raw
    elif isinstance(raw, list) and raw and isinstance(raw[0], str):
        kind = raw[0]
        names = _STORED if kind == "BlockStored" else _REMOVED
        fields = dict(zip(names, raw[1:], strict=False))
    else:
        raise WireError("an event is neither a tagged map nor a tagged array")
    if kind == "BlockStored":
        parent = fields.get("parent_block_hash")
        tokens = fields.get("token_ids")
        lora = fields.get("lora_name")
        if lora is None and fields.get("lora_id") is not None:
            lora = str(fields["lora_id"])
        return Stored(
            _keys(fields.get("block_hashes")),
            None if parent is None else _key(parent),
            _medium(fields.get("medium")),
            lora if isinstance(lora, str) else None,
            len(tokens) if isinstance(tokens, list) else 0,
        )
    if kind == "BlockRemoved":
        return Removed(_keys(fields.get("block_hashes")), _medium(fields.get("medium")))
    if kind == "AllBlocksCleared":
        return Cleared()
    return None  # an event kind from a newer vLLM: skipped


def decode(payload: bytes) -> Batch:
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise WireError(f"not msgpack: {e}") from None
    if isinstance(raw, dict):  # a batch encoded as a map
        raw = [raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")]
    if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[1], list):
        raise WireError("a batch is [ts, events, data_parallel_rank]")
    ts = raw[0] if isinstance(raw[0], int | float) else 0.0
    rank = raw[2] if len(raw) > 2 and isinstance(raw[2], int) else 0
    events = [e for e in map(_event, raw[1]) if e is not None]
    return Batch(float(ts), events, rank)


@dataclass(frozen=True, slots=True)
class KvEventsSettings:
    """Where each pod publishes. The port convention is llm-d's pod discovery
    (`podDiscoveryConfig.socketPort`, vLLM's default endpoint `tcp://*:5557`); the replay
    socket (vLLM's `replay_endpoint`) has no default there, so 0 means none."""

    port: int = 5557
    replay_port: int = 0
    topic: str = ""  # subscription prefix, e.g. llm-d's "kv@"
    resync_s: float = 1.0  # how often the set of pods followed is compared to the endpoints
    replay_timeout_s: float = 1.0
