"""`multipart/form-data` bodies (what `navigator.sendBeacon(FormData)` sends), read like a form.

Only the declared field names are kept, the first of each name; file parts (a `filename` in their
Content-Disposition) are skipped, never stored. Caps: parts per body and bytes per part head (the body itself is
capped by `server.limits.max_body_bytes`, each value by its field's `max_len`).
"""

from __future__ import annotations

import re

from trackpoint.fields.converters import Reject

MAX_PARTS = 64
MAX_PART_HEAD_BYTES = 1024
# RFC 2046 §5.1.1: a boundary is 1 to 70 characters.
_BOUNDARY = re.compile(rb'boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))', re.IGNORECASE)
_NAME = re.compile(rb'(?:^|;)\s*name="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb"(?:^|;)\s*filename\*?=", re.IGNORECASE)


def boundary(content_type: bytes) -> bytes:
    """The delimiter of a multipart body from its Content-Type; 400 `invalid_multipart` without one."""
    found = _BOUNDARY.search(content_type)
    if found is None:
        raise Reject(400, "invalid_multipart")
    return b"--" + (found.group(1) or found.group(2))


def form_fields(body: bytes, delimiter: bytes, names: frozenset[str]) -> dict[str, str]:
    """The wanted members of a multipart/form-data body, the first of each name; 400 `invalid_multipart` for a body
    that is not one (no closing delimiter, a part without a head, too many parts, a value not UTF-8)."""
    found: dict[str, str] = {}
    sections = body.split(b"\r\n" + delimiter)
    first = sections[0]
    if not first.startswith(delimiter) or len(sections) < 2 or not sections[-1].startswith(b"--"):
        raise Reject(400, "invalid_multipart")
    sections[0] = first[len(delimiter) :]
    if len(sections) - 1 > MAX_PARTS:
        raise Reject(400, "invalid_multipart")
    for section in sections[:-1]:  # the last is the closing `--` and the epilogue
        head, separator, value = section.partition(b"\r\n\r\n")
        if not separator or len(head) > MAX_PART_HEAD_BYTES:
            raise Reject(400, "invalid_multipart")
        disposition = next(
            (line[20:] for line in head.split(b"\r\n") if line[:20].lower() == b"content-disposition:"), None
        )
        if disposition is None or not disposition.strip().lower().startswith(b"form-data"):
            raise Reject(400, "invalid_multipart")
        if _FILENAME.search(disposition):
            continue  # a file: never stored
        named = _NAME.search(disposition)
        if named is None:
            raise Reject(400, "invalid_multipart")
        try:
            name = named.group(1).decode("utf-8")
            if name in names and name not in found:
                found[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise Reject(400, "invalid_multipart") from None
    return found
