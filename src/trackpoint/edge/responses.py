"""The tracking edge's responses as bytes: static ones prebuilt once a second (when the Date changes), dynamic ones
per request. Status lines, headers and the error format come from http/responses.py.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import ipaddress
import re
import unicodedata
from typing import Final
from urllib.parse import quote

import idna

from trackpoint.config.model import ResponseSpec
from trackpoint.event import Event, derived_id
from trackpoint.fields.converters import Reject
from trackpoint.http.responses import NO_STORE, Clock, head

# The smallest transparent 1x1 GIF (43 bytes), the body of every tracking pixel.
PIXEL_GIF: Final = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
assert len(PIXEL_GIF) == 43

# A redirect host: DNS labels (ASCII; IDNA as xn--), or a bracketed IPv6 literal. No `%`, no trailing dot.
_HOST_NAME: Final = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", re.ASCII)
_MACRO: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]{0,63})\}")


def _is_ipv6(host: str) -> bool:
    if "%" in host:  # a zone id means nothing to a browser on another machine
        return False
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False


# Every printable ASCII character but the space: what an IRI keeps as it is on its way to a URI (quote() encodes the
# rest, non-ASCII as UTF-8 bytes); `%` included, so escapes already there stay single.
_URI_SAFE: Final = "".join(chr(code) for code in range(0x21, 0x7F))
# Scripts that may share one host label (UTS #39 "highly restrictive"): Latin with the CJK writing systems.
_SCRIPT_MIXES: Final[tuple[frozenset[str], ...]] = (
    frozenset({"LATIN", "CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"}),
    frozenset({"LATIN", "CJK", "HANGUL"}),
    frozenset({"LATIN", "CJK", "BOPOMOFO"}),
)


def _mixes_scripts(label: str) -> bool:
    """Whether a host label mixes letters of scripts that do not go together (`paypal` with a Cyrillic `a`, U+0430,
    among the Latin letters): a homograph, refused even on an allowed suffix."""
    scripts = {unicodedata.name(char, "?").split(" ", 1)[0] for char in label if char.isalpha()}
    return len(scripts) > 1 and not any(scripts <= allowed for allowed in _SCRIPT_MIXES)


def iri_to_uri(iri: str) -> tuple[str, str | None]:
    """The ASCII URI a browser would request for `iri` (a destination with non-ASCII characters or spaces), or the
    reason it cannot be one: the host in IDNA (`xn--`, UTS #46 mapped as browsers map it: full-width letters,
    ideographic dots), everything else percent-encoded as UTF-8. Controls and invisible characters are refused,
    not encoded: a browser would strip them and go somewhere else than the text says."""
    text = iri.strip(" ")
    if not text.isprintable():  # C0/C1 controls, format characters (bidi overrides, zero-width), odd spaces
        return iri, "characters"
    scheme, sep, rest = text.partition("://")
    if not sep:
        return quote(text, safe=_URI_SAFE), None  # refused by the checks that follow (scheme)
    end = len(rest)
    for delimiter in "/?#\\":
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    if not authority.isascii():
        if "@" in authority or "\uff20" in authority:
            return iri, "userinfo"
        host, colon, port = authority.partition(":")
        if port and not (port.isascii() and port.isdigit()):
            return iri, "syntax"
        try:
            mapped = idna.uts46_remap(host, std3_rules=True, transitional=False)
            if any(_mixes_scripts(label) for label in mapped.split(".")):
                return iri, "mixed_scripts"
            authority = idna.encode(mapped, uts46=False).decode("ascii") + colon + port
        except (idna.IDNAError, UnicodeError, ValueError):
            return iri, "host"
    return scheme + "://" + authority + quote(tail, safe=_URI_SAFE), None


class RecordedReject(Reject):
    """A refused redirect: the client gets the 400, and the click is still recorded (with `redirect_rejected`)."""


class StaticResponse:
    """A response that depends only on the clock: four prebuilt variants (keep-alive or close, GET or HEAD)."""

    __slots__ = ("body", "headers", "length", "status", "variants")

    def __init__(self, status: int, headers: bytes, body: bytes, length: int | None = None) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        # The Content-Length: the body's, but a 304 names the length its 200 would have had (RFC 9110 §8.6).
        self.length = len(body) if length is None else length
        self.variants: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")

    def rebuild(self, clock: Clock) -> None:
        keep = head(clock, self.status, self.headers, self.length, True)
        close = head(clock, self.status, self.headers, self.length, False)
        # Index: 2 * is_head + keep_alive.
        self.variants = (close + self.body, keep + self.body, close, keep)


class StaticFile:
    """A file served as it is (the JS tag), every answer prebuilt at start-up: as is and gzipped (each with its own
    ETag), and 304 for an If-None-Match that names the ETag; public, so any page may load it (CORS `*`, SRI)."""

    __slots__ = ("clock", "etags", "not_modified", "whole")

    def __init__(self, content: bytes, content_type: bytes, cache_control: bytes, clock: Clock) -> None:
        self.clock = clock
        digest = hashlib.sha256(content).hexdigest()[:24].encode("ascii")
        compressed = gzip.compress(content, compresslevel=9, mtime=0)
        common = b"".join(
            (
                b"Cache-Control: " + cache_control + b"\r\n",
                b"Vary: Accept-Encoding\r\n",
                b"Access-Control-Allow-Origin: *\r\n",  # readable by any page: needed for an integrity check
                b"Cross-Origin-Resource-Policy: cross-origin\r\n",
                b"X-Content-Type-Options: nosniff\r\n",
            )
        )
        # Index 0: as is, 1: gzipped.
        self.etags = (b'"' + digest + b'"', b'"' + digest + b'-gz"')
        labels = (b"", b"Content-Encoding: gzip\r\n")
        bodies = (content, compressed)
        self.whole = tuple(
            StaticResponse(
                200, b"Content-Type: " + content_type + b"\r\n" + common + b"ETag: " + etag + b"\r\n" + label, body
            )
            for etag, label, body in zip(self.etags, labels, bodies, strict=True)
        )
        self.not_modified = tuple(
            StaticResponse(304, common + b"ETag: " + etag + b"\r\n" + label, b"", len(body))
            for etag, label, body in zip(self.etags, labels, bodies, strict=True)
        )

    @property
    def gzipped(self) -> bytes:
        return self.whole[1].body

    def rebuild(self) -> None:
        for response in (*self.whole, *self.not_modified):
            response.rebuild(self.clock)

    def render(self, headers: dict[bytes, bytes], keep_alive: bool, is_head: bool) -> bytes:
        """The answer to a GET or HEAD with these request headers."""
        coded = accepts_gzip(headers.get(b"accept-encoding"))
        etag = self.etags[coded]
        known = headers.get(b"if-none-match")
        fresh = known is not None and (etag in known or known.strip() == b"*")
        response = self.not_modified[coded] if fresh else self.whole[coded]
        return response.variants[2 * is_head + keep_alive]


def _authority(url: str) -> str:
    """What a URL's host part is written as (scheme, user info, host and port), as written."""
    scheme, slashes, rest = url.partition("//")
    if not slashes:
        return url
    end = len(rest)
    for stop in "/?#\\":
        at = rest.find(stop)
        if at != -1 and at < end:
            end = at
    return scheme + slashes + rest[:end]


def accepts_gzip(accept_encoding: bytes | None) -> bool:
    """Whether an Accept-Encoding value takes gzip: named (or else `*`) with a q above 0."""
    if accept_encoding is None:
        return False
    accept_encoding = accept_encoding.lower()
    if b"gzip" not in accept_encoding and b"*" not in accept_encoding:
        return False
    weights: dict[bytes, bytes] = {}
    for coding in accept_encoding.split(b","):
        name, _, params = coding.partition(b";")
        weights[name.strip()] = params.strip()
    weight = weights.get(b"gzip", weights.get(b"x-gzip", weights.get(b"*")))
    if weight is None:
        return False
    if not weight.startswith(b"q="):
        return True
    try:
        return float(weight[2:]) > 0
    except ValueError:
        return False


# The challenge of a postback's 401 (see security.postback_auth).
POSTBACK_CHALLENGE: Final = b'WWW-Authenticate: TP-HMAC realm="postback"\r\n'


class Responder:
    """The response of one event type."""

    def __init__(
        self,
        spec: ResponseSpec,
        clock: Clock,
        redirect_params: tuple[tuple[str, str], ...] = (),
        id_vetoes: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.kind = spec.kind
        self.clock = clock
        self.redirect_field = spec.redirect_field
        self.exact_hosts = frozenset(h.lower() for h in spec.allow_hosts if not h.startswith("."))
        self.host_suffixes = tuple(h.lower() for h in spec.allow_hosts if h.startswith("."))
        self.signed_destinations = spec.signed_destinations
        self.macros = spec.macros
        # For redirect: (query parameter, dim) pairs appended to the destination, e.g. issue_click_id's click id.
        self.redirect_params = redirect_params
        # (dim, value) pairs under which no identifier is passed on (the preprocessors' `cookie_veto`: denied consent).
        self.id_vetoes = id_vetoes
        # For redirect: where a refused destination sends the user instead of a JSON body, if the type has a page.
        self.fallback: bytes | None = None
        if spec.fallback_url is not None:
            self.fallback = (
                b"Location: "
                + spec.fallback_url.encode("ascii")
                + b"\r\nX-Reject-Reason: redirect_not_allowed\r\n"
                + NO_STORE
            )
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
        host_free = signed and self.signed_destinations
        refused = None
        if self.macros and "{" in location:
            withheld = any(event.dims.get(dim) == value for dim, value in self.id_vetoes)
            template, location = location, self.expand(location, event, withheld)
            if host_free and _authority(location) != _authority(template):
                # The signature covers the template: a macro filled from an unsigned field must not finish its host.
                refused = "macro_in_host"
        if refused is None:
            location, refused = self.destination(location, host_free)
        if refused is not None:
            event.dims["redirect_rejected"] = refused
            # Never the id of the click it was refused instead of (the same imp): a consumer keeps both.
            event.id = derived_id(event.type, [event.id, "redirect_rejected"])
            raise RecordedReject(400, "redirect_not_allowed", self.redirect_field)
        if self.redirect_params:
            dims = event.dims
            location = with_params(location, [(name, dims[dim]) for name, dim in self.redirect_params if dim in dims])
        headers = b"Location: " + location.encode("ascii") + b"\r\n" + NO_STORE
        return head(self.clock, 302, headers, 0, keep_alive)

    def refused(self, keep_alive: bool, is_head: bool) -> bytes | None:
        """The answer to a refused redirect when the type has a `fallback_url`: 302 there, with the reason in
        `X-Reject-Reason` (None: the usual 400)."""
        if self.fallback is None:
            return None
        return head(self.clock, 302, self.fallback, 0, keep_alive)

    @staticmethod
    def expand(url: str, event: Event, withheld: bool = False) -> str:
        """`{name}` → the event's field `name`; `{click_id}` → the click id issue_click_id issued, else (like
        `{event_id}`) the event id, but nothing when identifiers are `withheld` (denied consent); URL-encoded."""
        dims = event.dims

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            found = dims.get(name)
            if found is None:
                number = event.metrics.get(name)
                if number is not None:
                    found = str(number)
                elif name == "click_id" and withheld:
                    found = ""
                elif name in ("click_id", "event_id"):
                    found = event.id
                else:
                    return match.group(0)
            return quote(found, safe="")

        return _MACRO.sub(value, url)

    def destination(self, url: str, host_free: bool) -> tuple[str, str | None]:
        """The `Location` for a destination, and why it may not be redirected to (None: it may)."""
        if not url.isascii() or " " in url:  # an IRI (`?q=äpfel rot`): its URI is what the browser gets
            url, refused = iri_to_uri(url)
            if refused is not None:
                return url, refused
        return url, self.refusal(url, host_free)

    def refusal(self, url: str, host_free: bool) -> str | None:
        """Why the URI `url` may not be redirected to (None: it may). Only absolute http(s) URLs with a plain host
        pass, and unless `host_free` (a signed destination) only on allowed hosts: no open redirect, and nothing a
        browser could read differently from us (control characters, backslashes, userinfo, encoded hosts). An IRI
        is checked as the URI `iri_to_uri` makes of it: what is checked is what the browser is sent to."""
        if not url.isascii() or not url.isprintable() or " " in url:
            return "characters"  # CR/LF, tab, NUL, space, non-ASCII
        if "\\" in url:
            return "backslash"  # browsers read `\` as `/`: https://good.test\@evil.test
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or rest.startswith("/"):
            return "scheme"  # javascript:, data:, //scheme-relative, https:/evil, https:///evil
        host, refused = browser_host(rest)
        if refused is not None:
            return refused
        if "xn--" in host:  # an IDNA host sent as such: the same rules as one that came as Unicode
            try:
                if any(_mixes_scripts(label) for label in idna.decode(host).split(".")):
                    return "mixed_scripts"
            except (idna.IDNAError, UnicodeError, ValueError):
                return "host"
        if host_free:
            return None
        if host not in self.exact_hosts and not host.endswith(self.host_suffixes):
            return "host_not_allowed"
        return None


# A host's last label that makes a browser read the whole host as an IPv4 address (WHATWG "ends in a number"):
# decimal, octal (leading 0) or hexadecimal (0x) digits.
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*", re.ASCII)


def browser_host(rest: str) -> tuple[str, str | None]:
    """The host a browser goes to for an http(s) URL whose text after `://` is `rest` (ASCII, printable, no
    backslash), read as the WHATWG URL parser reads it, and the reason it is refused (None: a plain host, lower
    case). Not urlsplit's `hostname`: that takes what lies between `[` and `]` anywhere in the authority
    (`https://evil.test[v1.example.com]/` is `v1.example.com` to it, an invalid URL to a browser), and reads
    `0x7f.1` as a name where a browser goes to 127.0.0.1."""
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    authority = rest[:end]
    if "@" in authority:
        return "", "userinfo"
    if authority.startswith("["):  # an IPv6 literal: the whole host, then nothing or a port
        close = authority.find("]")
        host, after = authority[1:close].lower(), authority[close + 1 :]
        if close == -1 or (after and not after.startswith(":")):
            return "", "syntax"
        port = after[1:]
        if not _is_ipv6(host):
            return "", "host"
    else:
        host, _, port = authority.partition(":")
        host = host.lower()
        if "[" in host or "]" in host:
            return "", "host"
        if _HOST_NAME.fullmatch(host) is None:
            return "", "host"  # percent-encoded, empty, trailing dot, odd characters
        if _NUMERIC_LABEL.fullmatch(host.rpartition(".")[2]):
            # An IPv4 address to a browser: only as the four decimal numbers it goes to (not 2130706433,
            # 0x7f.1 or 0177.0.0.1, nor good.test.1, which no browser opens).
            try:
                canonical = str(ipaddress.IPv4Address(host)) == host
            except ValueError:
                canonical = False
            if not canonical:
                return "", "host"
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        return "", "syntax"  # malformed, out of range, or a second colon
    return host, None


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
