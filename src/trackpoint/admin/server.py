"""The admin port's HTTP/1.1 server: a table of (method, path) → async handler, bearer-token authentication, and
the same defences as the tracking edge (caps as bytes arrive, timeouts, connection caps, in-order pipelining).

It runs inside the supervisor, which must stay free to restart workers whatever an admin client does: connections
are capped (the longest-idle one makes room), file descriptors are kept in reserve, and no input is buffered beyond
its cap. The admin port carries probes, scrapes and budget calls, not tracking traffic: clarity wins over speed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import unquote

import httptools
import msgspec

from trackpoint.config.model import AdminLimits
from trackpoint.edge.responses import REASONS, http_date
from trackpoint.security.admin_token import BearerCheck

log = logging.getLogger("trackpoint.admin")

SWEEP_INTERVAL_S = 0.25
# Connections accepted per readiness of the listening socket: reading and answering go on between batches, and
# the descriptors in use are checked before each accept (an unbounded accept loop can exhaust them in one go).
ACCEPT_BATCH = 32
ACCEPT_BACKLOG = 128
ACCEPT_PAUSE_S = 0.1  # after EMFILE/ENFILE: the backlog waits while descriptors are freed
# Connection phases, for the timeout sweep: waiting for a request, reading its head, reading its body.
IDLE, HEADERS, BODY = 0, 1, 2


@dataclass
class AdminRequest:
    """One request to the admin port, read whole (bodies up to `admin.limits.max_body_bytes`)."""

    method: str
    path: str
    query: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # The values of a route's `{name}` segments, URL-decoded.
    params: dict[str, str] = field(default_factory=dict)
    keep_alive: bool = False  # the connection stays open after the answer


@dataclass
class AdminResponse:
    """What an admin handler returns; `json()` builds the usual JSON answer."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, document: object) -> AdminResponse:
        """A JSON response (msgspec-encoded: structs, dicts, lists and scalars)."""
        return cls(status, msgspec.json.encode(document))


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


UNAUTHORIZED = AdminResponse(
    401, b'{"error":"unauthorized"}', headers={"WWW-Authenticate": 'Bearer realm="trackpoint-admin"'}
)


class AdminServer:
    """Routes by exact (method, path); a path may have `{name}` segments (`/banker/campaigns/{id}`), each matching
    one non-empty segment, which the handler finds in `request.params`. With `auth`, every path but
    `public_paths` (the probes: admin/routes.py PUBLIC_PATHS) needs its bearer token, checked before routing: an
    unauthenticated client learns nothing of the routes."""

    def __init__(
        self,
        limits: AdminLimits | None = None,
        auth: BearerCheck | None = None,
        public_paths: frozenset[str] = frozenset(),
    ) -> None:
        self.public_paths = public_paths
        self.routes: dict[tuple[str, str], Handler] = {}
        self.patterns: list[tuple[str, tuple[str, ...], Handler]] = []
        self.limits = limits = limits or AdminLimits()
        self.auth = auth
        # The bytes one request may take before its head is complete, and in all (as the edge computes them).
        self.head_cap = limits.max_request_line_bytes + 32 + limits.max_header_bytes + 4 * limits.max_header_count
        self.request_cap = self.head_cap + 2 * limits.max_body_bytes + 4096
        self.connections: set[_AdminProtocol] = set()
        self.by_ip: dict[str, set[_AdminProtocol]] = {}
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_connections = limits.max_connections  # lowered at start to what the descriptors allow
        # Connections refused, closed to make room, rejected and timed out, and unauthorized requests, by reason
        # (trackpoint_admin_refused_total).
        self.counts: dict[str, int] = {}
        self._listener: socket.socket | None = None
        self._accept_tasks: set[asyncio.Task[object]] = set()
        self._accept_failing = False

    def route(self, method: str, path: str, handler: Handler) -> None:
        if "{" in path:
            self.patterns.append((method, tuple(path.strip("/").split("/")), handler))
        else:
            self.routes[(method, path)] = handler

    def _find(self, method: str, request: AdminRequest) -> tuple[Handler | None, bool]:
        """The handler of (method, path), and whether the path is known for any method."""
        handler = self.routes.get((method, request.path))
        known = handler is not None or any(path == request.path for _, path in self.routes)
        if handler is not None:
            return handler, True
        segments = request.path.strip("/").split("/")
        for route_method, pattern, candidate in self.patterns:
            params = _match(pattern, segments)
            if params is None:
                continue
            known = True
            if route_method == method:
                request.params = params
                return candidate, True
        return None, known

    def count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    async def dispatch(self, request: AdminRequest) -> AdminResponse:
        auth = self.auth
        if (
            auth is not None
            and request.path not in self.public_paths
            and not auth.allows(request.headers.get("authorization"))
        ):
            self.count("unauthorized")
            return UNAUTHORIZED
        handler, known = self._find(request.method, request)
        if handler is None and request.method == "HEAD":
            handler, known = self._find("GET", request)
        if handler is None:
            return AdminResponse.json(405 if known else 404, {"error": "method_not_allowed" if known else "not_found"})
        try:
            return await handler(request)
        except Exception:
            log.exception("admin handler failed for %s %s", request.method, request.path)
            return AdminResponse.json(500, {"error": "internal_error"})

    async def start(self, host: str, port: int) -> None:
        """Listens on host:port (OSError when it cannot) and serves until close()."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(ACCEPT_BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        # The connection cap is also a descriptor budget: what the limit leaves after the reserve and the
        # descriptors the supervisor holds already (sockets, worker channels, logs).
        self.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        budget = self.fd_limit - self.limits.fd_reserve - _open_descriptors()
        self.max_connections = max(1, min(self.limits.max_connections, budget))
        if self.max_connections < self.limits.max_connections:
            log.warning(
                "admin port: at most %d connections (RLIMIT_NOFILE %d, fd_reserve %d)",
                self.max_connections,
                self.fd_limit,
                self.limits.fd_reserve,
            )
        self._listener = listener
        loop = asyncio.get_running_loop()
        loop.add_reader(listener.fileno(), self._accept)
        loop.call_later(SWEEP_INTERVAL_S, self.sweep)

    def close(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                client, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: leave the backlog waiting, try again shortly
                self.count("accept_failed")
                if not self._accept_failing:  # once per streak
                    log.warning("admin port: cannot accept connections: %s; pausing", exc.strerror or exc)
                self._accept_failing = True
                loop.remove_reader(listener.fileno())
                loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)
                return
            # Descriptors are allocated lowest first: one numbered within the reserve means all below it are
            # taken (the supervisor's other descriptors grew since start): the idlest connection gives its own
            # back and the cap shrinks to the connections left, so the reserve stays free for restarting workers.
            if client.fileno() >= self.fd_limit - self.limits.fd_reserve:
                self.count("fd_reserve")
                if not _evict_idlest(self.connections):
                    client.close()  # no answer: writing one could block, and the descriptor is needed back now
                    continue
                # (connections still being set up hold a descriptor too)
                self.max_connections = max(
                    1, min(self.max_connections, len(self.connections) + len(self._accept_tasks))
                )
            self._accept_failing = False
            client.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(lambda: _AdminProtocol(self), client))
            self._accept_tasks.add(task)
            task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task[object]) -> None:
        self._accept_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.count("accept_failed")  # the client left before its transport was set up

    def _resume_accepting(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)

    # --- connections ---------------------------------------------------------------------------------------------

    def admit(self, connection: _AdminProtocol) -> str | None:
        """Takes a new connection into the count, or says why it is refused (503). At a cap, the longest-idle
        connection (of that address, else of all) is closed to make room, so idle connections cannot lock out a
        probe; only when every connection is busy or brand new is the newcomer refused."""
        limits = self.limits
        peers = self.by_ip.get(connection.peer_ip)
        if peers is not None and len(peers) >= limits.max_connections_per_ip and not _evict_idlest(peers):
            return "too_many_connections_from_ip"
        if len(self.connections) >= self.max_connections and not _evict_idlest(self.connections):
            return "too_many_connections"
        self.connections.add(connection)
        self.by_ip.setdefault(connection.peer_ip, set()).add(connection)
        return None

    def release(self, connection: _AdminProtocol) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            peers = self.by_ip.get(connection.peer_ip)
            if peers is not None:
                peers.discard(connection)
                if not peers:
                    del self.by_ip[connection.peer_ip]

    def sweep(self) -> None:
        """Expires connections past their phase's deadline; runs until the server is closed."""
        if self._listener is None:
            return
        now = time.monotonic()
        for connection in [c for c in self.connections if c.deadline <= now]:
            connection.expire(now)
        asyncio.get_running_loop().call_later(SWEEP_INTERVAL_S, self.sweep)


def _open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # no /proc: assume a supervisor's usual few dozen
        return 64


def _evict_idlest(connections: set[_AdminProtocol]) -> bool:
    """Closes the connection idle for longest (waiting for a request, or still sending one); False if all are busy.
    A connection accepted in this burst is spared until its first bytes had a chance to be read: else a probe
    queued among an attacker's connections would be closed by the ones accepted after it, unheard."""
    idle = [c for c in connections if c.settled and not c.busy]
    if not idle:
        return False
    victim = min(idle, key=lambda c: c.active_at)
    victim.server.count("evicted")
    victim.abort()
    return True


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for expected, segment in zip(pattern, segments, strict=True):
        if expected.startswith("{") and expected.endswith("}"):
            if not segment:
                return None
            params[expected[1:-1]] = unquote(segment)
        elif expected != segment:
            return None
    return params


class _AdminProtocol(asyncio.Protocol):
    """One admin connection. Requests are parsed as they arrive (within their caps) and answered in order, one at
    a time: reading pauses while a request is answered, so a pipelined PUT is applied before the GET after it."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = None
        self.peer_ip = ""
        self.phase = IDLE
        self.deadline = 0.0
        self.active_at = 0.0  # when the client last sent something: eviction closes the longest-idle first
        self.received = 0  # bytes fed to the parser since the last complete request
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_count = 0
        self.header_bytes = 0
        self.body = bytearray()
        self.queue: deque[AdminRequest | AdminResponse] = deque()  # parsed requests (or a final error) to answer
        self.serving: asyncio.Task[None] | None = None
        self.requests = 0
        self.closing = False
        self.stop_reading = False  # no more requests on this connection: answer what is queued, then close
        self.writable = asyncio.Event()
        self.writable.set()
        self.settled = False  # see _evict_idlest

    @property
    def busy(self) -> bool:
        return self.serving is not None

    # --- connection ----------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if isinstance(peer, tuple) else "local"
        refusal = self.server.admit(self)
        if refusal is not None:
            self.server.count(refusal)
            self.closing = True
            self.transport.write(_encode(AdminResponse.json(503, {"error": refusal}), head=False, keep_alive=False))
            self.transport.close()
            return
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self.settle)  # two iterations: the read of its first bytes comes between
        self.parser = httptools.HttpRequestParser(self)
        self.active_at = now = time.monotonic()
        self.deadline = now + self.server.limits.header_timeout_s  # a silent new connection is a slow header

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.release(self)
        self.closing = True
        self.parser = None
        self.transport = None
        self.writable.set()  # a handler waiting to write gives up

    def settle(self) -> None:
        self.settled = True

    def abort(self) -> None:
        self.server.release(self)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()  # at once: the descriptor is what the room is made for

    def pause_writing(self) -> None:
        # The client does not read its answers: stop answering (and reading) until it does; the sweep aborts the
        # connection if it still has not within the write timeout.
        self.writable.clear()
        self.deadline = min(self.deadline, time.monotonic() + self.server.limits.write_timeout_s)

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.stop_reading:
            return
        self.active_at = time.monotonic()
        limits = self.server
        # Caps hold as bytes arrive, before the parser buffers them: a head may not take more than head_cap, a
        # request no more than request_cap, so an endless header line costs at most that much parsing.
        while data and not (self.closing or self.stop_reading):
            room = (limits.request_cap if self.phase == BODY else limits.head_cap) - self.received
            if room <= 0:
                if self.phase == BODY:
                    self.fail(413, "body_too_large")
                else:
                    self.fail(431, "headers_too_large")
                return
            part, data = data[:room], data[room:]
            self.received += len(part)
            self.feed(part)

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)  # type: ignore[union-attr]  # set until closing
        except _Refused as refused:
            self.fail(refused.status, refused.reason)
        except _Stop:
            pass
        except httptools.HttpParserUpgrade:
            self.fail(400, "upgrade_not_supported")
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self.fail(cause.status, cause.reason)
            elif isinstance(cause, _Stop):
                pass
            else:
                self.fail(400, "bad_request")

    # --- parser callbacks ----------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.phase = HEADERS
        self.deadline = time.monotonic() + self.server.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.server.limits.max_request_line_bytes:
            raise _Refused(414, "uri_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.server.limits
        self.header_count += 1
        self.header_bytes += len(name) + len(value)
        if self.header_count > limits.max_header_count or self.header_bytes > limits.max_header_bytes:
            raise _Refused(431, "headers_too_large")
        key = name.decode("latin-1").lower()
        if key == "content-length" and (not value.isdigit() or int(value) > limits.max_body_bytes):
            raise _Refused(413, "body_too_large")
        self.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.phase = BODY
        self.deadline = time.monotonic() + self.server.limits.body_timeout_s

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > self.server.limits.max_body_bytes:
            raise _Refused(413, "body_too_large")

    def on_message_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        parsed = httptools.parse_url(self.url)
        self.requests += 1
        keep_alive = parser.should_keep_alive() and self.requests < self.server.limits.max_keepalive_requests
        request = AdminRequest(
            method=parser.get_method().decode("ascii"),
            path=parsed.path.decode("utf-8", "replace"),
            query=(parsed.query or b"").decode("utf-8", "replace"),
            body=bytes(self.body),
            headers=self.headers,
            keep_alive=keep_alive,
        )
        self.phase = IDLE
        self.received = 0
        self.url, self.headers, self.header_count, self.header_bytes, self.body = b"", {}, 0, 0, bytearray()
        self.enqueue(request)
        if not keep_alive or len(self.queue) >= self.server.limits.max_pipelined_requests:
            self.stop_reading = True  # the rest is not read: a client retries what a closed connection left
            raise _Stop

    # --- answering -----------------------------------------------------------------------------------------------

    def fail(self, status: int, reason: str) -> None:
        """Input the parser cannot go on from: answered after the requests before it, then the connection closes."""
        self.server.count(reason)
        self.stop_reading = True
        self.enqueue(AdminResponse.json(status, {"error": reason}))

    def enqueue(self, item: AdminRequest | AdminResponse) -> None:
        self.queue.append(item)
        if self.serving is None:
            if self.transport is not None:
                self.transport.pause_reading()  # one request at a time
            self.serving = asyncio.get_running_loop().create_task(self.serve())

    async def serve(self) -> None:
        while self.queue and self.transport is not None:
            item = self.queue.popleft()
            if isinstance(item, AdminResponse):  # an error answer: the last thing this connection says
                self.stop_reading = True
                self.queue.clear()
                response, head, keep_alive = item, False, False
            else:
                response = await self.server.dispatch(item)
                head = item.method == "HEAD"
                keep_alive = item.keep_alive and not (self.stop_reading and not self.queue)
            await self.writable.wait()
            if self.transport is None:
                break
            self.transport.write(_encode(response, head, keep_alive))
            if not keep_alive and not self.queue:
                self.stop_reading = True
        self.serving = None
        transport = self.transport
        if transport is None:
            return
        if self.stop_reading:
            self.closing = True
            transport.close()  # after the queued output; the sweep aborts it if the client never reads
            self.deadline = time.monotonic() + self.server.limits.write_timeout_s
            return
        if self.phase == IDLE:
            self.deadline = time.monotonic() + self.server.limits.keepalive_timeout_s
        transport.resume_reading()

    def expire(self, now: float) -> None:
        """Called by the sweep when the deadline of the current phase has passed."""
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > 0 or self.closing:  # answers the client does not read
            self.server.count("write_timeout")
            self.abort()
        elif self.busy:  # our own handler is running: its answer decides
            self.deadline = now + SWEEP_INTERVAL_S
        elif self.phase == IDLE:
            self.server.count("idle_timeout")
            self.abort()
        else:
            self.fail(408, "header_timeout" if self.phase == HEADERS else "body_timeout")


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Stop(Exception):
    pass


def _encode(response: AdminResponse, head: bool, keep_alive: bool) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers.items())
    header = (
        f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}\r\n"
        f"Server: trackpoint-admin\r\nDate: {http_date().decode()}\r\n"
        f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n{extra}"
        f"Cache-Control: no-store\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    ).encode("latin-1")
    return header if head else header + response.body
