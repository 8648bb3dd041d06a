"""One HTTP/1.1 connection over httptools (llhttp): limits as bytes arrive, framing, timeouts, ordered output.

`HttpConnection` is the protocol machinery the tracking edge (edge/pipeline.py) and the admin port
(admin/server.py) share; a subclass adds what a complete request means (`on_message_complete`) and how a refusal is
counted (`reject_and_close`). Every limit is answered here: a request line past its cap 414, headers 431, a body 413,
a slow head or body 408, malformed input 400.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Final

import httptools
from mypy_extensions import mypyc_attr

from trackpoint import _native
from trackpoint.fields.converters import Reject
from trackpoint.http.encoding import Inflater, wbits
from trackpoint.http.latency import LatencyHistogram
from trackpoint.http.limits import Caps
from trackpoint.http.responses import CONTINUE

if TYPE_CHECKING:
    from trackpoint.http._headers import Head

# Module constants are Final: compiled (mypyc), a Final literal is inlined and any other Final is a C static, where
# a plain module name is a dict lookup in the module's globals on every use.

# Connection phases, for the timeout sweep.
IDLE: Final = 0
HEADERS: Final = 1
BODY: Final = 2
# Headers that frame or code a body; a connection keeps them for every request.
FRAMING_HEADERS: Final = frozenset({b"content-length", b"transfer-encoding", b"expect", b"content-encoding"})
# After an error answer, how long input is still read (and discarded) before the connection is closed.
LINGER_S: Final = 1.0
# What a connection does once its queued output is written.
AFTER_NOTHING: Final = 0
AFTER_CLOSE: Final = 1
AFTER_LINGER: Final = 2
# Headers whose repeated lines are one comma-separated list (RFC 9110 §5.3): a chain of proxies that each add a line
# of their own (HAProxy's `option forwardfor`) names the client in the first of them.
LIST_HEADERS: Final = frozenset({b"x-forwarded-for", b"forwarded"})

# A read this long or shorter is scanned whole for bytes to encode in its request line (data_received).
SMALL_READ: Final = 8194
# How many spellings of header names HeaderNames learns: a client inventing names cannot grow it past this.
LEARNED_NAMES_MAX: Final = 1024

_monotonic: Final = time.monotonic
_HIGH_BYTE: Final = re.compile(rb"[\x80-\xff]")


def _percent_encoded(match: re.Match[bytes]) -> bytes:
    return b"%%%02X" % match[0][0]


# The compiled build's header steps in C (http/_headers.c); None where the sources run.
_CANONICAL: Final[Callable[[bytes, tuple[bytes, ...]], bytes] | None] = _native.step(
    "trackpoint.http._headers", "canonical"
)
_HEAD: Final[type[Head] | None] = _native.step("trackpoint.http._headers", "Head")
# How on_header handles a kept header, by name (the C step's `kinds`): as is, a framing header, Host (one only), or a
# list header (repeated lines joined).
PLAIN: Final = 0
FRAMING: Final = 1
HOST: Final = 2
LIST: Final = 3


def header_kind(name: bytes) -> int:
    """How on_header handles the kept header `name` (lower case)."""
    if name in FRAMING_HEADERS:
        return FRAMING
    if name == b"host":
        return HOST
    return LIST if name in LIST_HEADERS else PLAIN


class HeaderNames:
    """Which headers an owner's connections keep, by the name as a client spells it: the lower-case name, or b""
    for a name not kept.

    The compiled build compares the name with each kept one in C (http/_headers.c), where a set of them is given
    (the edge's). Otherwise each spelling is learned once and shared by the owner's connections (up to
    LEARNED_NAMES_MAX), so the usual header costs one dict lookup instead of a lower() and a second hash."""

    __slots__ = ("kept", "kept_names", "kinds", "learned")

    def __init__(self, kept: Container[bytes]) -> None:
        self.kept = kept  # lower-case names
        self.learned: dict[bytes, bytes] = {}
        self.kept_names = tuple(kept) if isinstance(kept, (set, frozenset)) and _CANONICAL is not None else None
        self.kinds = tuple(header_kind(name) for name in self.kept_names or ())

    def canonical(self, name: bytes) -> bytes:
        kept_names = self.kept_names
        if kept_names is not None and _CANONICAL is not None:
            return _CANONICAL(name, kept_names)
        return self.learn(name)

    def learn(self, name: bytes) -> bytes:
        """The pure-Python way, whichever build runs."""
        known = self.learned.get(name)
        if known is not None:
            return known
        lower = name.lower()
        found = lower if lower in self.kept else b""
        if len(self.learned) < LEARNED_NAMES_MAX:
            self.learned[name] = found
        return found


class Stop(Exception):
    """Raised by a callback to stop parsing what else the client pipelined on a closing connection."""


class Callbacks:
    """What httptools calls where a connection's header step is the C one (HttpConnection.new_parser): the
    connection's own callbacks, and that step for each header."""

    __slots__ = ("on_body", "on_chunk_header", "on_header", "on_message_complete", "on_url")

    def __init__(self, connection: HttpConnection, head: Head) -> None:
        self.on_url = connection.on_url
        self.on_header: Callable[[bytes, bytes], None] = head
        self.on_body = connection.on_body
        self.on_chunk_header = connection.on_chunk_header
        self.on_message_complete = connection.on_message_complete


# Compiled with mypyc (trackpoint/_native.py), and subclassed by the admin port's connection, which is not.
@mypyc_attr(allow_interpreted_subclasses=True)
class HttpConnection(asyncio.Protocol):
    """One client connection. Requests are answered in order; pipelined requests in one read are all parsed.

    A subclass sets the parser in `connection_made` and defines `on_message_complete` (which ends with `finish`),
    `reject_and_close` (count, answer with `responses.reject`, `close_lingering`) and `internal_error`."""

    __slots__ = (
        "after",
        "body",
        "body_bytes",
        "caps",
        "closing",
        "continue_due",
        "deadline",
        "head",
        "header_bytes",
        "header_count",
        "header_names",
        "headers",
        "in_target",
        "inflater",
        "latency",
        "out",
        "parser",
        "phase",
        "pipelined",
        "queue_output",
        "received",
        "recorded",
        "requests",
        "started",
        "trailers",
        "transport",
        "url",
    )

    def __init__(
        self,
        caps: Caps,
        header_names: HeaderNames,
        queue_output: Callable[[HttpConnection], None],
        latency: LatencyHistogram,
    ) -> None:
        # Set once per connection, read per request: the caps, the header names kept for the request (the others
        # are counted against the caps and dropped), what schedules this connection's output step, and the
        # histogram each request's duration goes into.
        self.caps = caps
        self.header_names = header_names
        self.queue_output = queue_output
        self.latency = latency
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = None
        self.phase = IDLE
        self.deadline = 0.0
        self.started = 0.0
        self.requests = 0
        self.closing = False
        self.url = b""
        self.in_target = False  # the request line is being read: bytes above 0x7f in it are percent-encoded
        self.headers: dict[bytes, bytes] = {}
        self.head: Head | None = None  # the C header step, which then keeps `headers` and the counts (new_parser)
        self.header_count = 0
        self.header_bytes = 0
        self.body: bytearray | None = None
        self.body_bytes = 0
        # A compressed body's decompressor (Content-Encoding gzip or deflate): the body is kept inflated.
        self.inflater: Inflater | None = None
        self.out: bytes | list[bytes] = b""
        # What the output step does once `out` is written (AFTER_*), and whether `out` answers a request whose
        # record the owner writes first (the edge: an event awaiting this iteration's log write).
        self.after = AFTER_NOTHING
        self.recorded = False
        # Bytes fed to the parser since the last complete request (limits enforced as bytes arrive), requests
        # answered since output was last written, and a `100 Continue` owed once the headers passed their checks.
        self.received = 0
        self.pipelined = 0
        self.continue_due = False
        # A chunked body has begun: header fields from now on are its trailer, counted against the caps and
        # dropped (RFC 9110 §6.5.1: never merged into the header section, where an X-Forwarded-For, a
        # Content-Type or an Expect sent after the body would have replaced what the head said).
        self.trailers = False

    # --- what a subclass defines -----------------------------------------------------------------------------------

    def on_message_complete(self) -> None:
        """A whole request has arrived: answer it, then `finish`."""
        raise NotImplementedError

    def reject_and_close(self, status: int, reason: str) -> None:
        """For input the parser cannot go on from: answer once, then close."""
        raise NotImplementedError

    def internal_error(self, exc: BaseException) -> None:
        """A callback failed on something other than the client's input (a bug): counted and logged."""
        raise NotImplementedError

    def new_parser(self) -> httptools.HttpRequestParser:
        """The connection's parser (a subclass's `connection_made` sets it). Where the compiled build runs and the
        owner keeps a set of header names (the edge), the header step is the C one (http/_headers.c, Head): httptools
        calls it for each header instead of `on_header`, and it keeps `headers` and the counts."""
        names = self.header_names
        if _HEAD is None or names.kept_names is None:
            return httptools.HttpRequestParser(self)
        caps = self.caps
        head = self.head = _HEAD(
            names.kept_names, names.kinds, caps.max_header_count, caps.max_header_bytes, self.on_framing_header, Reject
        )
        self.headers = head.headers
        return httptools.HttpRequestParser(Callbacks(self, head))

    # --- input ---------------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.phase == IDLE:  # the first bytes of a request: the header timeout starts now
            self.phase = HEADERS
            self.started = now = _monotonic()
            self.deadline = now + self.caps.header_timeout_s
            # A strict request line: one space after the method (llhttp skips extra ones). Only where the read
            # starts with a method: a read may also go on with a request pipelined into the previous one. By index,
            # not data.find(b" ", 0, 8): bytes.find parses its arguments with PyArg_ParseTuple, about 700
            # instructions, where the compiled loop reads a few bytes.
            size = len(data)
            limit = size if size < 8 else 8
            space = 0
            while space < limit and data[space] != 0x20:
                space += 1
            if 0 < space < limit and space + 1 < size and data[space + 1] == 0x20 and data[:space].isupper():
                self.reject_and_close(400, "bad_request")
                return
            self.in_target = True
        settle_target = False
        if self.in_target:
            # Only the request line may need encoding, and one longer than its cap is refused (414), so a large
            # read is scanned no further than that: a read of pipelined requests (256 KiB from a client that
            # floods) is not scanned to its end. A small read is scanned whole (a literal compared, no lookup).
            if (data if len(data) <= SMALL_READ else data[: self.caps.max_request_line_bytes + 2]).isascii():
                # Nothing to encode: whether the line ended matters only if the request goes on.
                settle_target = True
            else:
                data = self.escape_target(data)
        # Limits hold as bytes arrive, before the parser buffers them: a request may not take more than the head
        # cap before it frames a body, nor more than the request cap in all, so an endless header line or chunk
        # extension is cut off there.
        received = self.received + len(data)
        if received <= self.caps.head_cap:  # the common case: a whole small request
            self.received = received
            self.feed(data)
        else:
            self.feed_capped(data)
        if settle_target and self.phase != IDLE and data.find(b"\n") >= 0:
            self.in_target = False  # the request goes on in the next read, past its request line
        if self.continue_due and not self.closing:  # the head passed every check: the client may send the body
            self.continue_due = False
            self.send(CONTINUE)

    def escape_target(self, data: bytes) -> bytes:
        """A read that is not all ASCII, with the bytes above 0x7f of its request line percent-encoded, as a browser
        sends them: raw UTF-8 in a target (curl, some SDKs and servers send it) is refused by llhttp otherwise. Only a
        request line that starts a read, or goes on from the previous one: one pipelined behind another request in
        the same read keeps llhttp's refusal (400 bad_request)."""
        end = data.find(b"\n")
        if end < 0:
            end = len(data)
        else:
            self.in_target = False
        return _HIGH_BYTE.sub(_percent_encoded, data[:end]) + data[end:]

    def feed_capped(self, data: bytes) -> None:
        """Feeds no more than the cap allows; finish() resets the count, so the rest may belong to a next request.
        Through a memoryview: a large read (256 KiB of pipelined requests from a client that floods, most of which
        a cut leaves unread) is never copied."""
        caps = self.caps
        view = memoryview(data)
        while view and not self.closing:
            room = (caps.request_cap if self.phase == BODY else caps.head_cap) - self.received
            if room <= 0:
                if self.phase == BODY:
                    self.reject_and_close(413, "body_too_large")
                else:
                    self.reject_and_close(431, "headers_too_large")
                return
            part, view = view[:room], view[room:]
            self.received += len(part)
            self.feed(part)

    def feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]  # set until closing
        except httptools.HttpParserUpgrade:
            if self.phase == IDLE:  # answered already (Upgrade ignored, as RFC 9110 allows): no second answer
                self.close()
            else:
                self.reject_and_close(400, "upgrade_not_supported")
        except Exception as exc:  # llhttp rejected the bytes, or a callback stopped or failed
            if self.closing:
                return
            cause = exc.__context__
            if isinstance(cause, Reject):
                self.reject_and_close(cause.status, cause.reason)
            elif isinstance(exc, httptools.HttpParserError) and cause is None:
                self.reject_and_close(400, "bad_request")
            else:
                self.internal_error(cause or exc)
                self.reject_and_close(500, "internal_error")

    def pause_writing(self) -> None:
        # The client does not read its responses: stop reading its requests until it does, and abort the
        # connection if it still has not within the write timeout.
        if self.transport is not None:
            self.transport.pause_reading()
            self.deadline = min(self.deadline, _monotonic() + self.caps.write_timeout_s)

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # --- parser callbacks ----------------------------------------------------------------------------------------

    # No on_message_begin and no on_headers_complete: each callback is a Python call on every request, so the
    # per-request state is reset when a response is written, and framing headers are handled as they arrive.

    def on_url(self, url: bytes) -> None:
        if self.phase == IDLE:
            # A request pipelined behind one answered in this same read: it is under way, so the next read goes
            # on with it (its header timeout runs from here) rather than being taken for a new request line.
            self.phase = HEADERS
            self.started = now = _monotonic()
            self.deadline = now + self.caps.header_timeout_s
            self.in_target = False
        url = self.url = self.url + url if self.url else url
        if len(url) > self.caps.max_request_line_bytes:
            raise Reject(414, "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        """Each header line: counted against the caps, kept (under its lower-case name) if the owner keeps it. The
        compiled build's edge does this in C (new_parser), with the same effects."""
        caps = self.caps
        count = self.header_count = self.header_count + 1
        size = self.header_bytes = self.header_bytes + len(name) + len(value)
        if count > caps.max_header_count or size > caps.max_header_bytes:
            raise Reject(431, "headers_too_large")
        name = self.header_names.canonical(name)
        if name and not self.trailers:
            if name in FRAMING_HEADERS:
                self.on_framing_header(name, value)
            elif name == b"host" and name in self.headers:
                raise Reject(400, "bad_host")  # RFC 9112 §3.2: more than one Host
            elif name in LIST_HEADERS and name in self.headers:
                value = self.headers[name] + b", " + value
            self.headers[name] = value

    def on_framing_header(self, name: bytes, value: bytes) -> None:
        """A request with a body: check its declared size at once and give it the body timeout."""
        if name == b"expect":
            # Sent once the whole head passed its checks (end of data_received), never before a 413 or 431.
            self.continue_due = value.lower() == b"100-continue"
            return
        if name == b"content-encoding":  # 415 for a coding we cannot inflate, before the body is read
            window = wbits(value)
            if window is not None:
                caps = self.caps
                self.inflater = Inflater(window, caps.max_inflated_bytes, caps.max_inflation_ratio)
            return
        if name == b"content-length":
            value = value.strip(b" \t")  # optional whitespace around a field value is not part of it (RFC 9110 §5.5)
            if not value.isdigit() or int(value) > self.caps.max_body_bytes:
                raise Reject(413, "body_too_large")
        if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            raise Reject(400, "bad_request")  # chunked is the only coding we frame: no `identity, chunked`
        self.phase = BODY
        self.deadline = _monotonic() + self.caps.body_timeout_s

    def on_chunk_header(self) -> None:
        """A chunk's size line (httptools calls this for chunked bodies only): the head is over."""
        self.trailers = True
        if self.head is not None:
            self.head.trailers = True

    def on_body(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self.body_bytes > self.caps.max_body_bytes:
            raise Reject(413, "body_too_large")
        if self.inflater is not None:
            chunk = self.inflater.inflate(chunk)
        if self.body is None:
            self.body = bytearray(chunk)
        else:
            self.body += chunk

    def finish(self, keep_alive: bool) -> None:
        """A request answered: the connection waits for the next one, or closes (and parsing stops)."""
        now = _monotonic()
        self.latency.observe(now - self.started)
        self.received = 0
        if keep_alive:
            self.phase = IDLE
            self.deadline = now + self.caps.keepalive_timeout_s
            self.url = b""
            head = self.head
            if head is None:
                self.headers = {}
                self.header_count = 0
                self.header_bytes = 0
            else:
                self.headers = head.reset()
            self.body = None
            self.body_bytes = 0
            self.inflater = None
            self.trailers = False
            # An Expect of the request answered here is void: a 100 after the final response would be read as the
            # answer to the next request. One pipelined behind it in the same read sets it again.
            self.continue_due = False
        else:
            self.close()
            raise Stop

    # --- output --------------------------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queues a response; the owner's output step (`queue_output`) writes every connection's queue once per
        event-loop iteration."""
        out = self.out
        if not out:
            self.out = data
            self.queue_output(self)
        elif isinstance(out, list):  # pipelined requests: one write for all their responses
            out.append(data)
        else:
            self.out = [out, data]

    def take_output(self) -> tuple[bytes | list[bytes], int]:
        """The queued output and what follows it, handed to the output step (which may hold it)."""
        out, after = self.out, self.after
        self.out = b""
        self.after = AFTER_NOTHING
        self.recorded = False
        self.pipelined = 0
        return out, after

    def write_output(self, out: bytes | list[bytes], after: int) -> None:
        transport = self.transport
        if transport is None:  # the peer is gone, or we closed it after a refusal
            return
        if out:
            if isinstance(out, list):
                transport.writelines(out)
            else:
                transport.write(out)
        if after == AFTER_CLOSE:
            transport.close()
        elif after == AFTER_LINGER:
            self.linger(transport)

    def flush(self) -> None:
        out, after = self.take_output()
        self.write_output(out, after)

    # --- closing -------------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes once queued output is written."""
        self.closing = True
        if self.transport is not None:
            if self.out:
                self.after = AFTER_CLOSE
            else:
                self.transport.close()

    def close_lingering(self) -> None:
        """Closes after an error answer the client may still be sending into: the answer goes out, then our side
        of the stream ends, and whatever still arrives is discarded until the client closes or LINGER_S passes.
        Closing at once with unread input makes the kernel reset the connection, and a reset can destroy the
        answer before the client has read it."""
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if self.out:
            self.after = AFTER_LINGER
        else:
            self.linger(transport)

    def linger(self, transport: asyncio.Transport) -> None:
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self.deadline = _monotonic() + LINGER_S  # the sweep closes it (expire) if the client does not

    def expire(self) -> None:
        """Called by the owner's sweep when the deadline of the current phase has passed."""
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size() > 0:  # answers the client does not read
            self.closing = True
            transport.abort()  # close() would wait for the buffer to drain: for ever, for a client that never reads
        elif self.closing:  # lingering after an error answer
            self.close()
        elif self.phase == HEADERS:
            self.reject_and_close(408, "header_timeout")
        elif self.phase == BODY:
            self.reject_and_close(408, "body_timeout")
        else:
            self.close()
