"""The request header blocks of one HTTP/2 connection, HPACK-decoded (RFC 7541) for their `:path`.

Every block is decoded in order, because a block may change the peer's dynamic table and later
blocks index into it. Envoy repeats one block for every ext_proc stream, byte for byte: the
method and fields indexed in the table, `:path` a literal that is never indexed. Decoding such a
block leaves the table as it was, so while the table stays unchanged the same bytes mean the
same headers: `PathDecoder` remembers the path of each block that left the table alone, keyed
by its bytes, and forgets them all when any block changes the table. Read by
`epp.grpcwire.connection`.
"""

from __future__ import annotations

import hpack

REMEMBERED = 64  # distinct blocks; more (a peer sending varying literals) are decoded each time


class PathDecoder:
    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._table = self._decoder.header_table
        self._paths: dict[bytes, str] = {}
        # the table the remembered paths were read with: its newest entry (the object itself,
        # kept alive: every addition is a new tuple, so it is never mistaken for another), its
        # length and its size limit
        self._newest: tuple[bytes, bytes] | None = None
        self._length = 0
        self._limit = self._table.maxsize

    def path(self, block: bytes) -> str:
        """The block's `:path` ("" without one); raises `hpack.HPACKError` for a bad block."""
        path = self._paths.get(block)
        if path is not None:
            return path
        unchanged = False
        try:
            headers = self._decoder.decode(block, raw=True)
            unchanged = self._table_unchanged()
        finally:
            if not unchanged:  # what was remembered no longer holds (nor does this block's)
                self._paths.clear()
                self._read_table()
        path = next((bytes(v).decode("latin-1") for k, v in headers if k == b":path"), "")
        if unchanged and len(self._paths) < REMEMBERED:
            self._paths[block] = path
        return path

    @property
    def remembered(self) -> int:
        """How many blocks are remembered now."""
        return len(self._paths)

    def _table_unchanged(self) -> bool:
        entries = self._table.dynamic_entries
        newest = entries[0] if entries else None
        return (
            newest is self._newest
            and len(entries) == self._length
            and self._table.maxsize == self._limit
        )

    def _read_table(self) -> None:
        entries = self._table.dynamic_entries
        self._newest = entries[0] if entries else None
        self._length = len(entries)
        self._limit = self._table.maxsize
