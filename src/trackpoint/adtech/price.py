"""Encrypted win prices: Google's price-confirmation scheme (HMAC-SHA1 pad and signature), used by many exchanges.

`PriceDecrypter` checks and opens one `${AUCTION_PRICE}` token (fields/macros.py spots the macro never expanded).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac

from trackpoint.security.precomputed import PrecomputedHmac

# A token is web-safe base64 (padding optional) of: initialisation vector | encrypted price | signature.
IV_BYTES = 16
PRICE_BYTES = 8
SIGNATURE_BYTES = 4
TOKEN_BYTES = IV_BYTES + PRICE_BYTES + SIGNATURE_BYTES
TOKEN_CHARS = 38  # 28 bytes in base64 without its padding

# Rejection reasons (the preprocessor answers them 400; an unexpanded macro and a price out of range are the
# price field type's reasons, in fields/).
MALFORMED = "price_malformed"
SIGNATURE_INVALID = "price_signature_invalid"
EXPIRED = "price_expired"
_FROM_WEBSAFE = bytes.maketrans(b"-_", b"+/")


class PriceError(Exception):
    """A token that cannot be trusted: `reason` is MALFORMED or SIGNATURE_INVALID."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_websafe(text: str) -> bytes:
    """Web-safe base64 (RFC 4648 §5), padded or not, strictly: ValueError on any other character."""
    stripped = text.rstrip("=")
    if len(text) - len(stripped) > 2 or not stripped.isascii():
        raise ValueError("not web-safe base64")
    raw = stripped.encode("ascii")
    if b"+" in raw or b"/" in raw:  # the standard alphabet's own characters are not web-safe
        raise ValueError("not web-safe base64")
    data = raw.translate(_FROM_WEBSAFE)
    try:
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True)
    except binascii.Error:
        raise ValueError("not web-safe base64") from None


class PriceDecrypter:
    """One exchange's keys (the raw bytes, as decoded from the web-safe base64 the exchange hands out)."""

    __slots__ = ("encryption", "integrity")

    def __init__(self, encryption_key: bytes, integrity_key: bytes) -> None:
        self.encryption = PrecomputedHmac(encryption_key, hashlib.sha1)
        self.integrity = PrecomputedHmac(integrity_key, hashlib.sha1)

    def decrypt(self, token: str) -> tuple[int, int]:
        """(the price as the exchange encodes it — a signed 64-bit integer, micros of the CPM for Google —, the
        seconds of the initialisation vector's timestamp); PriceError when the token is malformed or forged."""
        if len(token) > TOKEN_CHARS + 2:
            raise PriceError(MALFORMED)
        try:
            data = decode_websafe(token)
        except ValueError:
            raise PriceError(MALFORMED) from None
        if len(data) != TOKEN_BYTES:
            raise PriceError(MALFORMED)
        iv = data[:IV_BYTES]
        encrypted = data[IV_BYTES : IV_BYTES + PRICE_BYTES]
        pad = self.encryption.digest(iv)[:PRICE_BYTES]
        price = (int.from_bytes(encrypted, "big") ^ int.from_bytes(pad, "big")).to_bytes(PRICE_BYTES, "big")
        signature = self.integrity.digest(price + iv)[:SIGNATURE_BYTES]
        if not hmac.compare_digest(signature, data[IV_BYTES + PRICE_BYTES :]):
            raise PriceError(SIGNATURE_INVALID)
        return int.from_bytes(price, "big", signed=True), int.from_bytes(iv[:4], "big")


def decrypt_price(token: str, encryption_key: bytes, integrity_key: bytes) -> tuple[int, int]:
    """(price in micros, IV timestamp seconds) of one token; for many tokens keep a `PriceDecrypter`."""
    return PriceDecrypter(encryption_key, integrity_key).decrypt(token)


def encrypt_price(price: int, iv: bytes, encryption_key: bytes, integrity_key: bytes) -> str:
    """The token an exchange would send for `price` with this 16-byte initialisation vector (for tests and tools:
    the tracker itself only decrypts)."""
    if len(iv) != IV_BYTES:
        raise ValueError(f"the initialisation vector has {IV_BYTES} bytes")
    plain = price.to_bytes(PRICE_BYTES, "big", signed=True)
    pad = hmac.digest(encryption_key, iv, "sha1")[:PRICE_BYTES]
    encrypted = bytes(a ^ b for a, b in zip(plain, pad, strict=True))
    signature = hmac.digest(integrity_key, plain + iv, "sha1")[:SIGNATURE_BYTES]
    token = binascii.b2a_base64(iv + encrypted + signature, newline=False)
    return token.translate(bytes.maketrans(b"+/", b"-_")).rstrip(b"=").decode("ascii")
