"""The live tail of a worker: its most recent events in a bounded deque, sent to the supervisor with its stats.

The request path only appends to the deque; the privacy filter (what an untrusted collector would get) and the bound in
bytes run once a second on what is taken, never per request, and only while someone watches the tail (`watched`, set
by the supervisor's Tail command: process/control.py).
"""

from __future__ import annotations

from collections import deque

import msgspec

from trackpoint.config.model import Config, EventTypeSpec
from trackpoint.config.private import preprocessor_private_dims, private_fields, url_fields
from trackpoint.event import Event, malformed
from trackpoint.privacy.filter import PrivacyFilter

# Events a worker keeps between two stats reports (one a second): a tail for eyes, not a sample for statistics.
TAIL_EVENTS = 50
# The most one of them takes in a report (msgpack): a longer one has its long values cut to TAIL_VALUE_CHARS, and is
# left out if it is still too long. A value a plugin made huge (a 1.5 MB dim) must not carry the report toward the
# control channel's frame limit (process/control.py MAX_FRAME, 64 MiB): TAIL_EVENTS x 4 KiB is 200 KiB at most.
TAIL_EVENT_BYTES = 4096
TAIL_VALUE_CHARS = 256


class RecentEvents:
    """The newest events of one worker, at most TAIL_EVENTS; `take()` hands them over filtered, encoded (msgpack,
    each at most TAIL_EVENT_BYTES) and empties it."""

    def __init__(self, config: Config) -> None:
        """`config`: with the event types as the worker builds them (`preprocessors.with_preprocessor_inputs`)."""
        self.events: deque[Event] = deque(maxlen=TAIL_EVENTS)
        # Whether the dashboard's tail is open somewhere: the worker's reports carry `take()` only while it is. The
        # deque keeps filling meanwhile, so a tail opened again starts with the newest events, each handed over once.
        self.watched = False
        # Per event type, as an untrusted collector with no lists of its own gets it: no raw IP or User-Agent, no
        # field read from the IP, a cookie or a header (by the type or its preprocessors), no private dim a
        # preprocessor adds (geo's city), the referer and `url` fields without their query string.
        self.filters = {
            name: PrivacyFilter(
                trusted=False,
                allow=None,
                deny=sorted(_private(config, spec).values()),
                trim_url=sorted(url_fields(spec).values()),
            )
            for name, spec in config.event_types.items()
        }
        self._untrusted = PrivacyFilter(trusted=False, allow=None, deny=[])
        self._encoder = msgspec.msgpack.Encoder()

    def take(self) -> list[msgspec.Raw]:
        """The tail since the last call, filtered and encoded. An event a plugin's collector has broken since
        (collectors share the edge's events) is left out: it would fail the report it rides on."""
        events = list(self.events)
        self.events.clear()
        taken = []
        for event in events:
            if malformed(event) is not None:
                continue
            try:
                encoded = self._encode(self.filters.get(event.type, self._untrusted)(event))
            except Exception:  # left malformed by a plugin (a value msgpack has no type for): left out
                continue
            if encoded is not None:
                taken.append(msgspec.Raw(encoded))
        return taken

    def _encode(self, event: Event) -> bytes | None:
        """The event in at most TAIL_EVENT_BYTES, its long values cut if need be; None if it cannot fit."""
        encoded = self._encoder.encode(event)
        if len(encoded) <= TAIL_EVENT_BYTES:
            return encoded
        ua, referer = event.ctx.ua, event.ctx.referer
        ctx = msgspec.structs.replace(
            event.ctx, ua=None if ua is None else _cut(ua), referer=None if referer is None else _cut(referer)
        )
        cut = msgspec.structs.replace(event, dims={name: _cut(value) for name, value in event.dims.items()}, ctx=ctx)
        encoded = self._encoder.encode(cut)
        return encoded if len(encoded) <= TAIL_EVENT_BYTES else None


def _cut(value: str) -> str:
    return value if len(value) <= TAIL_VALUE_CHARS else value[: TAIL_VALUE_CHARS - 1] + "…"


def _private(config: Config, spec: EventTypeSpec) -> dict[str, str]:
    return private_fields(spec) | preprocessor_private_dims(config, spec)
