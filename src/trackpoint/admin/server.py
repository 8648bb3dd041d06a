"""A small HTTP/1.1 server for the admin port: a table of (method, path) → async handler, one request per connection.

The admin port carries health checks and scrapes, not tracking traffic, so clarity wins over speed here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import unquote

import httptools
import msgspec

from trackpoint.edge.responses import REASONS, http_date

log = logging.getLogger("trackpoint.admin")

MAX_BODY_BYTES = 1 << 20


@dataclass
class AdminRequest:
    """One request to the admin port, read whole (bodies up to 1 MiB)."""

    method: str
    path: str
    query: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # The values of a route's `{name}` segments, URL-decoded.
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class AdminResponse:
    """What an admin handler returns; `json()` builds the usual JSON answer."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, document: object) -> AdminResponse:
        """A JSON response (msgspec-encoded: structs, dicts, lists and scalars)."""
        return cls(status, msgspec.json.encode(document))


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


class AdminServer:
    """Routes by exact (method, path); a path may have `{name}` segments (`/banker/campaigns/{id}`), each matching
    one non-empty segment, which the handler finds in `request.params`."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.patterns: list[tuple[str, tuple[str, ...], Handler]] = []

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

    async def dispatch(self, request: AdminRequest) -> AdminResponse:
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

    async def start(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: _AdminProtocol(self), host, port, reuse_address=True)


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
    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body = bytearray()
        self.headers: dict[str, str] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(AdminResponse.json(400, {"error": "bad_request"}), head=False)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > MAX_BODY_BYTES:
            raise ValueError("admin request body too large")

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self.url)
        request = AdminRequest(
            method=self.parser.get_method().decode("ascii"),
            path=parsed.path.decode("utf-8", "replace"),
            query=(parsed.query or b"").decode("utf-8", "replace"),
            body=bytes(self.body),
            headers=self.headers,
        )
        task = asyncio.get_running_loop().create_task(self.server.dispatch(request))
        task.add_done_callback(lambda done: self._write(done.result(), head=request.method == "HEAD"))

    def _write(self, response: AdminResponse, head: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        header = (
            f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}\r\n"
            f"Server: trackpoint-admin\r\nDate: {http_date().decode()}\r\n"
            f"Content-Type: {response.content_type}\r\nContent-Length: {len(response.body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        self.transport.write(header if head else header + response.body)
        self.transport.close()
