"""`epp.grpcwire.headers.PathDecoder`: a block's `:path` is remembered only while the peer's
HPACK dynamic table stays as it was, so the same bytes never keep a meaning they lost."""

from __future__ import annotations

import hpack
import pytest

from epp.grpcwire.headers import REMEMBERED, PathDecoder

PROCESS = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
FIRST_DYNAMIC = b"\xbe"  # an indexed field: entry 62, the newest in the dynamic table


def envoy_block(encoder: hpack.Encoder) -> bytes:
    """As Envoy sends an ext_proc stream's headers: fields indexed once seen, `:path` a literal
    never indexed (sensitive)."""
    return encoder.encode(
        [
            (b":method", b"POST"),
            (b":path", PROCESS, True),
            (b":authority", b"epp"),
            (b":scheme", b"http"),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"x-envoy-internal", b"true"),
        ]
    )


def test_a_repeated_block_is_remembered_once_it_leaves_the_table_alone() -> None:
    encoder, decoder = hpack.Encoder(), PathDecoder()
    first = envoy_block(encoder)  # adds :authority and the rest to the table
    assert decoder.path(first) == PROCESS.decode()
    assert decoder.remembered == 0  # it changed the table: decoding it again would too
    again = envoy_block(encoder)
    assert again != first
    for _ in range(3):
        assert decoder.path(again) == PROCESS.decode()
    assert decoder.remembered == 1


def test_the_same_bytes_after_the_table_changed_are_decoded_anew() -> None:
    encoder, decoder = hpack.Encoder(), PathDecoder()
    assert decoder.path(encoder.encode([(b":path", b"/a.A/One")])) == "/a.A/One"  # indexed
    assert decoder.path(FIRST_DYNAMIC) == "/a.A/One"
    assert decoder.remembered == 1
    assert decoder.path(encoder.encode([(b":path", b"/b.B/Two")])) == "/b.B/Two"
    assert decoder.remembered == 0
    assert decoder.path(FIRST_DYNAMIC) == "/b.B/Two"  # entry 62 is now the newer path


def test_a_table_emptied_by_a_size_update_forgets_what_it_meant() -> None:
    encoder, decoder = hpack.Encoder(), PathDecoder()
    decoder.path(encoder.encode([(b":path", b"/a.A/One")]))
    assert decoder.path(FIRST_DYNAMIC) == "/a.A/One"
    assert decoder.path(b"\x20") == ""  # a dynamic table size update to 0: the entry is gone
    with pytest.raises(hpack.HPACKError):
        decoder.path(FIRST_DYNAMIC)
    with pytest.raises(hpack.HPACKError):  # and stays gone: nothing of it was remembered
        decoder.path(FIRST_DYNAMIC)


def test_an_equal_entry_added_again_still_counts_as_a_change() -> None:
    """A full table that takes a copy of an entry it holds has the same newest entry, by value,
    and the same length, yet an older entry went: what pointed at it means something else."""
    decoder = PathDecoder()
    entry = hpack.Encoder().encode([(b":path", b"/a.A/One")])
    other = hpack.Encoder().encode([(b":path", b"/b.B/Two")])
    decoder.path(b"\x3f\x45")  # size update: 100 bytes, room for two entries of 45
    decoder.path(other)
    decoder.path(entry)  # the table: [/a, /b]
    second = b"\xbf"  # entry 63: the older one, /b
    assert decoder.path(second) == "/b.B/Two"
    decoder.path(entry)  # [/a, /a]: /b evicted
    assert decoder.path(second) == "/a.A/One"


def test_blocks_beyond_the_limit_are_decoded_each_time() -> None:
    encoder, decoder = hpack.Encoder(), PathDecoder()
    blocks = [encoder.encode([(b":path", f"/s.S/M{i}".encode(), True)]) for i in range(80)]
    for _ in range(2):
        assert [decoder.path(b) for b in blocks] == [f"/s.S/M{i}" for i in range(80)]
    assert decoder.remembered == REMEMBERED


def test_a_bad_block_raises_and_is_not_remembered() -> None:
    decoder = PathDecoder()
    for _ in range(2):
        with pytest.raises(hpack.HPACKError):
            decoder.path(b"\xff\xff\xff\xff\xff\xff\xff")
    assert decoder.remembered == 0
