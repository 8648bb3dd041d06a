"""Postback authentication: server-to-server postbacks (conversions) signed with a shared secret per advertiser.

The advertiser's server sends `X-TP-Timestamp` (epoch seconds) and `X-TP-Signature`, the hex HMAC-SHA256 of
`timestamp \\n query \\n body` under its secret; `sign_postback` computes it. Checked on the request path after the
event is built (the advertiser is one of its fields), before any preprocessor.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from urllib.parse import unquote_to_bytes

from trackpoint.config.model import PostbackAuthSpec, SecretSource
from trackpoint.event import Event
from trackpoint.fields.converters import Reject
from trackpoint.security.secrets import SecretError, read_source

TIMESTAMP_HEADER = b"x-tp-timestamp"
SIGNATURE_HEADER = b"x-tp-signature"
AUTHENTICATED_DIM = "authenticated"

# Rejection reasons: 401 when credentials are missing, 403 when they are wrong.
MISSING = "postback_auth_missing"
INVALID = "postback_auth_invalid"
EXPIRED = "postback_auth_expired"
UNKNOWN_ADVERTISER = "postback_advertiser_unknown"


def sign_postback(secret: bytes, query: str, body: bytes = b"", timestamp: int | None = None) -> dict[str, str]:
    """The two headers that authenticate a postback: `query` is the query string exactly as sent (without `?`),
    `body` the body exactly as sent (empty for GET).

    >>> query = "adv=acme&click_id=AQRhdXRv...&order_id=A-1001&value=49.90"
    >>> requests.get(f"https://t.example.com/conv?{query}", headers=sign_postback(secret, query))
    """
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    message = stamp.encode("ascii") + b"\n" + query.encode("utf-8") + b"\n" + body
    return {"X-TP-Timestamp": stamp, "X-TP-Signature": hmac.digest(secret, message, "sha256").hex()}


def read_advertiser_secret(advertiser: str, source: SecretSource, data_dir: str) -> bytes:
    """One advertiser's secret (a secret_file relative to data_dir unless absolute); SecretError naming the option."""
    try:
        return read_source(source, data_dir)
    except SecretError as exc:
        raise SecretError(exc.option, f"postback_auth: advertiser {advertiser!r}: {exc.reason}") from None


class PostbackAuth:
    """An event type's postback authentication as the request path applies it."""

    __slots__ = ("clock", "field", "flag", "max_skew_s", "required", "secrets", "token_param")

    header_names = frozenset({TIMESTAMP_HEADER, SIGNATURE_HEADER})

    def __init__(self, spec: PostbackAuthSpec, data_dir: str) -> None:
        self.required = spec.mode == "required"
        self.flag = spec.mode == "optional"
        self.field = spec.advertiser_field
        self.secrets = {name: read_advertiser_secret(name, source, data_dir) for name, source in spec.secrets.items()}
        self.max_skew_s = spec.max_skew_s
        self.token_param = None if spec.token_param is None else spec.token_param.encode("utf-8") + b"="
        self.clock: Callable[[], float] = time.time

    def check(self, event: Event, query: bytes, body: bytes | bytearray | None, headers: dict[bytes, bytes]) -> None:
        """Passes an authenticated postback (and, under optional, one without credentials); otherwise raises
        `Reject(401 or 403, reason)`."""
        signature = headers.get(SIGNATURE_HEADER)
        token = None
        if signature is None and self.token_param is not None:
            token = _query_value(query, self.token_param)
        if signature is None and token is None:
            if self.required:
                raise Reject(401, MISSING)
            if self.flag:
                event.dims[AUTHENTICATED_DIM] = "0"
            return
        advertiser = event.dims.get(self.field)
        secret = None if advertiser is None else self.secrets.get(advertiser)
        if secret is None:
            raise Reject(403, UNKNOWN_ADVERTISER, self.field)
        if signature is not None:
            stamp = headers.get(TIMESTAMP_HEADER, b"").strip()
            if not stamp.isdigit() or len(stamp) > 12:
                raise Reject(403, INVALID)
            if abs(self.clock() - int(stamp)) > self.max_skew_s:
                raise Reject(403, EXPIRED)
            message = b"".join((stamp, b"\n", query, b"\n", body or b""))
            expected = hmac.digest(secret, message, "sha256").hex().encode("ascii")
            if not hmac.compare_digest(expected, signature.strip().lower()):
                raise Reject(403, INVALID)
        elif token is None or not hmac.compare_digest(unquote_to_bytes(token.replace(b"+", b" ")), secret):
            raise Reject(403, INVALID)
        if self.flag:
            event.dims[AUTHENTICATED_DIM] = "1"


def _query_value(query: bytes, prefix: bytes) -> bytes | None:
    """The raw value of the first `name=` pair (`prefix` is `name=`) of a query, or None."""
    for pair in query.split(b"&"):
        if pair.startswith(prefix):
            return pair[len(prefix) :]
    return None
