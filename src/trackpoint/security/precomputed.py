"""HMAC with the key's pad states computed once: for MACs checked on the request path (signed URLs, click ids,
encrypted prices). Imports nothing of trackpoint's, so any module can use it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


class PrecomputedHmac:
    """HMAC (SHA-256 unless told otherwise) with the key's inner and outer hash states computed once (RFC 2104): a
    MAC is then two hash copies instead of a full `hmac` set-up per request (about 2.5 times faster)."""

    __slots__ = ("inner", "outer")

    def __init__(self, secret: bytes, digestmod: Callable[..., Any] = hashlib.sha256) -> None:
        block = digestmod().block_size
        if len(secret) > block:
            secret = digestmod(secret).digest()
        secret = secret.ljust(block, b"\0")
        self.inner = digestmod(secret.translate(_IPAD))
        self.outer = digestmod(secret.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self.inner.copy()
        inner.update(message)
        outer = self.outer.copy()
        outer.update(inner.digest())
        mac: bytes = outer.digest()
        return mac
