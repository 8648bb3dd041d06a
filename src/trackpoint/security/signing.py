"""Signed tracking URLs: HMAC-SHA256 over the request path and a canonical form of the query, with key ids.

`sign_url` signs a URL (for ad servers and creatives); `Verifier` checks a request's raw query in a few µs. An event
type may sign only some parameters (`signed_params`: the DSP's own, leaving the exchange's macros free), and a
signed request with a body carries its SHA-256 in `bd`, so the body is covered too.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import time
from collections.abc import Collection, Iterable, Mapping
from operator import itemgetter
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes, urlsplit, urlunsplit

from trackpoint.config.model import Config, EventTypeSpec, SigningConfig, SigningKey
from trackpoint.fields.converters import Reject
from trackpoint.security.keyfile import create_key_file
from trackpoint.security.precomputed import PrecomputedHmac
from trackpoint.security.secrets import SecretError, read_source, secret_path

# The parameters the signature adds: key id, expiry (epoch seconds, optional) and the MAC itself.
KEY_ID_PARAM = "kid"
EXPIRES_PARAM = "exp"
SIGNATURE_PARAM = "sig"
SIGNATURE_PARAMS = frozenset({KEY_ID_PARAM, EXPIRES_PARAM, SIGNATURE_PARAM})
# The body digest: base64url SHA-256 of the raw request body, an ordinary parameter covered by every signature.
BODY_DIGEST_PARAM = "bd"
# Always covered, whatever an event type's `signed_params` lists.
ALWAYS_COVERED = frozenset({KEY_ID_PARAM, EXPIRES_PARAM, BODY_DIGEST_PARAM})
MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits: 22 characters of base64url

# Rejection reasons (all answered 403).
MISSING = "signature_missing"
INVALID = "signature_invalid"
EXPIRED = "signature_expired"
UNKNOWN_KEY = "unknown_key"
BODY_UNSIGNED = "body_unsigned"
BODY_DIGEST_INVALID = "body_digest_invalid"

_by_name = itemgetter(0)
_SIGNATURE_NAMES = frozenset({b"kid", b"exp", b"sig"})
_URLSAFE = bytes.maketrans(b"+/", b"-_")
_MAC_CHARS = 22  # 16 bytes in base64, without the padding


# A configured signing key cannot be read (missing variable or file, too short): the one secrets error.
SigningKeyError = SecretError


def _escape(raw: bytes) -> bytes:
    return raw.replace(b"%", b"%25").replace(b"&", b"%26").replace(b"=", b"%3D")


def _canonical_pair(pair: bytes) -> tuple[bytes, bytes]:
    """(sort key, `name=value`): the decoded name and value with only `%`, `&` and `=` escaped, so every
    encoding of the same pair (`+`, `%20`, `%41` for `A`, ...) has one form, and no two pairs share it."""
    name, _, value = pair.partition(b"=")
    if b"%" in pair or b"+" in pair:
        name = _escape(unquote_to_bytes(name.replace(b"+", b" ")))
        value = _escape(unquote_to_bytes(value.replace(b"+", b" ")))
    elif b"=" in value:
        value = value.replace(b"=", b"%3D")
    return name, name + b"=" + value


def canonical(path: bytes, pairs: Iterable[bytes]) -> bytes:
    """The signed message: the path, then the query's pairs (the signature parameter excluded by the caller) in
    their canonical form, ordered by name. The sort is stable: repeated names keep their order, so swapping two
    values of one name (the edge reads the first) breaks the signature."""
    keyed = [_canonical_pair(pair) for pair in pairs if pair]
    keyed.sort(key=_by_name)
    return path + b"?" + b"&".join([pair for _, pair in keyed])


def mac(secret: bytes, message: bytes) -> bytes:
    """The signature value: base64url (no padding) of HMAC-SHA256 truncated to 128 bits."""
    return _b64(hmac.digest(secret, message, "sha256"))


def _b64(digest: bytes) -> bytes:
    return binascii.b2a_base64(digest[:MAC_BYTES], newline=False).translate(_URLSAFE)[:_MAC_CHARS]


def body_digest(body: bytes | bytearray) -> bytes:
    """The `bd` value of a body: base64url (no padding) of its full SHA-256, 43 characters."""
    return binascii.b2a_base64(hashlib.sha256(body).digest(), newline=False).translate(_URLSAFE).rstrip(b"=")


def _covered_name(pair: str, covered: Collection[str]) -> bool:
    """Whether a query pair is signed under a `signed_params` list: its decoded name is listed, or is one of the
    signature's own parameters. Decoded, so `%69mp` cannot slip an unsigned `imp` past the signature."""
    name = _canonical_pair(pair.encode("utf-8"))[0].decode("utf-8", "replace")
    return name in covered or name in ALWAYS_COVERED


class _Key(PrecomputedHmac):
    """A URL-signing key: the MAC as the `sig` parameter carries it."""

    __slots__ = ()

    def mac(self, message: bytes) -> bytes:
        return _b64(self.digest(message))


def sign_url(  # noqa: PLR0917 (the CLI passes each option on)
    url: str,
    key_id: str,
    secret: bytes,
    expires_at: int | None = None,
    covered: Collection[str] | None = None,
    body: bytes | None = None,
) -> str:
    """Signs a tracking URL: returns it with `kid`, `exp` (when `expires_at`, epoch seconds, is given), `bd` (when
    a `body` is given: the request will carry exactly these bytes) and `sig` added; signature parameters it already
    had are replaced. The signature covers the path and every query parameter, or with `covered` (an event type's
    `signed_params`) only those: the others (an exchange's `${AUCTION_PRICE}` ...) follow `sig` and stay free to
    be substituted. The host is not covered, so one signed URL works behind any host name of the tracker.

    >>> sign_url("https://t.example.com/c?imp=1&url=https%3A%2F%2Fshop.test%2F", "k1", secret, int(time()) + 86400)
    """
    parts = urlsplit(url)
    kept = [
        pair
        for pair in parts.query.split("&")
        if pair and pair.partition("=")[0] not in SIGNATURE_PARAMS and pair.partition("=")[0] != BODY_DIGEST_PARAM
    ]
    free = [] if covered is None else [pair for pair in kept if not _covered_name(pair, covered)]
    if free:
        kept = [pair for pair in kept if _covered_name(pair, covered or ())]
    kept.append(f"{KEY_ID_PARAM}={quote(key_id, safe='')}")
    if expires_at is not None:
        kept.append(f"{EXPIRES_PARAM}={int(expires_at)}")
    if body is not None:
        kept.append(f"{BODY_DIGEST_PARAM}={body_digest(body).decode('ascii')}")
    # In the signed order (by name, stable), `sig` last: a URL that reaches the edge as it was signed is verified
    # on its raw bytes, without taking the query apart (Verifier's fast path).
    kept.sort(key=lambda pair: _canonical_pair(pair.encode("utf-8"))[0])
    query = "&".join(kept)
    message = canonical((parts.path or "/").encode("utf-8"), query.encode("utf-8").split(b"&"))
    signature = mac(secret, message).decode("ascii")
    return urlunsplit(parts._replace(query="&".join([query, f"{SIGNATURE_PARAM}={signature}", *free])))


class Verifier:
    """Checks signed requests against the configured keys (several at once: keys rotate without downtime)."""

    __slots__ = ("keys",)

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self.keys = {key_id.encode("utf-8"): _Key(secret) for key_id, secret in keys.items()}

    def verify(
        self, path: bytes, query: bytes, now: float | None = None, covered: frozenset[bytes] | None = None
    ) -> str | None:
        """None when the query carries a valid, unexpired signature for `path`; otherwise the rejection reason.
        `covered`: the only parameter names signed (with kid, exp and bd); None: every parameter."""
        if b"sig=" not in query:
            return MISSING
        if covered is not None:
            return self._verify_canonical(path, query, now, covered)
        # Fast path: a query that arrives as `sign_url` wrote it (canonical pairs in order, `sig` last) is its own
        # signed message. One MAC over the raw bytes; anything else (re-ordered, re-encoded) takes the full path.
        cut = query.rfind(b"&sig=")
        if cut > 0 and b"%" not in query and b"+" not in query:
            signed = query[:cut]
            key_id = _param(signed, b"kid")
            key = self.keys.get(key_id) if key_id is not None else None
            if key is not None and hmac.compare_digest(key.mac(path + b"?" + signed), query[cut + 5 :]):
                return _expiry(_param(signed, b"exp"), now)
        return self._verify_canonical(path, query, now)

    def _verify_canonical(
        self, path: bytes, query: bytes, now: float | None, covered: frozenset[bytes] | None = None
    ) -> str | None:
        # Signature parameters are recognised by their literal names only; an encoded look-alike (`%73ig`) is an
        # ordinary parameter, covered by the MAC like any other. One pass splits, finds them and canonicalises.
        signature = key_id = expires = None
        keyed: list[tuple[bytes, bytes]] = []
        append = keyed.append
        encoded = b"%" in query or b"+" in query
        for pair in query.split(b"&"):
            name, equals, value = pair.partition(b"=")
            if name in _SIGNATURE_NAMES:
                if name == b"sig":
                    if signature is not None:  # two signatures: which one would a reader believe?
                        return INVALID
                    signature = value
                    continue
                if name == b"kid":
                    if key_id is not None:
                        return INVALID
                    key_id = value
                else:
                    if expires is not None:
                        return INVALID
                    expires = value
            elif covered is not None:
                # Decoded names decide, as the event builder reads them (`%69mp` is `imp`).
                plain = b"%" not in name and b"+" not in name
                if (name if plain else _canonical_pair(pair)[0]) not in covered:
                    continue  # not signed: an exchange's macro, free to be substituted
            if equals and b"=" not in value and (not encoded or (b"%" not in pair and b"+" not in pair)):
                append((name, pair))  # the usual pair is its own canonical form
            elif pair:
                append(_canonical_pair(pair))
        if signature is None:
            return MISSING
        key = self.keys.get(key_id) if key_id is not None else None
        if key is None:
            return UNKNOWN_KEY
        keyed.sort(key=_by_name)
        message = path + b"?" + b"&".join([canonical_pair for _, canonical_pair in keyed])
        if not hmac.compare_digest(key.mac(message), signature):
            return INVALID
        return _expiry(expires, now)  # covered by the MAC, so checked after it


def _param(query: bytes, name: bytes) -> bytes | None:
    """The value of the first `name=` pair of a raw query (no decoding), or None."""
    start = 0
    prefix = name + b"="
    while True:
        at = query.find(prefix, start)
        if at == -1:
            return None
        if at == 0 or query[at - 1] == 0x26:  # at a pair boundary ("&")
            end = query.find(b"&", at)
            return query[at + len(prefix) : end if end != -1 else len(query)]
        start = at + 1


def _expiry(expires: bytes | None, now: float | None) -> str | None:
    if expires is None:
        return None
    if not expires.isdigit():
        return INVALID
    if int(expires) < (time.time() if now is None else now):
        return EXPIRED
    return None


# --- keys ------------------------------------------------------------------------------------------------------


def key_path(key: SigningKey, data_dir: str) -> Path:
    assert key.secret_file is not None
    return secret_path(key.secret_file, data_dir)


def load_key(key_id: str, key: SigningKey, data_dir: str) -> bytes:
    """The secret of one configured key; a `generate` key file is created on first use."""
    if key.generate and key.secret_env is None and key.secret_file is not None:
        path = key_path(key, data_dir)
        if not path.exists():
            create_key_file(path)
    try:
        return read_source(key, data_dir)
    except SecretError as exc:
        raise SecretError(exc.option, f"signing key {key_id!r}: {exc.reason}") from None


def load_keys(config: SigningConfig, data_dir: str) -> dict[str, bytes]:
    """Every configured key's secret, by key id; raises SigningKeyError naming the first that cannot be read."""
    return {key_id: load_key(key_id, key, data_dir) for key_id, key in config.keys.items()}


def covered_params(config: Config, url: str) -> list[str] | None:
    """What a signature of this URL must cover: the `signed_params` of the event type at its path; None (every
    parameter) when that type lists none or no type has the path."""
    path = urlsplit(url).path or "/"
    found = next((spec.signed_params for spec in config.event_types.values() if path in spec.paths), None)
    return found or None


def signing_key_id(config: SigningConfig) -> str:
    """The key new URLs are signed with: `sign_with`, or the first key listed."""
    return config.sign_with or next(iter(config.keys))


# --- the edge's per-event-type check ---------------------------------------------------------------------------


class RequestSignature:
    """An event type's signature policy as the request path applies it, before any other work.

    required: an unsigned request is refused; optional: it is accepted (`flag`: the event gets `dims.signed`);
    `signed_destinations` alone (signature off): a signature is checked only when present, to free the redirect.
    A present but bad signature is refused (403) under all three."""

    __slots__ = ("covered", "flag", "required", "takes_body", "verifier")

    def __init__(
        self, verifier: Verifier, policy: str, signed_params: Collection[str] = (), takes_body: bool = False
    ) -> None:
        self.verifier = verifier
        self.required = policy == "required"
        self.flag = policy == "optional"
        self.covered = (
            frozenset(name.encode("utf-8") for name in (*signed_params, *ALWAYS_COVERED)) if signed_params else None
        )
        # A signed type that takes POST: the body of a signed request must be the one signed (`bd`).
        self.takes_body = takes_body and policy != "off"

    def check(self, path: bytes, query: bytes, body: bytes | bytearray | None = None, whole: bool = False) -> bool:
        """True: validly signed, its body too where the type takes one; False: unsigned and allowed; otherwise
        `Reject(403, reason)`. `whole`: a batch, whose items inherit the URL's parameters and are the body: the
        signature must cover every parameter, whatever `signed_params` says, and the body."""
        reason = self.verifier.verify(path, query, None, None if whole else self.covered)
        if reason is None:
            if whole or self.takes_body:
                check_body(query, body)
            return True
        if reason == MISSING and not self.required:
            return False
        raise Reject(403, reason)


def checks_signature(spec: EventTypeSpec) -> bool:
    """Whether an event type's requests go through a signature check (its policy, or signed redirects)."""
    return spec.signature != "off" or (spec.response.kind == "redirect" and spec.response.signed_destinations)


def request_signature(spec: EventTypeSpec, verifier: Verifier | None) -> RequestSignature | None:
    """The check an event type needs, or None when it uses no signatures (then the request path skips it)."""
    if not checks_signature(spec):
        return None
    assert verifier is not None, "keys are loaded when an event type uses signatures"
    return RequestSignature(verifier, spec.signature, spec.signed_params, "POST" in spec.methods)


def check_body(query: bytes, body: bytes | bytearray | None) -> None:
    """For a signed request of a type that takes POST, after its signature was verified: the body must be the one
    signed (`bd`), and a body needs a `bd` (`Reject(403, body_unsigned / body_digest_invalid)`). Unsigned requests
    (an optional signature) are not checked: nothing of theirs is trusted."""
    if _param(query, b"sig") is None:
        return
    digest = _param(query, BODY_DIGEST_PARAM.encode("ascii"))
    if digest is None:
        if body:
            raise Reject(403, BODY_UNSIGNED)
        return
    if not hmac.compare_digest(body_digest(body or b""), digest):
        raise Reject(403, BODY_DIGEST_INVALID)


def edge_verifier(config: Config) -> Verifier | None:
    """The verifier of a worker, with every configured key; None when no event type checks signatures (then no
    key is read or generated)."""
    if not any(checks_signature(spec) for spec in config.event_types.values()):
        return None
    return Verifier(load_keys(config.signing, config.data_dir))
