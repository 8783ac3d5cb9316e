"""HTTP/2 frames as a gRPC server over cleartext HTTP/2 (h2c, prior knowledge) needs them.

The byte layouts of RFC 9113 §4 and §6 (frame header, SETTINGS, WINDOW_UPDATE, RST_STREAM, PING,
GOAWAY) and the few header blocks a gRPC server sends. The blocks are HPACK (RFC 7541) literals
that never enter the peer's dynamic table, so the server keeps no encoder state at all.
Read by `epp.grpcwire.connection`.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9

END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# SETTINGS identifiers
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 5, 6

# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
MAX_WINDOW = (1 << 31) - 1

HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


def parse_settings(payload: bytes | memoryview) -> dict[int, int]:
    return {k: v for k, v in (_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6))}


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, _U32.pack(increment))


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, _U32.pack(code))


def goaway(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _U32.pack(last_stream) + _U32.pack(code) + debug)


def u31(payload: bytes | memoryview, offset: int = 0) -> int:
    return int(_U32.unpack_from(payload, offset)[0]) & 0x7FFFFFFF


def u32(payload: bytes | memoryview, offset: int = 0) -> int:
    return int(_U32.unpack_from(payload, offset)[0])


# ---- HPACK literals (RFC 7541 §6.2.2, never indexed by the peer, no Huffman) --------------------
def _length(n: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix (§5.1)."""
    limit = (1 << prefix_bits) - 1
    if n < limit:
        return bytes([first | n])
    out = [first | limit]
    n -= limit
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + _length(len(name), 7) + name + _length(len(value), 7) + value


def literal_indexed_name(index: int, value: bytes) -> bytes:
    return _length(index, 4) + _length(len(value), 7) + value


STATUS_200 = b"\x88"  # static table entry 8
CONTENT_TYPE_GRPC = literal_indexed_name(31, b"application/grpc")  # 31: content-type
RESPONSE_HEADERS = STATUS_200 + CONTENT_TYPE_GRPC
STATUS_OK = literal(b"grpc-status", b"0")
