"""HTTP/1.1 response heads and the small error answers, as bytes: the one place their format is written.

The edge prebuilds its static responses from `head` once a second (when the Date changes); the admin port encodes
its answers with it too. An error answer is `reject`: the status, `X-Reject-Reason` and `{"error": reason}`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

import msgspec

REASONS: Final = {
    100: "Continue",
    200: "OK",
    201: "Created",
    204: "No Content",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
NO_STORE: Final = b"Cache-Control: no-store, no-cache, must-revalidate, max-age=0\r\n"
KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"
CLOSE: Final = b"Connection: close\r\n"
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


_DAYS: Final[tuple[bytes, ...]] = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS: Final[tuple[bytes, ...]] = (
    b"Jan",
    b"Feb",
    b"Mar",
    b"Apr",
    b"May",
    b"Jun",
    b"Jul",
    b"Aug",
    b"Sep",
    b"Oct",
    b"Nov",
    b"Dec",
)


def http_date(at: float | None = None) -> bytes:
    """The IMF-fixdate of RFC 9110 §5.6.7 (`Sun, 06 Nov 1994 08:49:37 GMT`) of `at` (now if None). Formatted
    directly: email.utils.formatdate goes through datetime (2.5 µs against 1.1, timed warm), on the thread that
    serves requests."""
    t = time.gmtime(at)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


class Clock:
    """The current Date header line, refreshed by its owner (a worker, the admin server) once a second."""

    __slots__ = ("date_line",)

    def __init__(self) -> None:
        self.date_line = b""
        self.refresh()

    def refresh(self) -> None:
        self.date_line = b"Date: " + http_date() + b"\r\n"


def head(clock: Clock, status: int, headers: bytes, length: int, keep_alive: bool) -> bytes:
    """Status line and headers of a response with a body of `length` bytes; a 204 says no length at all (RFC 9110
    §8.6: a server must not send Content-Length in a 204)."""
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\nServer: trackpoint\r\n" % (status, REASONS.get(status, "Unknown").encode("ascii")),
            clock.date_line,
            headers,
            b"Content-Length: %d\r\n" % length if status != 204 else b"",
            KEEP_ALIVE if keep_alive else CLOSE,
            b"\r\n",
        )
    )


def allow_header(methods: Iterable[str]) -> bytes:
    """The `Allow` line of a 405: the methods the resource accepts (RFC 9110 §15.5.6), in a stable order."""
    return b"Allow: " + ", ".join(sorted(set(methods))).encode("ascii") + b"\r\n"


def origin_form(target: bytes) -> bytes | None:
    """The path and query of an absolute-form request target (`http://host/i?x=1` → `/i?x=1`), which a server must
    accept (RFC 9112 §3.2.2); None for a target that is not one."""
    scheme, separator, rest = target.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return None
    slash = rest.find(b"/")
    question = rest.find(b"?")
    if slash < 0 or (0 <= question < slash):  # `http://host` or `http://host?x`: the path is `/`
        return b"/" + rest[question:] if question >= 0 else b"/"
    return rest[slash:]


def reject_body(reason: str, field: str | None) -> bytes:
    return msgspec.json.encode({"error": reason, "field": field} if field else {"error": reason})


def reject(  # noqa: PLR0917 - called from the request path, with the request's own flags
    clock: Clock,
    status: int,
    reason: str,
    field: str | None,
    keep_alive: bool,
    is_head: bool,
    extra: bytes = b"",
) -> bytes:
    """An error answer: status, `X-Reject-Reason` header and a small JSON body naming the reason (and field);
    `extra`: header lines its caller adds (`Allow` of a 405, the challenge of a 401)."""
    body = reject_body(reason, field)
    headers = b"X-Reject-Reason: " + reason.encode("ascii") + b"\r\nContent-Type: application/json\r\n" + NO_STORE
    response = head(clock, status, headers + extra, len(body), keep_alive)
    return response if is_head else response + body
