"""The datagram one EPP replica sends its peers: its own in-flight requests and tokens per
endpoint, whole each time (a lost datagram is healed by the next). JSON, small: one entry per
endpoint that has requests in flight from this replica. A datagram that does not parse is
refused with a `ValueError` naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

VERSION = 1
MAX_DATAGRAM = 60_000  # stays under UDP's 64 KiB with room for headers


@dataclass(frozen=True, slots=True)
class Announcement:
    replica: str  # the sender's name (unique among the replicas)
    seq: int  # grows with every datagram the sender sends: late ones are dropped
    flights: dict[str, tuple[int, int]]  # address → (requests, tokens)


def encode(note: Announcement) -> bytes:
    data = orjson.dumps(
        {
            "v": VERSION,
            "r": note.replica,
            "s": note.seq,
            "f": [[a, n, t] for a, (n, t) in note.flights.items()],
        }
    )
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"in-flight announcement of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def decode(data: bytes) -> Announcement:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise ValueError(f"not a version {VERSION} announcement")
    replica, seq, entries = doc.get("r"), doc.get("s"), doc.get("f")
    if not isinstance(replica, str) or not replica:
        raise ValueError("announcement without a replica name")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("announcement without a sequence number")
    if not isinstance(entries, list):
        raise ValueError("announcement without in-flight entries")
    flights: dict[str, tuple[int, int]] = {}
    for entry in entries:
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or not isinstance(entry[0], str)
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in entry[1:])
        ):
            raise ValueError(f"bad in-flight entry {entry!r}: want [address, requests, tokens]")
        flights[entry[0]] = (entry[1], entry[2])
    return Announcement(replica, seq, flights)
