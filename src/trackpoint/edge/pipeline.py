"""The tracking edge's request pipeline: what one complete request becomes, written out in one method.

A pixel goes: bytes → the HTTP/1.1 connection (http/connection.py: limits checked as bytes arrive) →
`on_message_complete`: route → build → preprocess → respond → record into the collectors' batches. No framework, no
per-request logging, no awaits.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec

from trackpoint.config.private import UID_DIM
from trackpoint.edge import responses
from trackpoint.edge.cors import ORIGIN_NOT_ALLOWED
from trackpoint.event import malformed
from trackpoint.fields.batch import batch_items
from trackpoint.fields.converters import Reject
from trackpoint.http.connection import AFTER_CLOSE, HttpConnection
from trackpoint.http.responses import NO_STORE, head, origin_form

if TYPE_CHECKING:
    from trackpoint.edge.cors import CorsPolicy
    from trackpoint.edge.runtime import Edge, Route
    from trackpoint.event import Event

_monotonic: Final = time.monotonic
BATCH_ALLOW: Final = b"Allow: POST\r\n"
BATCH_ALLOW_CORS: Final = b"Allow: POST, OPTIONS\r\n"  # and preflights, on an event type with CORS
FILE_ALLOW: Final = b"Allow: GET, HEAD\r\n"  # the files the edge serves (the JS tag)
JSON_NO_STORE: Final = b"Content-Type: application/json\r\n" + NO_STORE


class EdgeProtocol(HttpConnection):
    """One client connection of the tracking port: the shared HTTP/1.1 machinery, and the request path."""

    __slots__ = ("edge", "peer_ip", "trusted_peer")

    def __init__(self, edge: Edge) -> None:
        super().__init__(edge.caps, edge.header_names, edge.queue_output, edge.stats)  # type: ignore[arg-type]
        self.edge = edge
        self.peer_ip = ""
        self.trusted_peer = False

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
        self.parser = self.new_parser()
        # Until its first byte a new connection has the header timeout: a silent connection is a slow header.
        self.deadline = _monotonic() + self.caps.header_timeout_s

    def data_received(self, data: bytes) -> None:
        edge = self.edge
        if not edge.answer_at_once:  # under load: the iteration's output step answers (queue_output)
            HttpConnection.data_received(self, data)
            return
        edge.reading = True  # a light load: this read's answers go out at its end, with no output step scheduled
        try:
            HttpConnection.data_received(self, data)
        finally:
            edge.end_read()

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.release(self)
        self.closing = True
        self.parser = None
        self.head = None  # it holds this connection's framing step: a cycle freed now, not by the collector
        self.transport = None  # output still queued for this iteration is dropped: the peer is gone

    def on_message_complete(self) -> None:
        """The request path: route → build → preprocess → respond → dispatch."""
        edge = self.edge
        parser = self.parser
        assert parser is not None
        stats = edge.stats
        stats.requests += 1
        self.requests += 1
        self.pipelined = pipelined = self.pipelined + 1
        caps = self.caps
        keep_alive = parser.should_keep_alive() and not edge.draining and self.requests < caps.max_keepalive_requests
        # The last answered in this read (the rest waits for a new connection): at the per-read cap, or (rare: a
        # client that pipelines) once this iteration has answered its share of pipelined requests.
        if pipelined >= caps.max_pipelined_requests or (pipelined > 1 and edge.pipelining_spent()):
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
        inflater = self.inflater
        if inflater is not None and not inflater.finished():  # a compressed body cut short
            self.reject(400, "content_encoding_invalid", None, keep_alive, is_head)
            return
        path, _, query = self.url.partition(b"?")

        route = edge.routes.get(path)
        if route is None:
            if path[:1] != b"/":  # an absolute-form target (`http://host/i?x=1`): routed by its path, as any other
                target = origin_form(self.url)
                if target is not None:
                    path, _, query = target.partition(b"?")
                    route = edge.routes.get(path)
            if route is None:
                batch = edge.batch_routes.get(path)
                if batch is not None:
                    self.answer_batch(*batch, method, path, query, keep_alive)
                    return
                served = edge.files.get(path)  # the JS tag (no event type has its path)
                if served is None:
                    self.reject(404, "not_found", None, keep_alive, is_head)
                elif method == b"GET" or is_head:
                    self.send(served.render(self.headers, keep_alive, is_head))
                    self.finish(keep_alive)
                else:
                    self.reject(405, "method_not_allowed", None, keep_alive, is_head, None, FILE_ALLOW)
                return
        if method not in route.methods:
            if method == b"OPTIONS" and route.cors is not None and self.preflight(route.cors, keep_alive):
                return
            self.reject(405, "method_not_allowed", None, keep_alive, is_head, route.cors, route.allow)
            return
        for gate in route.gates:  # collectors whose full spool asks for backpressure (usually none)
            if not gate.accepting:
                self.reject(503, "backpressure", None, keep_alive, is_head, route.cors)
                return
        if is_head:  # a link scanner's probe: GET's answer, nothing recorded
            self.answer_head(route, path, query, keep_alive)
            return
        event: Event | None = None  # bound before the try: the Reject handler reads it
        try:
            signed = False
            signature = route.signature
            if signature is not None:  # signed URLs, before any other work (None for types that do not use them)
                signed = signature.check(path, query, self.body)  # 403 raises Reject
            client_ip = self.client_ip() if self.trusted_peer else self.peer_ip
            event = built = route.builder.build(query, self.body, self.headers, client_ip)
            if signature is not None and signature.flag:
                built.dims["signed"] = "1" if signed else "0"
            if route.postback_auth is not None:  # advertiser postbacks: a shared secret per advertiser (401, 403)
                route.postback_auth.check(built, query, self.body, self.headers)
            for limiter in route.limiters:  # the event type's rate limit (usually none); 429 raises Reject
                if not limiter.admit(client_ip, built):
                    event = None  # shed: nothing is recorded, even when the response turns into a rejection
                    self.shed(route, route.responder.render(built, keep_alive, False, signed), keep_alive)
                    return
            # A route with the user id cookie: a request without one gets a new id (dims.uid) and its Set-Cookie.
            set_cookie = None if route.uid_cookie is None else route.uid_cookie.assign(built)
            if route.preprocessors:
                event = self.preprocess(route, built)
            if route.late_limiters and event is not None:  # a rate limit keyed on a dim (geo.country): usually none
                for limiter in route.late_limiters:
                    if not limiter.admit(client_ip, event):
                        limited, event = event, None  # shed: nothing is recorded, as for the limits above
                        self.shed(route, route.responder.render(limited, keep_alive, False, signed), keep_alive)
                        return
            response = route.responder.render(built if event is None else event, keep_alive, False, signed)
            if set_cookie is not None and event is not None:
                if route.cookie_vetoed(event.dims):  # a new id the client never gets is no user's id
                    event.dims.pop(UID_DIM, None)
                else:
                    response = route.responder.with_header(set_cookie, keep_alive, False)
            if route.cors is not None:  # a page on another origin: an allowed one gets the CORS headers
                response = route.cors.decorate(response, self.headers.get(b"origin"))
        except Reject as rejected:
            if event is not None and type(rejected) is responses.RecordedReject:  # raised by render only
                self.record(route, event)  # a refused redirect: the click is still recorded
                if self.answer_fallback(route, rejected, keep_alive, False):
                    return
            self.reject(rejected.status, rejected.reason, rejected.field, keep_alive, False, route.cors)
            return
        self.send(response)
        if event is not None:
            self.record(route, event)
        self.finish(keep_alive)

    def preprocess(self, route: Route, event: Event) -> Event | None:
        """The route's preprocessors in order: the event (changed), or None when one dropped it (counted). A
        preprocessor's Reject goes on to the caller; any other failure costs the event, never the worker: an
        exception, or a third party's result that is no well-formed Event (one would break the log line, the
        collectors' encodings and the workers' reports of every event after it)."""
        checked = route.checked
        for preprocess in route.preprocessors:
            try:
                changed = preprocess(event)
            except Reject:
                raise
            except Exception as exc:  # a failing plugin costs its event, never the worker or the response
                self.edge.preprocessor_failed(preprocess.name, exc)
                changed = None
            else:
                if checked and changed is not None and preprocess in checked:
                    problem = malformed(changed)
                    if problem is not None:
                        self.edge.preprocessor_failed(preprocess.name, problem)
                        changed = None
            if changed is None:  # dropped on purpose: the client still gets its normal response
                dropped = self.edge.stats.preprocessor_dropped
                dropped[preprocess.name] = dropped.get(preprocess.name, 0) + 1
                return None
            event = changed
        return event

    def answer_batch(  # noqa: PLR0917 - the request's own parts
        self,
        route: Route,
        max_items: int,
        cors: CorsPolicy | None,
        method: bytes,
        path: bytes,
        query: bytes,
        keep_alive: bool,
    ) -> None:
        """A batch (POST to a batch path): each item built into its own event as a JSON body (a Matomo item as a
        query string) and preprocessed, the accepted ones recorded (their lines written before this answer leaves),
        the refused ones listed with their reasons: `{"accepted": n, "refused": [{"index": i, "error": reason}]}`.
        On a signed event type the URL's signature is checked once for the whole batch, and covers all of it: every
        parameter of the URL (the items inherit them, so none may be left free as `signed_params` leaves an
        exchange's macros) and the whole body (`bd`). Rate limits apply per item."""
        edge = self.edge
        if method != b"POST":
            # A browser's batch (JSON, maybe Content-Encoding) is preflighted like the event type's other paths.
            if method == b"OPTIONS" and cors is not None and self.preflight(cors, keep_alive):
                return
            allow = BATCH_ALLOW if cors is None else BATCH_ALLOW_CORS
            self.reject(405, "method_not_allowed", None, keep_alive, method == b"HEAD", cors, allow)
            return
        try:
            if any(not gate.accepting for gate in route.gates):  # a full spool asks for backpressure
                raise Reject(503, "backpressure")
            signature = route.signature
            signed = False
            if signature is not None:
                signed = signature.check(path, query, self.body, True)  # the items are the body: `bd` needed
            items = batch_items(self.body or b"", max_items)
        except Reject as rejected:
            self.reject(rejected.status, rejected.reason, rejected.field, keep_alive, False, cors)
            return
        client_ip = self.client_ip() if self.trusted_peer else self.peer_ip
        headers = self.headers
        as_json = {**headers, b"content-type": b"application/json"}
        refused: list[dict[str, object]] = []
        accepted = 0
        # Items as objects: compiled (mypyc), a loop variable typed `msgspec.Raw | bytes` would be checked as bytes.
        listed: list[object] = list(items)
        for index, item in enumerate(listed):
            try:
                if isinstance(item, bytes):  # a query string (Matomo)
                    built = route.builder.build(item, None, headers, client_ip)
                else:  # a JSON object, as msgspec.Raw
                    built = route.builder.build(query, bytes(cast(Any, item)), as_json, client_ip)
                if signature is not None and signature.flag:
                    built.dims["signed"] = "1" if signed else "0"
                if all(limiter.admit(client_ip, built) for limiter in route.limiters):
                    event = self.preprocess(route, built) if route.preprocessors else built
                    if event is not None and all(limiter.admit(client_ip, event) for limiter in route.late_limiters):
                        self.record(route, event)
                accepted += 1
            except Reject as rejected:
                edge.stats.reject(rejected.reason)
                refusal: dict[str, object] = {"index": index, "error": rejected.reason}
                if rejected.field:
                    refusal["field"] = rejected.field
                refused.append(refusal)
        body = msgspec.json.encode({"accepted": accepted, "refused": refused})
        response = head(edge.clock, 200, JSON_NO_STORE, len(body), keep_alive) + body
        if cors is not None:
            response = cors.decorate(response, headers.get(b"origin"))
        self.send(response)
        self.finish(keep_alive)

    def answer_head(self, route: Route, path: bytes, query: bytes, keep_alive: bool) -> None:
        """HEAD: the status and headers GET would get, and nothing else. The event is built and checked (a bad
        request gets GET's 4xx), but no preprocessor runs (no click id, no dedupe state), no rate-limit token is
        taken, no user id cookie is set and nothing is recorded: no log line, no banker debit. Counted by type."""
        edge = self.edge
        edge.stats.head[route.name] += 1
        try:
            signed = False
            if route.signature is not None:
                signed = route.signature.check(path, query, self.body)
            client_ip = self.client_ip() if self.trusted_peer else self.peer_ip
            built = route.builder.build(query, self.body, self.headers, client_ip)
            if route.postback_auth is not None:
                route.postback_auth.check(built, query, self.body, self.headers)
            response = route.responder.render(built, keep_alive, True, signed)
            if route.cors is not None:
                response = route.cors.decorate(response, self.headers.get(b"origin"))
        except Reject as rejected:  # a refused redirect too: its click is not recorded either
            if type(rejected) is responses.RecordedReject and self.answer_fallback(route, rejected, keep_alive, True):
                return
            self.reject(rejected.status, rejected.reason, rejected.field, keep_alive, True, route.cors)
            return
        self.send(response)
        self.finish(keep_alive)

    def answer_fallback(self, route: Route, rejected: Reject, keep_alive: bool, is_head: bool) -> bool:
        """A refused redirect of a type with `response.fallback_url`: the user lands on that page, not on a JSON
        body (counted as the refusal). False when the type has none."""
        fallback = route.responder.refused(keep_alive, is_head)
        if fallback is None:
            return False
        self.edge.stats.reject(rejected.reason)
        self.send(fallback)
        self.finish(keep_alive)
        return True

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
            try:
                for collector in targets.durable:
                    collector.offer(event)
            except Exception as exc:  # a plugin's bug: the iteration's group is answered 503, as on a failed write
                edge.durable_offer_failed(collector, exc)
            self.recorded = True
            uncommitted, name = edge.uncommitted, route.name  # the types of this group, and their counts
            uncommitted[name] = uncommitted.get(name, 0) + 1
            if targets.after:
                edge.after_commit.append((targets.after, event))
        else:
            edge.offer(targets.after, event)
            edge.stats.events[route.name] += 1

    # --- responding ----------------------------------------------------------------------------------------------

    def client_ip(self) -> str:
        """The client a trusted proxy forwards for (in `server.client_ip_header`), for a connection from one."""
        edge = self.edge
        return edge.forwarded_client(self.headers.get(edge.client_ip_header), self.peer_ip)

    def reject(  # noqa: PLR0917 - called from the request path, with the request's own flags
        self,
        status: int,
        reason: str,
        field: str | None,
        keep_alive: bool,
        is_head: bool,
        cors: CorsPolicy | None = None,
        extra: bytes = b"",
    ) -> None:
        """A counted rejection; `cors`: the event type's, so a page on an allowed origin can read the reason;
        `extra`: header lines of the route's (a 405's `Allow`)."""
        assert self.transport is not None
        edge = self.edge
        edge.stats.reject(reason)
        if edge.bad_rows is not None and edge.bad_rows.sampled():
            self.record_bad_row(status, reason, field)
        response = edge.reject_response(status, reason, field, keep_alive, is_head, extra)
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
        self.send(head(self.edge.clock, 204, lines, 0, keep_alive))
        self.finish(keep_alive)
        return True

    def reject_and_close(self, status: int, reason: str) -> None:
        """For input the parser cannot go on from: answer once (counted, maybe a bad row), then close."""
        if self.closing or self.transport is None:
            return
        edge = self.edge
        edge.stats.reject(reason)
        if edge.bad_rows is not None and edge.bad_rows.sampled():
            self.record_bad_row(status, reason, None)
        self.send(edge.reject_response(status, reason, None, False, False))
        self.close_lingering()

    def internal_error(self, exc: BaseException) -> None:
        self.edge.internal_error(exc)

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
