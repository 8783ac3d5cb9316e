"""Request bodies sent with a `content-encoding`: decoded before anything reads them.

gzip and deflate (zlib-wrapped, or raw as some clients send it) are decoded with a bound on
the decoded size, so that a small body cannot unfold into gigabytes (a zip bomb is refused with
413 once the bound is passed, without decoding the rest). A body labelled with an encoding it
is not in is a bad request (400); an encoding we do not decode is refused (415) rather than
passed to a model server that would fail on it. `epp.request` calls `decode`; the edge removes
the header from the request it forwards, since what goes upstream is the decoded body.
"""

from __future__ import annotations

import zlib

from epp.errors import BadRequest, RequestTooLarge, UnsupportedMediaType

ENCODING_HEADER = "content-encoding"
_IDENTITY = ("", "identity")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decode(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """`body` decoded from `encoding` (a content-encoding header's value), at most `max_bytes`."""
    coding = encoding.strip().lower()
    if coding in _IDENTITY:
        return body
    wbits = _WBITS.get(coding)
    if wbits is None:
        raise UnsupportedMediaType(
            f"content-encoding {encoding!r} is not supported; send the body as gzip, deflate "
            "or identity"
        )
    try:
        return _inflate(body, wbits, max_bytes, coding)
    except zlib.error:
        if coding != "deflate":
            raise BadRequest(
                f"request body is labelled {coding} but is not {coding} data"
            ) from None
    try:  # "deflate" is zlib-wrapped by the standard, raw deflate from some clients
        return _inflate(body, -zlib.MAX_WBITS, max_bytes, coding)
    except zlib.error:
        raise BadRequest("request body is labelled deflate but is not deflate data") from None


def _inflate(body: bytes, wbits: int, max_bytes: int, coding: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, max_bytes + 1)
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise RequestTooLarge(
            f"request body decoded from {coding} exceeds the limit of {max_bytes} bytes"
        )
    out += inflater.flush()
    if len(out) > max_bytes:
        raise RequestTooLarge(
            f"request body decoded from {coding} exceeds the limit of {max_bytes} bytes"
        )
    if not inflater.eof:
        raise BadRequest(f"request body is truncated {coding} data")
    if inflater.unused_data:
        raise BadRequest(
            f"request body has {len(inflater.unused_data)} bytes after its {coding} data"
        )
    return out
