"""Batch bodies: the items of a JSON array, or of the array an SDK's envelope holds.

Shapes: a bare array (PostHog), `{"data": [...]}` (Snowplow), `{"batch": [...]}` (Segment, RudderStack),
`{"requests": ["?query", ...]}` (Matomo). Items stay raw JSON (`msgspec.Raw`): each is built as the JSON body of one
event, exactly as a single request's would be; a Matomo item is the query string of one.
"""

from __future__ import annotations

import msgspec

from trackpoint.fields.converters import Reject

# The members of an envelope that hold the items, in the order they are looked for.
ENVELOPE_KEYS = ("data", "batch", "requests")

_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])
_ENVELOPE = msgspec.json.Decoder(dict[str, msgspec.Raw])
_QUERY = msgspec.json.Decoder(str)


def batch_items(body: bytes | bytearray, max_items: int) -> list[msgspec.Raw | bytes]:
    """The items of a batch body: raw JSON objects, or (Matomo) query strings as bytes. 400 `invalid_json` for a
    body that is none of the shapes, 413 `batch_too_large` past `max_items`."""
    start = body.lstrip()[:1]
    try:
        if start == b"[":
            items: list[msgspec.Raw | bytes] = list(_ITEMS.decode(body))
        elif start == b"{":
            envelope = _ENVELOPE.decode(body)
            key = next((key for key in ENVELOPE_KEYS if key in envelope), None)
            if key is None:
                raise Reject(400, "invalid_json")
            listed = _ITEMS.decode(envelope[key])
            items = [_query(item) for item in listed] if key == "requests" else list(listed)
        else:
            raise Reject(400, "invalid_json")
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise Reject(400, "invalid_json") from None
    if len(items) > max_items:
        raise Reject(413, "batch_too_large")
    return items


def _query(item: msgspec.Raw) -> msgspec.Raw | bytes:
    """A Matomo request (`?idsite=1&rec=1&...`) as query bytes; an item that is not a string stays raw JSON (an
    object is read as one; anything else is refused when built)."""
    text = bytes(item).lstrip()
    if text[:1] != b'"':
        return item
    return _QUERY.decode(text).removeprefix("?").encode("utf-8")
