"""CORS for event types that web pages call from another origin: origin matching, the preflight answer, and the
header lines added to responses, rendered at start-up (or once per wildcard-matched origin, in a bounded cache).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from trackpoint.config.model import Config, CorsSpec

KeyPath = tuple[str | int, ...]

# Request headers CORS reads; the edge keeps them only when some event type has CORS on.
REQUEST_HEADERS = frozenset({b"origin", b"access-control-request-method"})
ORIGIN_NOT_ALLOWED = "cors_origin_not_allowed"
# Origins matched by a wildcard pattern whose header lines are kept; past this, the cache starts over (a flood of
# forged subdomains costs a re-render, never memory).
MAX_CACHED_ORIGINS = 1024

_HOST = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
_PATTERN = re.compile(rf"(?P<scheme>https?)://(?P<wildcard>\*\.)?(?P<host>{_HOST})(?::(?P<port>[0-9]{{1,5}}))?")
# What a wildcard may stand for in a request's Origin: DNS labels, nothing a header could be abused with.
_LABELS = re.compile(_HOST.encode("ascii"))
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(pattern: str) -> tuple[str, str, bool]:
    """An `allow_origins` entry as (prefix, host, wildcard): `https://*.example.com` → ("https://",
    ".example.com", True). Lower-cased, the scheme's default port dropped (browsers send origins that way);
    raises ValueError saying what is wrong."""
    text = pattern.strip().lower()
    if text == "null":
        raise ValueError(
            "the `null` origin (sandboxed frames, local files) is any page's to claim: it cannot be allowed"
        )
    if "://" not in text:
        text = "https://" + text
    scheme, _, rest = text.partition("://")
    if "/" in rest or "?" in rest or "#" in rest:
        raise ValueError(f"an origin has no path: {pattern!r} (like `https://shop.example.com`)")
    match = _PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(
            f"not an origin: {pattern!r} (`https://shop.example.com`, `https://*.example.com` or `*`; http or https)"
        )
    port = match.group("port")
    host = match.group("host")
    if port is not None:
        number = int(port)
        if not 1 <= number <= 65535:
            raise ValueError(f"not a port: {pattern!r}")
        if number != _DEFAULT_PORTS[scheme]:
            host += f":{number}"
    wildcard = match.group("wildcard") is not None
    return f"{scheme}://", ("." + host if wildcard else host), wildcard


def splice(response: bytes, lines: bytes) -> bytes:
    """`response` with the header `lines` added right after its status line."""
    end = response.index(b"\r\n") + 2
    return response[:end] + lines + response[end:]


class CorsPolicy:
    """One event type's CORS: which origins may read its responses, and the header lines each one gets."""

    __slots__ = ("cache", "credentials", "every_origin_lines", "exact", "preflight_lines", "wildcards")

    def __init__(self, spec: CorsSpec, methods: Sequence[str]) -> None:
        self.credentials = b"Access-Control-Allow-Credentials: true\r\n" if spec.allow_credentials else b""
        exact: dict[bytes, bytes] = {}
        wildcards: list[tuple[bytes, bytes]] = []
        for pattern in spec.allow_origins:
            if pattern == "*":
                continue
            prefix, host, wildcard = parse_origin(pattern)
            if wildcard:
                wildcards.append((prefix.encode("ascii"), host.encode("ascii")))
            else:
                origin = (prefix + host).encode("ascii")
                exact[origin] = self.lines(origin)
        self.exact = exact
        self.wildcards = tuple(wildcards)
        # `*`: one set of lines for every origin, naming none (the config check refuses it with credentials).
        self.every_origin_lines = self.lines(b"*") if "*" in spec.allow_origins else None
        # Origin → header lines: the exact origins, then the wildcard matches seen since the last reset.
        self.cache = dict(exact)
        self.preflight_lines = b"".join(
            (
                b"Access-Control-Allow-Methods: " + ", ".join(methods).encode("ascii") + b"\r\n",
                b"Access-Control-Allow-Headers: " + ", ".join(spec.allow_headers).lower().encode("ascii") + b"\r\n",
                b"Access-Control-Max-Age: %d\r\n" % spec.max_age_s,
            )
        )

    def lines(self, origin: bytes) -> bytes:
        """The header lines of a response to an allowed origin."""
        return b"Access-Control-Allow-Origin: " + origin + b"\r\n" + self.credentials + b"Vary: Origin\r\n"

    def lines_for(self, origin: bytes) -> bytes | None:
        """The header lines for a request's Origin, None when that origin is not allowed."""
        found = self.cache.get(origin)
        if found is not None:
            return found
        if self.every_origin_lines is not None:
            return self.every_origin_lines
        for prefix, suffix in self.wildcards:
            end = len(origin) - len(suffix)
            if (
                end > len(prefix)
                and origin.startswith(prefix)
                and origin.endswith(suffix)
                and _LABELS.fullmatch(origin, len(prefix), end) is not None
            ):
                if len(self.cache) >= len(self.exact) + MAX_CACHED_ORIGINS:
                    self.cache = dict(self.exact)
                found = self.cache[origin] = self.lines(origin)
                return found
        return None

    def decorate(self, response: bytes, origin: bytes | None) -> bytes:
        """A response with the CORS header lines its Origin earns (unchanged without an Origin or for an origin that
        is not allowed: the browser then keeps the response from the page, and the event is recorded anyway)."""
        if origin is None:
            return response
        lines = self.lines_for(origin)
        return response if lines is None else splice(response, lines)

    def preflight(self, origin: bytes) -> bytes | None:
        """The header lines of a 204 answer to a preflight from `origin`; None when the origin is not allowed."""
        lines = self.lines_for(origin)
        return None if lines is None else lines + self.preflight_lines


def check_cors(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Configuration rules of `response.cors` (run by `trackpoint config check` and at every load)."""
    for type_name, spec in config.event_types.items():
        cors = spec.response.cors
        where: KeyPath = ("event_types", type_name, "response", "cors")
        for i, pattern in enumerate(cors.allow_origins):
            if pattern == "*":
                if cors.allow_credentials:
                    yield (
                        (*where, "allow_origins", i),
                        "`*` cannot go with allow_credentials (browsers refuse it): list the origins",
                    )
                if len(cors.allow_origins) > 1:
                    yield (*where, "allow_origins", i), "`*` already allows every origin: list nothing else"
                continue
            try:
                parse_origin(pattern)
            except ValueError as exc:
                yield (*where, "allow_origins", i), str(exc)
