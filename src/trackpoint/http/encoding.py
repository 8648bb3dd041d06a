"""Compressed request bodies (`Content-Encoding: gzip` or `deflate`), inflated as they arrive, within caps.

A body is inflated chunk by chunk, never more than `max_inflated_bytes` (plus one byte, to know it was more) held:
a compression bomb is answered 413 after at most that much work and memory. `max_inflation_ratio` refuses a body
that inflates to more than that many times its compressed size (past the first KiB, where headers dominate).
`deflate` is the zlib format (RFC 9110 §8.4.1.2); raw deflate, which some clients send under that name, is read too.
"""

from __future__ import annotations

import zlib

from trackpoint.fields.converters import Reject

# Inflated bytes under which the ratio is not checked: a short body's gzip header and trailer dominate it.
RATIO_FLOOR_BYTES = 1024
_GZIP = zlib.MAX_WBITS | 16
_ZLIB = zlib.MAX_WBITS
_RAW = -zlib.MAX_WBITS


def wbits(encoding: bytes) -> int | None:
    """zlib's window bits for a Content-Encoding; 0 for identity (no coding); 415 for any other."""
    coding = encoding.strip().lower()
    if coding in (b"gzip", b"x-gzip"):
        return _GZIP
    if coding == b"deflate":
        return _ZLIB  # or raw: decided by the first bytes (Inflater.inflate)
    if coding in (b"identity", b""):
        return None
    raise Reject(415, "unsupported_content_encoding")  # br, zstd, or a list of codings


def _zlib_header(start: bytes) -> bool:
    """A zlib stream starts with CMF (method 8) and FLG such that (CMF * 256 + FLG) % 31 == 0 (RFC 1950)."""
    return start[0] & 0x0F == 8 and (start[0] << 8 | start[1]) % 31 == 0


class Inflater:
    """One request body's decompressor and its counts."""

    __slots__ = ("decompressor", "inflated", "max_bytes", "max_ratio", "pending", "raw", "wbits")

    def __init__(self, wbits: int, max_bytes: int, max_ratio: int) -> None:
        self.wbits = wbits
        self.decompressor: zlib._Decompress | None = None  # created on the first chunk (deflate: zlib or raw)
        self.max_bytes = max_bytes
        self.max_ratio = max_ratio
        self.inflated = 0
        self.raw = 0
        self.pending = b""

    def inflate(self, chunk: bytes) -> bytes:
        """The inflated bytes of the next compressed chunk; 413 past a cap, 400 for a stream zlib cannot read."""
        decompressor = self.decompressor
        if decompressor is None:
            wbits = self.wbits
            if wbits == _ZLIB:  # zlib or raw deflate: told by the first two bytes
                chunk = self.pending + chunk
                if len(chunk) < 2:
                    self.pending = chunk
                    return b""
                if not _zlib_header(chunk):
                    wbits = _RAW
            decompressor = self.decompressor = zlib.decompressobj(wbits)
        room = self.max_bytes - self.inflated
        try:
            inflated = decompressor.decompress(chunk, room + 1)  # at most one byte past the cap is ever made
        except zlib.error:
            raise Reject(400, "content_encoding_invalid") from None
        self.inflated += len(inflated)
        self.raw += len(chunk) - len(decompressor.unconsumed_tail)  # the compressed bytes read so far
        if self.inflated > RATIO_FLOOR_BYTES and self.inflated > self.max_ratio * self.raw:
            raise Reject(413, "inflation_ratio_exceeded")  # a bomb: told by its ratio long before its size
        if len(inflated) > room or decompressor.unconsumed_tail:
            raise Reject(413, "inflated_too_large")
        if decompressor.unused_data:  # bytes after the end of the compressed stream
            raise Reject(400, "content_encoding_invalid")
        return inflated

    def finished(self) -> bool:
        """Whether the compressed stream ended (a truncated one is refused, not read as a shorter body)."""
        if self.decompressor is None:
            return not self.pending
        return self.decompressor.eof
