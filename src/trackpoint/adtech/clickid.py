"""Click ids: what attribution needs (impression, campaign, creative, click time) in one signed, URL-safe token.

A click issues one; the conversion postback that carries it back is attributed by checking and decoding it, with no
look-up. The keys are the tracker's signing keys (`signing`), so click ids rotate with signed URLs.
"""

from __future__ import annotations

import binascii
import hmac
from collections.abc import Mapping
from typing import NamedTuple

from trackpoint.adtech.price import decode_websafe
from trackpoint.security.precomputed import PrecomputedHmac

# Layout, version 1 (integers big-endian), as base64url without padding:
#   version  u8 = 1
#   key id   u8 length, then that many bytes (ASCII, the `signing` key id)
#   click    u48, epoch milliseconds
#   imp, cid, crid  each: length (one byte below 128; else two bytes, the first with its high bit set), UTF-8 text
#   mac      the first 12 bytes of HMAC-SHA256 over everything before it, with a key derived from the signing key
# `imp=9f1c2a&cid=summer-sale&crid=banner-300x250` under the key `auto` takes 78 characters.
VERSION = 1
MAC_BYTES = 12  # 96 bits: a forger gets one guess per request against a 2**-96 chance
MAX_VALUE_BYTES = 0x7FFF
MAX_CHARS = 1024  # longer text is refused before it is decoded

# Why a click id is refused (the conversion is then recorded unattributed, with this reason).
MALFORMED = "click_id_malformed"
UNKNOWN_KEY = "click_id_unknown_key"
FORGED = "click_id_forged"

# The signing key is not used as it is: a click id's MAC can never stand for a URL signature, nor the reverse.
_DERIVATION = b"trackpoint click id v1"
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_MAX_MS = (1 << 48) - 1


class ClickIdError(Exception):
    """A click id that cannot be trusted: `reason` is MALFORMED, UNKNOWN_KEY or FORGED."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Click(NamedTuple):
    """What a click id carries; absent values are empty strings."""

    imp: str
    cid: str
    crid: str
    ts: int  # epoch milliseconds of the click
    key_id: str


class _Key(PrecomputedHmac):
    """A click-id key: derived from the signing key, so a click id's MAC never passes as a URL signature."""

    __slots__ = ()

    def __init__(self, secret: bytes) -> None:
        super().__init__(hmac.digest(secret, _DERIVATION, "sha256"))

    def mac(self, message: bytes) -> bytes:
        return self.digest(message)[:MAC_BYTES]


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes((size,))
    if size > MAX_VALUE_BYTES:
        raise ValueError(f"a click id value has at most {MAX_VALUE_BYTES} bytes")
    return bytes((0x80 | size >> 8, size & 0xFF))


class ClickIds:
    """Issues click ids with one key and reads those of every configured key (so keys rotate without downtime:
    add the new key, sign with it, drop the old one once its clicks are older than the attribution window)."""

    __slots__ = ("keys", "prefix", "sign_key")

    def __init__(self, keys: Mapping[str, bytes], sign_with: str) -> None:
        self.keys = {key_id.encode("ascii"): _Key(secret) for key_id, secret in keys.items()}
        key_id = sign_with.encode("ascii")
        if not 0 < len(key_id) < 0x100:
            raise ValueError("a click id key id has 1-255 characters")
        self.sign_key = self.keys[key_id]
        self.prefix = bytes((VERSION, len(key_id))) + key_id

    def issue(self, imp: str, cid: str, crid: str, ts_ms: int) -> str:
        """The click id of one click (`ts_ms`: its time, epoch milliseconds)."""
        parts = [self.prefix, min(max(ts_ms, 0), _MAX_MS).to_bytes(6, "big")]
        for value in (imp, cid, crid):
            raw = value.encode("utf-8")
            parts.append(_length(len(raw)))
            parts.append(raw)
        message = b"".join(parts)
        token = message + self.sign_key.mac(message)
        return binascii.b2a_base64(token, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")

    def read(self, text: str) -> Click:
        """The click a click id stands for; ClickIdError when it is malformed, forged or of a key no longer listed."""
        if len(text) > MAX_CHARS:
            raise ClickIdError(MALFORMED)
        try:
            token = decode_websafe(text)
        except ValueError:
            raise ClickIdError(MALFORMED) from None
        # The smallest token: version, an empty key id, the time, three empty values and the MAC.
        if len(token) < 2 + 6 + 3 + MAC_BYTES or token[0] != VERSION:
            raise ClickIdError(MALFORMED)
        end = len(token) - MAC_BYTES
        at = 2 + token[1]
        key_id = token[2:at]
        if at + 6 > end:
            raise ClickIdError(MALFORMED)
        ts = int.from_bytes(token[at : at + 6], "big")
        at += 6
        values: list[bytes] = []
        for _ in range(3):
            if at >= end:
                raise ClickIdError(MALFORMED)
            size = token[at]
            at += 1
            if size & 0x80:
                if at >= end:
                    raise ClickIdError(MALFORMED)
                size = (size & 0x7F) << 8 | token[at]
                at += 1
            if at + size > end:
                raise ClickIdError(MALFORMED)
            values.append(token[at : at + size])  # decoded once the MAC holds
            at += size
        if at != end:
            raise ClickIdError(MALFORMED)
        key = self.keys.get(key_id)
        if key is None:
            raise ClickIdError(UNKNOWN_KEY)
        if not hmac.compare_digest(key.mac(token[:end]), token[end:]):
            raise ClickIdError(FORGED)
        try:
            imp, cid, crid = (raw.decode("utf-8") for raw in values)
        except UnicodeDecodeError:  # signed by us, so never in practice; still never a half-read click
            raise ClickIdError(MALFORMED) from None
        return Click(imp, cid, crid, ts, key_id.decode("ascii"))
