"""The datagram one EPP replica sends its peers: its own in-flight requests and tokens per
endpoint, whole each time (a lost datagram is healed by the next), and the picks it made since
the last one: which endpoint got which prompt blocks, per prefix scorer, so that every replica's
approximate prefix index learns the whole fleet's traffic, and the seconds of prefill each pick
queued on its endpoint (so that every replica's queued prefill, `PrefillQueue`, counts the
fleet's cold prompts). JSON, small; picks that do not fit one datagram go in the next ones. A
datagram that does not parse is refused with a `ValueError` naming the problem.

Compatible both ways within version 1: the prefill seconds ride in their own key `q` (one per
pick, in the order of `p`) and the time of the oldest pick in `t`, keys that a replica without
them ignores; a datagram without them decodes with no prefill and no time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

VERSION = 1
MAX_DATAGRAM = 60_000  # stays under UDP's 64 KiB with room for headers


@dataclass(frozen=True, slots=True)
class Pick:
    scorer: str  # "profile/plugin": the same scorer on every replica (same configuration)
    block_tokens: int  # the block size its hashes were cut with (peers with another skip it)
    address: str
    hashes: tuple[int, ...]
    prefill: float = 0.0  # seconds of prefill the pick queued on the endpoint (0.0: none known)


@dataclass(frozen=True, slots=True)
class Announcement:
    replica: str  # the sender's name (unique among the replicas)
    seq: int  # grows with every datagram the sender sends: late ones are dropped
    flights: dict[str, tuple[int, int]]  # address → (requests, tokens)
    picks: tuple[Pick, ...] = ()
    picked_at: float | None = None  # wall-clock time (time.time()) of the oldest pick in it


def encode(note: Announcement) -> bytes:
    doc: dict[str, object] = {
        "v": VERSION,
        "r": note.replica,
        "s": note.seq,
        "f": [[a, n, t] for a, (n, t) in note.flights.items()],
        "p": [[p.scorer, p.block_tokens, p.address, p.hashes] for p in note.picks],
    }
    if any(p.prefill > 0.0 for p in note.picks):
        doc["q"] = [round(p.prefill, 6) for p in note.picks]
    if note.picked_at is not None and note.picks:
        doc["t"] = round(note.picked_at, 6)
    data = orjson.dumps(doc)
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"announcement of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def encode_all(
    replica: str,
    seq: int,
    flights: dict[str, tuple[int, int]],
    picks: Sequence[Pick],
    picked_at: float | None = None,
) -> list[bytes]:
    """The announcement as datagrams of at most MAX_DATAGRAM bytes (sequence numbers from
    `seq`): each carries the in-flight counts and as many picks as fit (and `picked_at`, the
    time of the oldest of all)."""
    out: list[bytes] = []
    rest = list(picks)
    while True:
        count = len(rest)
        while True:
            try:
                note = Announcement(
                    replica, seq + len(out), flights, tuple(rest[:count]), picked_at
                )
                out.append(encode(note))
                break
            except ValueError:
                if count == 0:
                    raise
                count //= 2
        if count == 0 and rest:  # one pick alone too big: drop it
            rest = rest[1:]
        rest = rest[count:]
        if not rest:
            return out


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def decode(data: bytes) -> Announcement:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise ValueError(f"not a version {VERSION} announcement")
    replica, seq, entries, picks = doc.get("r"), doc.get("s"), doc.get("f"), doc.get("p", [])
    if not isinstance(replica, str) or not replica:
        raise ValueError("announcement without a replica name")
    if not isinstance(seq, int) or not _count(seq):
        raise ValueError("announcement without a sequence number")
    if not isinstance(entries, list) or not isinstance(picks, list):
        raise ValueError("announcement without in-flight entries")
    flights: dict[str, tuple[int, int]] = {}
    for entry in entries:
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or not isinstance(entry[0], str)
            or not all(_count(x) for x in entry[1:])
        ):
            raise ValueError(f"bad in-flight entry {entry!r}: want [address, requests, tokens]")
        flights[entry[0]] = (entry[1], entry[2])
    prefills = _prefills(doc.get("q"), len(picks))
    picked_at = doc.get("t")
    if picked_at is not None and not _seconds(picked_at):
        raise ValueError(f"bad pick time {picked_at!r}: want seconds since the epoch")
    return Announcement(
        replica,
        seq,
        flights,
        tuple(_pick(p, q) for p, q in zip(picks, prefills, strict=True)),
        float(picked_at) if picked_at is not None else None,
    )


def _seconds(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def _prefills(entry: object, picks: int) -> list[float]:
    if entry is None:
        return [0.0] * picks
    if not isinstance(entry, list) or len(entry) != picks or not all(_seconds(q) for q in entry):
        raise ValueError(f"bad prefill seconds: want {picks} numbers >= 0, one per pick")
    return [float(q) for q in entry]


def _pick(entry: object, prefill: float) -> Pick:
    if (
        not isinstance(entry, list)
        or len(entry) != 4
        or not isinstance(entry[0], str)
        or not _count(entry[1])
        or not isinstance(entry[2], str)
        or not isinstance(entry[3], list)
        or not all(isinstance(h, int) and not isinstance(h, bool) for h in entry[3])
    ):
        raise ValueError("bad pick: want [scorer, block tokens, address, [hashes]]")
    return Pick(entry[0], entry[1], entry[2], tuple(entry[3]), prefill)
