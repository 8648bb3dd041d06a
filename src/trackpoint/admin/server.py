"""The admin port's HTTP/1.1 server: a table of (method, path) → async handler, bearer-token authentication, and
the tracking edge's defences (the same HTTP/1.1 connection, http/connection.py: caps as bytes arrive, timeouts,
in-order pipelining), with connection caps of its own.

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
from trackpoint.fields.converters import Reject
from trackpoint.http.connection import HEADERS, IDLE, HeaderNames, HttpConnection
from trackpoint.http.latency import LatencyHistogram
from trackpoint.http.limits import Caps
from trackpoint.http.responses import Clock, head, reject
from trackpoint.security.admin_token import BearerCheck

log = logging.getLogger("trackpoint.admin")

SWEEP_INTERVAL_S = 0.25
# Connections accepted per readiness of the listening socket: reading and answering go on between batches, and
# the descriptors in use are checked before each accept (an unbounded accept loop can exhaust them in one go).
ACCEPT_BATCH = 32
ACCEPT_BACKLOG = 128
ACCEPT_PAUSE_S = 0.1  # after EMFILE/ENFILE: the backlog waits while descriptors are freed


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
        self.caps = Caps(limits)
        self.clock = Clock()
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

    def _allowed(self, path: str) -> list[str]:
        """The methods a known path answers (HEAD wherever GET is)."""
        segments = path.strip("/").split("/")
        methods = {method for method, route in self.routes if route == path}
        methods |= {method for method, pattern, _ in self.patterns if _match(pattern, segments) is not None}
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

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
            if not known:
                return AdminResponse.json(404, {"error": "not_found"})
            refused = AdminResponse.json(405, {"error": "method_not_allowed"})
            refused.headers["Allow"] = ", ".join(self._allowed(request.path))  # RFC 9110 §15.5.6
            return refused
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
        self.clock.refresh()
        now = time.monotonic()
        for connection in [c for c in self.connections if c.deadline <= now]:
            connection.expire()
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


class _AllHeaders:
    """Every header name: the admin port keeps all headers of a request (its handlers read what they need)."""

    def __contains__(self, name: object) -> bool:
        return True


_ALL_HEADERS = HeaderNames(_AllHeaders())


def _no_output_step(connection: HttpConnection) -> None:
    """The admin port writes each answer as its handler returns it (`serve`), not in an output step."""


# Admin requests are timed into a histogram nobody reads: the edge's histogram counts tracking requests only.
_UNREAD_LATENCY = LatencyHistogram()


class _AdminProtocol(HttpConnection):
    """One admin connection. Requests are parsed as they arrive (within their caps) and answered in order, one at
    a time: reading pauses while a request is answered, so a pipelined PUT is applied before the GET after it.
    `closing`: nothing more is read; what is queued is answered, then the connection closes."""

    def __init__(self, server: AdminServer) -> None:
        super().__init__(server.caps, _ALL_HEADERS, _no_output_step, _UNREAD_LATENCY)
        self.server = server
        self.peer_ip = ""
        self.active_at = 0.0  # when the client last sent something: eviction closes the longest-idle first
        # Parsed requests, and answers written as they are (an error, a 100 Continue), in the order they are owed.
        self.queue: deque[AdminRequest | bytes] = deque()
        self.serving: asyncio.Task[None] | None = None
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
            self.transport.write(reject(self.server.clock, 503, refusal, None, False, False))
            self.transport.close()
            return
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self.settle)  # two iterations: the read of its first bytes comes between
        self.parser = self.new_parser()
        self.active_at = now = time.monotonic()
        self.deadline = now + self.caps.header_timeout_s  # a silent new connection is a slow header

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
        self.deadline = min(self.deadline, time.monotonic() + self.caps.write_timeout_s)

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if not self.closing:
            self.active_at = time.monotonic()
            super().data_received(data)

    def close(self) -> None:
        """Reads no more; the connection closes once what is queued is answered."""
        self.closing = True
        if self.serving is None and self.transport is not None:
            self.transport.close()

    def on_message_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        if self.inflater is not None and not self.inflater.finished():  # a compressed body cut short
            raise Reject(400, "content_encoding_invalid")
        parsed = httptools.parse_url(self.url)
        self.requests += 1
        keep_alive = parser.should_keep_alive() and self.requests < self.caps.max_keepalive_requests
        request = AdminRequest(
            method=parser.get_method().decode("ascii"),
            path=parsed.path.decode("utf-8", "replace"),
            query=(parsed.query or b"").decode("utf-8", "replace"),
            body=bytes(self.body or b""),
            headers={name.decode("latin-1"): value.decode("latin-1") for name, value in self.headers.items()},
            keep_alive=keep_alive,
        )
        self.enqueue(request)
        # Past the pipelining cap the rest is not read: a client retries what a closed connection left.
        self.finish(keep_alive and len(self.queue) < self.caps.max_pipelined_requests)

    # --- answering -----------------------------------------------------------------------------------------------

    def reject_and_close(self, status: int, reason: str) -> None:
        """Input the parser cannot go on from: answered after the requests before it, then the connection closes."""
        if self.closing or self.transport is None:
            return
        self.server.count(reason)
        self.closing = True
        self.enqueue(reject(self.server.clock, status, reason, None, False, False))

    def internal_error(self, exc: BaseException) -> None:
        log.error("admin connection failed", exc_info=exc)

    def send(self, data: bytes) -> None:
        self.enqueue(data)  # a 100 Continue: after the answers owed before it

    def enqueue(self, item: AdminRequest | bytes) -> None:
        self.queue.append(item)
        if self.serving is None:
            if self.transport is not None:
                self.transport.pause_reading()  # one request at a time
            self.serving = asyncio.get_running_loop().create_task(self.serve())

    async def serve(self) -> None:
        while self.queue and self.transport is not None:
            item = self.queue.popleft()
            if isinstance(item, bytes):  # written as it is: an error answer (the last) or a 100 Continue
                output = item
            else:
                response = await self.server.dispatch(item)
                keep_alive = item.keep_alive and not (self.closing and not self.queue)
                output = _encode(self.server.clock, response, item.method == "HEAD", keep_alive)
                if not keep_alive and not self.queue:
                    self.closing = True
            await self.writable.wait()
            if self.transport is None:
                break
            self.transport.write(output)
        self.serving = None
        transport = self.transport
        if transport is None:
            return
        if self.closing:
            transport.close()  # after the queued output; the sweep aborts it if the client never reads
            self.deadline = time.monotonic() + self.caps.write_timeout_s
            return
        if self.phase == IDLE:
            self.deadline = time.monotonic() + self.caps.keepalive_timeout_s
        transport.resume_reading()

    def expire(self) -> None:
        """Called by the sweep when the deadline of the current phase has passed."""
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > 0 or (self.closing and not self.busy):  # answers not read
            self.server.count("write_timeout")
            self.abort()
        elif self.busy:  # our own handler is running: its answer decides
            self.deadline = time.monotonic() + SWEEP_INTERVAL_S
        elif self.phase == IDLE:
            self.server.count("idle_timeout")
            self.abort()
        else:
            self.reject_and_close(408, "header_timeout" if self.phase == HEADERS else "body_timeout")


def _encode(clock: Clock, response: AdminResponse, head_only: bool, keep_alive: bool) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers.items())
    headers = f"Content-Type: {response.content_type}\r\n{extra}Cache-Control: no-store\r\n".encode("latin-1")
    answer = head(clock, response.status, headers, len(response.body), keep_alive)
    return answer if head_only else answer + response.body
