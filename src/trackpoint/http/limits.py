"""The caps one HTTP connection checks, computed once from a limits section (server.limits or admin.limits)."""

from __future__ import annotations

from typing import Protocol


class LimitFields(Protocol):
    """What both limit sections (config/model.py `Limits` and `AdminLimits`) declare."""

    @property
    def max_request_line_bytes(self) -> int: ...
    @property
    def max_header_bytes(self) -> int: ...
    @property
    def max_header_count(self) -> int: ...
    @property
    def max_body_bytes(self) -> int: ...
    @property
    def max_inflated_bytes(self) -> int: ...
    @property
    def max_inflation_ratio(self) -> int: ...
    @property
    def header_timeout_s(self) -> float: ...
    @property
    def body_timeout_s(self) -> float: ...
    @property
    def keepalive_timeout_s(self) -> float: ...
    @property
    def write_timeout_s(self) -> float: ...
    @property
    def max_keepalive_requests(self) -> int: ...
    @property
    def max_pipelined_requests(self) -> int: ...


class Caps:
    """The limits as plain attributes (one look-up each on the request path), and the byte caps derived from them:
    what a request may take on the wire before its head is complete (request line, header lines with their
    separators), and in all once it has a body (the body, and the framing of a chunked body — sizes, extensions,
    trailers — up to as much again)."""

    __slots__ = (
        "body_timeout_s",
        "head_cap",
        "header_timeout_s",
        "keepalive_timeout_s",
        "max_body_bytes",
        "max_header_bytes",
        "max_header_count",
        "max_inflated_bytes",
        "max_inflation_ratio",
        "max_keepalive_requests",
        "max_pipelined_requests",
        "max_request_line_bytes",
        "request_cap",
        "write_timeout_s",
    )

    def __init__(self, limits: LimitFields) -> None:
        self.max_request_line_bytes = limits.max_request_line_bytes
        self.max_header_bytes = limits.max_header_bytes
        self.max_header_count = limits.max_header_count
        self.max_body_bytes = limits.max_body_bytes
        self.max_inflated_bytes = limits.max_inflated_bytes
        self.max_inflation_ratio = limits.max_inflation_ratio
        self.header_timeout_s = limits.header_timeout_s
        self.body_timeout_s = limits.body_timeout_s
        self.keepalive_timeout_s = limits.keepalive_timeout_s
        self.write_timeout_s = limits.write_timeout_s
        self.max_keepalive_requests = limits.max_keepalive_requests
        self.max_pipelined_requests = limits.max_pipelined_requests
        self.head_cap = limits.max_request_line_bytes + 32 + limits.max_header_bytes + 4 * limits.max_header_count
        self.request_cap = self.head_cap + 2 * limits.max_body_bytes + 4096
