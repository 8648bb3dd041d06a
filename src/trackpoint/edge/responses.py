"""HTTP responses as bytes: static ones prebuilt once a second (when the Date changes), dynamic ones per request.

Every response the edge can send is made here, so the status lines, the headers and the reject format have one home.
"""

from __future__ import annotations

import base64
from email.utils import formatdate
from urllib.parse import urlsplit

import msgspec

from trackpoint.config.model import ResponseSpec
from trackpoint.pipeline.event import Event
from trackpoint.pipeline.fields import Reject

# The smallest transparent 1x1 GIF (43 bytes), the body of every tracking pixel.
PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
assert len(PIXEL_GIF) == 43

REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    302: "Found",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
NO_STORE = b"Cache-Control: no-store, no-cache, must-revalidate, max-age=0\r\n"
KEEP_ALIVE = b"Connection: keep-alive\r\n"
CLOSE = b"Connection: close\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def http_date() -> bytes:
    return formatdate(usegmt=True).encode("ascii")


class Clock:
    """The current Date header line, refreshed by the worker once a second."""

    __slots__ = ("date_line",)

    def __init__(self) -> None:
        self.date_line = b""
        self.refresh()

    def refresh(self) -> None:
        self.date_line = b"Date: " + http_date() + b"\r\n"


def head(clock: Clock, status: int, headers: bytes, length: int, keep_alive: bool) -> bytes:
    """Status line and headers of a response with a body of `length` bytes."""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\nServer: trackpoint\r\n" % (status, REASONS[status].encode("ascii")),
            clock.date_line,
            headers,
            b"Content-Length: %d\r\n" % length,
            KEEP_ALIVE if keep_alive else CLOSE,
            b"\r\n",
        )
    )


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


def reject_body(reason: str, field: str | None) -> bytes:
    return msgspec.json.encode({"error": reason, "field": field} if field else {"error": reason})


def reject(  # noqa: PLR0917 - called from one place, with the request's own flags
    clock: Clock, status: int, reason: str, field: str | None, keep_alive: bool, is_head: bool
) -> bytes:
    """A rejection: status, `X-Reject-Reason` header and a small JSON body naming the reason (and field)."""
    body = reject_body(reason, field)
    headers = b"X-Reject-Reason: " + reason.encode("ascii") + b"\r\nContent-Type: application/json\r\n" + NO_STORE
    if status == 405:
        headers += b"Allow: GET, HEAD, POST\r\n"
    response = head(clock, status, headers, len(body), keep_alive)
    return response if is_head else response + body


class Responder:
    """The response of one event type."""

    def __init__(self, spec: ResponseSpec, clock: Clock) -> None:
        self.kind = spec.kind
        self.clock = clock
        self.redirect_field = spec.redirect_field
        self.exact_hosts = frozenset(h.lower() for h in spec.allow_hosts if not h.startswith("."))
        self.host_suffixes = tuple(h.lower() for h in spec.allow_hosts if h.startswith("."))
        self.static: StaticResponse | None = None
        if spec.kind == "gif":
            self.static = StaticResponse(200, b"Content-Type: image/gif\r\n" + NO_STORE, PIXEL_GIF)
        elif spec.kind == "no_content":
            self.static = StaticResponse(204, NO_STORE, b"")

    def rebuild(self) -> None:
        if self.static is not None:
            self.static.rebuild(self.clock)

    def render(self, event: Event, keep_alive: bool, is_head: bool) -> bytes:
        static = self.static
        if static is not None:
            return static.variants[2 * is_head + keep_alive]
        if self.kind == "json":
            body = b'{"id":"' + event.id.encode("ascii") + b'"}'
            response = head(self.clock, 200, b"Content-Type: application/json\r\n" + NO_STORE, len(body), keep_alive)
            return response if is_head else response + body
        location = self.safe_destination(event.dims.get(self.redirect_field, ""))
        headers = b"Location: " + location.encode("ascii") + b"\r\n" + NO_STORE
        return head(self.clock, 302, headers, 0, keep_alive)

    def safe_destination(self, url: str) -> str:
        """The destination if it is an http(s) URL on an allowed host; otherwise `Reject` (no open redirect)."""
        if not url.isascii() or not url.isprintable() or "\\" in url or " " in url:
            raise Reject(400, "redirect_not_allowed", self.redirect_field)
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise Reject(400, "redirect_not_allowed", self.redirect_field) from None
        if parts.scheme not in ("http", "https") or "@" in parts.netloc or not host:
            raise Reject(400, "redirect_not_allowed", self.redirect_field)
        if host not in self.exact_hosts and not host.endswith(self.host_suffixes):
            raise Reject(400, "redirect_not_allowed", self.redirect_field)
        return url
