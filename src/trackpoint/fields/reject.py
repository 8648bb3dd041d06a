"""Reject: how any part of the request path refuses a request. A module of its own, outside the compiled request
path (trackpoint/_native.py), so that plugins and the reference see a plain Python class with its signature and
docstring; `trackpoint.fields.converters.Reject` is the same class.
"""

from __future__ import annotations


class Reject(Exception):
    """A request the tracker refuses: HTTP status, machine-readable reason and, for a field, its name."""

    def __init__(self, status: int, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.field = field
