"""The tracking edge's HTTP/1.1 connection: httptools (llhttp) callbacks and the whole request path in one place.

A pixel goes: data_received → parser callbacks (limits checked as bytes arrive) → on_message_complete: route →
build → preprocess → respond → dispatch to collector batches. No framework, no per-request logging, no awaits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

import httptools

from trackpoint.config.private import UID_DIM
from trackpoint.edge import responses
from trackpoint.edge.cors import ORIGIN_NOT_ALLOWED
from trackpoint.fields.converters import Reject

if TYPE_CHECKING:
    from trackpoint.edge.cors import CorsPolicy
    from trackpoint.edge.runtime import Edge, Route
    from trackpoint.event import Event

log = logging.getLogger("trackpoint.edge")

# Connection phases, for the timeout sweep.
IDLE, HEADERS, BODY = 0, 1, 2
# Headers that frame a body; the edge keeps them for every request.
FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"expect"})
# After an error answer, how long input is still read (and discarded) before the connection is closed.
LINGER_S = 1.0
# What a connection does once its queued output is written.
AFTER_NOTHING, AFTER_CLOSE, AFTER_LINGER = 0, 1, 2

_monotonic = time.monotonic


class _Stop(Exception):
    pass


class EdgeProtocol(asyncio.Protocol):
    """One client connection. Requests are answered in order; pipelined requests in one read are all parsed."""

    __slots__ = (
        "after",
        "body",
        "body_bytes",
        "closing",
        "continue_due",
        "deadline",
        "edge",
        "header_bytes",
        "header_count",
        "headers",
        "out",
        "parser",
        "peer_ip",
        "phase",
        "pipelined",
        "received",
        "recorded",
        "requests",
        "started",
        "transport",
        "trusted_peer",
        "url",
    )

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = None
        self.peer_ip = ""
        self.trusted_peer = False
        self.phase = IDLE
        self.deadline = 0.0
        self.started = 0.0
        self.requests = 0
        self.closing = False
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_count = 0
        self.header_bytes = 0
        self.body: bytearray | None = None
        self.body_bytes = 0
        self.out: bytes | list[bytes] = b""
        # What the output step does once `out` is written (AFTER_*), and whether `out` answers a request whose event
        # awaits this iteration's log write: output leaves only after that write.
        self.after = AFTER_NOTHING
        self.recorded = False
        # Bytes fed to the parser since the last complete request (limits enforced as bytes arrive), requests
        # answered since output was last written, and a `100 Continue` owed once the headers passed their checks.
        self.received = 0
        self.pipelined = 0
        self.continue_due = False

    # --- connection ----------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        edge = self.edge
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self.trusted_peer = edge.is_trusted_proxy(self.peer_ip)
        # Refused only over a connection cap. A draining worker still serves what it accepted before its listener
        # closed (the answer says `Connection: close`): refusing it would fail a request a reload must not fail.
        refusal = edge.admit(self)
        if refusal is not None:
            edge.stats.reject(refusal)
            self.closing = True
            self.transport.write(edge.reject_response(503, refusal, None, False, False))
            self.transport.close()
            return
        self.parser = httptools.HttpRequestParser(self)
        # Until its first byte a new connection has the header timeout: a silent connection is a slow header.
        self.deadline = _monotonic() + edge.header_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.release(self)
        self.closing = True
        self.parser = None
        self.transport = None  # output still queued for this iteration is dropped: the peer is gone

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.phase == IDLE:  # the first bytes of a request: the header timeout starts now
            self.phase = HEADERS
            self.started = now = _monotonic()
            self.deadline = now + self.edge.header_timeout_s
            # A strict request line: one space after the method (llhttp skips extra ones). Only where the read
            # starts with a method: a read may also go on with a request pipelined into the previous one.
            space = data.find(b" ", 0, 8)
            if space > 0 and data[space + 1 : space + 2] == b" " and data[:space].isupper():
                self.reject_and_close(400, "bad_request")
                return
        # Limits hold as bytes arrive, before the parser buffers them: a request may not take more than the head
        # cap before it frames a body, nor more than the request cap in all, so an endless header line or chunk
        # extension is cut off there.
        received = self.received + len(data)
        if received <= self.edge.head_cap:  # the common case: a whole small request
            self.received = received
            self.feed(data)
        else:
            self.feed_capped(data)
        if self.continue_due and not self.closing:  # the head passed every check: the client may send the body
            self.continue_due = False
            self.send(responses.CONTINUE)

    def feed_capped(self, data: bytes) -> None:
        """Feeds no more than the cap allows; finish() resets the count, so the rest may belong to a next request."""
        edge = self.edge
        while data and not self.closing:
            room = (edge.request_cap if self.phase == BODY else edge.head_cap) - self.received
            if room <= 0:
                if self.phase == BODY:
                    self.reject_and_close(413, "body_too_large")
                else:
                    self.reject_and_close(431, "headers_too_large")
                return
            part, data = data[:room], data[room:]
            self.received += len(part)
            self.feed(part)

    def feed(self, data: bytes) -> None:
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
                self.edge.internal_error(cause or exc)
                self.reject_and_close(500, "internal_error")

    def pause_writing(self) -> None:
        # The client does not read its responses: stop reading its requests until it does, and abort the
        # connection if it still has not within the write timeout.
        if self.transport is not None:
            self.transport.pause_reading()
            self.deadline = min(self.deadline, _monotonic() + self.edge.write_timeout_s)

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    # --- parser callbacks ----------------------------------------------------------------------------------------

    # No on_message_begin and no on_headers_complete: each callback is a Python call on every request, so the
    # per-request state is reset when a response is written, and framing headers are handled as they arrive.

    def on_url(self, url: bytes) -> None:
        url = self.url = self.url + url if self.url else url
        if len(url) > self.edge.max_request_line_bytes:
            raise Reject(414, "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        edge = self.edge
        count = self.header_count = self.header_count + 1
        size = self.header_bytes = self.header_bytes + len(name) + len(value)
        if count > edge.max_header_count or size > edge.max_header_bytes:
            raise Reject(431, "headers_too_large")
        name = name.lower()
        if name in edge.kept_headers:
            if name in FRAMING_HEADERS:
                self.on_framing_header(name, value)
            elif name == b"host" and name in self.headers:
                raise Reject(400, "bad_host")  # RFC 9112 §3.2: more than one Host
            self.headers[name] = value

    def on_framing_header(self, name: bytes, value: bytes) -> None:
        """A request with a body: check its declared size at once and give it the body timeout."""
        if name == b"expect":
            # Sent once the whole head passed its checks (end of data_received), never before a 413 or 431.
            self.continue_due = value.lower() == b"100-continue"
            return
        if name == b"content-length" and (not value.isdigit() or int(value) > self.edge.limits.max_body_bytes):
            raise Reject(413, "body_too_large")
        if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            raise Reject(400, "bad_request")  # chunked is the only coding we frame: no `identity, chunked`
        self.phase = BODY
        self.deadline = _monotonic() + self.edge.limits.body_timeout_s

    def on_body(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self.body_bytes > self.edge.limits.max_body_bytes:
            raise Reject(413, "body_too_large")
        if self.body is None:
            self.body = bytearray(chunk)
        else:
            self.body += chunk

    def on_message_complete(self) -> None:
        """The request path: route → build → preprocess → respond → dispatch."""
        edge = self.edge
        parser = self.parser
        assert parser is not None
        stats = edge.stats
        stats.requests += 1
        self.requests += 1
        self.pipelined = pipelined = self.pipelined + 1
        keep_alive = parser.should_keep_alive() and not edge.draining and self.requests < edge.max_keepalive_requests
        if pipelined >= edge.max_pipelined_requests:  # answered in this read: the rest waits for a new connection
            keep_alive = False
        method = parser.get_method()
        is_head = method == b"HEAD"
        if b"host" not in self.headers or not keep_alive:  # rare: checked off the common path
            version = parser.get_http_version()
            if version not in ("1.1", "1.0"):
                self.reject(400, "bad_request", None, False, is_head)  # HTTP/0.9 and other versions
                return
            if version == "1.1" and b"host" not in self.headers:
                self.reject(400, "bad_host", None, False, is_head)  # RFC 9112 §3.2: HTTP/1.1 needs a Host
                return
        path, _, query = self.url.partition(b"?")

        route = edge.routes.get(path)
        if route is None:
            self.reject(404, "not_found", None, keep_alive, is_head)
            return
        if method not in route.methods:
            if method == b"OPTIONS" and route.cors is not None and self.preflight(route.cors, keep_alive):
                return
            self.reject(405, "method_not_allowed", None, keep_alive, is_head, route.cors)
            return
        for gate in route.gates:  # collectors whose full spool asks for backpressure (usually none)
            if not gate.accepting:
                self.reject(503, "backpressure", None, keep_alive, is_head, route.cors)
                return
        event: Event | None = None  # bound before the try: the Reject handler reads it
        try:
            signed = False
            signature = route.signature
            if signature is not None:  # signed URLs, before any other work (None for types that do not use them)
                signed = signature.check(path, query)  # 403 raises Reject
            client_ip = self.client_ip() if self.trusted_peer else self.peer_ip
            event = built = route.builder.build(query, self.body, self.headers, client_ip)
            if signature is not None and signature.flag:
                built.dims["signed"] = "1" if signed else "0"
            if route.postback_auth is not None:  # advertiser postbacks: a shared secret per advertiser (401, 403)
                route.postback_auth.check(built, query, self.body, self.headers)
            for limiter in route.limiters:  # the event type's rate limit (usually none); 429 raises Reject
                if not limiter.admit(client_ip, built):
                    event = None  # shed: nothing is recorded, even when the response turns into a rejection
                    self.shed(route, route.responder.render(built, keep_alive, is_head, signed), keep_alive)
                    return
            # A route with the user id cookie: a request without one gets a new id (dims.uid) and its Set-Cookie.
            set_cookie = None if route.uid_cookie is None else route.uid_cookie.assign(built)
            for preprocess in route.preprocessors:
                try:
                    event = preprocess(event)
                except Reject:
                    raise
                except Exception as exc:  # a failing plugin costs its event, never the worker or the response
                    edge.preprocessor_failed(preprocess.name, exc)
                    event = None
                if event is None:  # dropped on purpose: the client still gets its normal response
                    dropped = stats.preprocessor_dropped
                    dropped[preprocess.name] = dropped.get(preprocess.name, 0) + 1
                    break
            response = route.responder.render(built if event is None else event, keep_alive, is_head, signed)
            if set_cookie is not None and event is not None:
                if route.cookie_vetoed(event.dims):  # a new id the client never gets is no user's id
                    event.dims.pop(UID_DIM, None)
                else:
                    response = route.responder.with_header(set_cookie, keep_alive, is_head)
            if route.cors is not None:  # a page on another origin: an allowed one gets the CORS headers
                response = route.cors.decorate(response, self.headers.get(b"origin"))
        except Reject as rejected:
            if event is not None and type(rejected) is responses.RecordedReject:  # raised by render only
                self.record(route, event)  # a refused redirect: the click is still recorded
                fallback = route.responder.refused(keep_alive, is_head)
                if fallback is not None:  # the user lands on the type's fallback page, not on a JSON body
                    stats.reject(rejected.reason)
                    self.send(fallback)
                    self.finish(keep_alive)
                    return
            self.reject(rejected.status, rejected.reason, rejected.field, keep_alive, is_head, route.cors)
            return
        self.send(response)
        if event is not None:
            self.record(route, event)
        self.finish(keep_alive)

    def record(self, route: Route, event: Event) -> None:
        """Hands the event to its collectors. Durable ones (the log) write it before this iteration's responses
        leave; the others get it once that write succeeded (at once, for a type without a log). An event flagged as
        invalid traffic under the route or drop policy goes to the policy's collectors only (none: dropped)."""
        edge = self.edge
        targets = route.targets
        if route.flagged is not None and route.flag_dim in event.dims:
            targets = route.flagged
            if targets.empty:
                edge.stats.ivt_dropped[route.name] += 1
                return
            edge.stats.ivt_routed[route.name] += 1
        edge.recent_events.append(event)  # the dashboard's live tail (bounded)
        if targets.durable:
            for collector in targets.durable:
                collector.offer(event)
            self.recorded = True
            edge.uncommitted[route.name] += 1
            if targets.after:
                edge.after_commit.append((targets.after, event))
        else:
            for collector in targets.after:
                collector.offer(event)
            edge.stats.events[route.name] += 1

    # --- responding ----------------------------------------------------------------------------------------------

    def client_ip(self) -> str:
        """The X-Forwarded-For client, for a connection from a trusted proxy."""
        forwarded = self.headers.get(b"x-forwarded-for")
        return self.edge.forwarded_client(forwarded, self.peer_ip) if forwarded else self.peer_ip

    def finish(self, keep_alive: bool) -> None:
        now = _monotonic()
        edge = self.edge
        edge.stats.observe(now - self.started)
        self.received = 0
        if keep_alive:
            self.phase = IDLE
            self.deadline = now + edge.keepalive_timeout_s
            self.url = b""
            self.headers = {}
            self.header_count = 0
            self.header_bytes = 0
            self.body = None
            self.body_bytes = 0
        else:
            self.close()
            raise _Stop  # stop parsing whatever else the client pipelined on a closing connection

    def reject(  # noqa: PLR0917 - called from the request path, with the request's own flags
        self,
        status: int,
        reason: str,
        field: str | None,
        keep_alive: bool,
        is_head: bool,
        cors: CorsPolicy | None = None,
    ) -> None:
        """A counted rejection; `cors`: the event type's, so a page on an allowed origin can read the reason."""
        assert self.transport is not None
        edge = self.edge
        edge.stats.reject(reason)
        if edge.bad_rows is not None and edge.bad_rows.sampled():
            self.record_bad_row(status, reason, field)
        response = edge.reject_response(status, reason, field, keep_alive, is_head)
        if cors is not None:
            response = cors.decorate(response, self.headers.get(b"origin"))
        self.send(response)
        self.finish(keep_alive)

    def preflight(self, cors: CorsPolicy, keep_alive: bool) -> bool:
        """A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) on an event type with
        CORS: 204 with what the origin may send, or 403 for an origin not allowed. False: not a preflight."""
        origin = self.headers.get(b"origin")
        if origin is None or b"access-control-request-method" not in self.headers:
            return False
        lines = cors.preflight(origin)
        if lines is None:
            self.reject(403, ORIGIN_NOT_ALLOWED, None, keep_alive, False)
            return True
        self.send(responses.head(self.edge.clock, 204, lines, 0, keep_alive))
        self.finish(keep_alive)
        return True

    def reject_and_close(self, status: int, reason: str) -> None:
        """For input the parser cannot go on from: answer once, then close."""
        if self.closing or self.transport is None:
            return
        edge = self.edge
        edge.stats.reject(reason)
        if edge.bad_rows is not None and edge.bad_rows.sampled():
            self.record_bad_row(status, reason, None)
        self.send(edge.reject_response(status, reason, None, False, False))
        self.close_lingering()

    def record_bad_row(self, status: int, reason: str, field: str | None) -> None:
        """A sampled rejection into the rejected stream, with what is known of the request (a request the parser
        gave up on may have no method or target yet)."""
        edge = self.edge
        assert edge.bad_rows is not None
        try:
            route = edge.routes.get(self.url.partition(b"?")[0])
            method = self.parser.get_method() if self.url and self.parser is not None else b""
            client_ip = self.client_ip() if self.trusted_peer else self.peer_ip
            edge.bad_rows.record(status, reason, field, route.name if route else None, method, self.url, client_ip)
        except Exception as exc:  # a bad row must never cost the response
            edge.internal_error(exc)

    def shed(self, route: Route, response: bytes, keep_alive: bool) -> None:
        """Over a rate limit under `shed`: the normal response, nothing recorded, counted by event type."""
        self.edge.stats.shed[route.name] += 1
        if route.cors is not None:
            response = route.cors.decorate(response, self.headers.get(b"origin"))
        self.send(response)
        self.finish(keep_alive)

    def send(self, data: bytes) -> None:
        """Queues a response; the worker writes every connection's queue once per event-loop iteration, after the
        iteration's log lines."""
        out = self.out
        if not out:
            self.out = data
            self.edge.queue_output(self)
        elif isinstance(out, list):  # pipelined requests: one write for all their responses
            out.append(data)
        else:
            self.out = [out, data]

    def take_output(self) -> tuple[bytes | list[bytes], int]:
        """The queued output and what follows it, handed to the output step (which may hold it for an fsync)."""
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

    def refuse_unrecorded(self, reason: str) -> None:
        """The log could not take this iteration's lines: whatever this connection was to be answered is replaced
        by one 503 and the connection closes (a client retries what a closed connection did not answer)."""
        self.edge.stats.reject(reason)
        self.out = self.edge.reject_response(503, reason, None, False, False)
        self.after = AFTER_CLOSE
        self.closing = True

    def refuse_now(self, reason: str) -> None:
        """The fsync its held answers waited for failed (durability power): one 503 instead of them, then close."""
        self.refuse_unrecorded(reason)
        self.flush()
        self.transport = None  # answers still held for later fsyncs are not written after this one

    def close(self) -> None:
        """Closes once queued output is written (it may be waiting for this iteration's log write)."""
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
        """Called by the worker's sweep when the deadline of the current phase has passed."""
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
