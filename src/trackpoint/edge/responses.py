"""The tracking edge's responses as bytes: static ones prebuilt once a second (when the Date changes), dynamic ones
per request. Status lines, headers and the error format come from http/responses.py.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from urllib.parse import quote, urlsplit

from trackpoint.config.model import ResponseSpec
from trackpoint.event import Event
from trackpoint.fields.converters import Reject
from trackpoint.http.responses import NO_STORE, Clock, head

# The smallest transparent 1x1 GIF (43 bytes), the body of every tracking pixel.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
assert len(PIXEL_GIF) == 43

# A redirect host: DNS labels (ASCII; IDNA as xn--), or a bracketed IPv6 literal. No `%`, no trailing dot.
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", re.ASCII)
_MACRO = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def _is_ipv6(host: str) -> bool:
    if "%" in host:  # a zone id means nothing to a browser on another machine
        return False
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


class RecordedReject(Reject):
    """A refused redirect: the client gets the 400, and the click is still recorded (with `redirect_rejected`)."""

    __slots__ = ()


class StaticResponse:
    """A response that depends only on the clock: four prebuilt variants (keep-alive or close, GET or HEAD)."""

    __slots__ = ("body", "headers", "status", "variants")

    def __init__(self, status: int, headers: bytes, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.variants: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")

    def rebuild(self, clock: Clock) -> None:
        keep = head(clock, self.status, self.headers, len(self.body), True)
        close = head(clock, self.status, self.headers, len(self.body), False)
        # Index: 2 * is_head + keep_alive.
        self.variants = (close + self.body, keep + self.body, close, keep)


# The challenge of a postback's 401 (see security.postback_auth).
POSTBACK_CHALLENGE = b'WWW-Authenticate: TP-HMAC realm="postback"\r\n'


class Responder:
    """The response of one event type."""

    def __init__(self, spec: ResponseSpec, clock: Clock, redirect_params: tuple[tuple[str, str], ...] = ()) -> None:
        self.kind = spec.kind
        self.clock = clock
        self.redirect_field = spec.redirect_field
        self.exact_hosts = frozenset(h.lower() for h in spec.allow_hosts if not h.startswith("."))
        self.host_suffixes = tuple(h.lower() for h in spec.allow_hosts if h.startswith("."))
        self.signed_destinations = spec.signed_destinations
        self.macros = spec.macros
        # For redirect: (query parameter, dim) pairs appended to the destination, e.g. issue_click_id's click id.
        self.redirect_params = redirect_params
        self.static: StaticResponse | None = None
        if spec.kind == "gif":
            self.static = StaticResponse(200, b"Content-Type: image/gif\r\n" + NO_STORE, PIXEL_GIF)
        elif spec.kind == "no_content":
            self.static = StaticResponse(204, NO_STORE, b"")

    def rebuild(self) -> None:
        if self.static is not None:
            self.static.rebuild(self.clock)

    def with_header(self, header: bytes, keep_alive: bool, is_head: bool) -> bytes:
        """The static response plus one header line, built per request (only for a new user id cookie; the load
        check allows the cookie on gif and no_content responses only)."""
        static = self.static
        assert static is not None
        response = head(self.clock, static.status, static.headers + header, len(static.body), keep_alive)
        return response if is_head else response + static.body

    def render(self, event: Event, keep_alive: bool, is_head: bool, signed: bool = False) -> bytes:
        """The response bytes; `signed`: the request carried a valid signature (a redirect may then leave
        allow_hosts). A refused redirect raises `RecordedReject` after marking the event."""
        static = self.static
        if static is not None:
            return static.variants[2 * is_head + keep_alive]
        if self.kind == "json":
            body = b'{"id":"' + event.id.encode("ascii") + b'"}'
            response = head(self.clock, 200, b"Content-Type: application/json\r\n" + NO_STORE, len(body), keep_alive)
            return response if is_head else response + body
        location = event.dims.get(self.redirect_field, "")
        if self.macros and "{" in location:
            location = self.expand(location, event)
        refused = self.refusal(location, signed and self.signed_destinations)
        if refused is not None:
            event.dims["redirect_rejected"] = refused
            raise RecordedReject(400, "redirect_not_allowed", self.redirect_field)
        if self.redirect_params:
            dims = event.dims
            location = with_params(location, [(name, dims[dim]) for name, dim in self.redirect_params if dim in dims])
        headers = b"Location: " + location.encode("ascii") + b"\r\n" + NO_STORE
        return head(self.clock, 302, headers, 0, keep_alive)

    @staticmethod
    def expand(url: str, event: Event) -> str:
        """`{name}` → the event's field `name`; `{click_id}` → the click id issue_click_id issued, else (like
        `{event_id}`) the event id; URL-encoded."""
        dims = event.dims

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            found = dims.get(name)
            if found is None:
                number = event.metrics.get(name)
                if number is not None:
                    found = str(number)
                elif name in ("click_id", "event_id"):
                    found = event.id
                else:
                    return match.group(0)
            return quote(found, safe="")

        return _MACRO.sub(value, url)

    def refusal(self, url: str, host_free: bool) -> str | None:
        """Why `url` may not be redirected to (None: it may). Only absolute http(s) URLs with a plain host pass,
        and unless `host_free` (a signed destination) only on allowed hosts: no open redirect, and nothing a
        browser could read differently from us (control characters, backslashes, userinfo, encoded hosts)."""
        if not url.isascii() or not url.isprintable() or " " in url:
            return "characters"  # CR/LF, tab, NUL, space, non-ASCII
        if "\\" in url:
            return "backslash"  # browsers read `\` as `/`: https://good.test\@evil.test
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or rest.startswith("/"):
            return "scheme"  # javascript:, data:, //scheme-relative, https:/evil, https:///evil
        try:
            parts = urlsplit(url)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises ValueError on a malformed or out-of-range port
        except ValueError:
            return "syntax"
        if "@" in parts.netloc:
            return "userinfo"
        if _HOST_NAME.fullmatch(host) is None and not _is_ipv6(host):
            return "host"  # percent-encoded, empty, trailing dot, odd characters
        if host_free:
            return None
        if host not in self.exact_hosts and not host.endswith(self.host_suffixes):
            return "host_not_allowed"
        return None


def with_params(url: str, params: list[tuple[str, str]]) -> str:
    """`url` with `name=value` pairs appended to its query (before any `#fragment`; pairs of those names already
    there are replaced). Values are URL-encoded."""
    if not params:
        return url
    url, hash_sign, fragment = url.partition("#")
    base, _, query = url.partition("?")
    pairs = [f"{name}={quote(value, safe='-_.~')}" for name, value in params]
    if query:
        names = {name for name, _ in params}
        pairs[:0] = [pair for pair in query.split("&") if pair and pair.partition("=")[0] not in names]
    return base + "?" + "&".join(pairs) + hash_sign + fragment
