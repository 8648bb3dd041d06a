"""The live tail of a worker: its most recent events in a bounded deque, sent to the supervisor with its stats.

The request path only appends to the deque; the privacy filter (what an untrusted collector would get) runs once a
second on what is taken, never per request.
"""

from __future__ import annotations

from collections import deque

from trackpoint.config.model import Config, EventTypeSpec
from trackpoint.config.private import preprocessor_private_dims, private_fields
from trackpoint.event import Event
from trackpoint.privacy.filter import PrivacyFilter

# Events a worker keeps between two stats reports (one a second): a tail for eyes, not a sample for statistics.
TAIL_EVENTS = 50


class RecentEvents:
    """The newest events of one worker, at most TAIL_EVENTS; `take()` hands them over filtered and empties it."""

    def __init__(self, config: Config) -> None:
        self.events: deque[Event] = deque(maxlen=TAIL_EVENTS)
        # Per event type, as an untrusted collector with no lists of its own gets it: no raw IP or User-Agent, no
        # field read from the IP, a cookie or a header, no private dim a preprocessor adds (geo's city), the referer
        # without its query string.
        self.filters = {
            name: PrivacyFilter(trusted=False, allow=None, deny=sorted(_private(config, spec).values()))
            for name, spec in config.event_types.items()
        }
        self._untrusted = PrivacyFilter(trusted=False, allow=None, deny=[])

    def take(self) -> list[Event]:
        taken = [self.filters.get(event.type, self._untrusted)(event) for event in self.events]
        self.events.clear()
        return taken


def _private(config: Config, spec: EventTypeSpec) -> dict[str, str]:
    return private_fields(spec) | preprocessor_private_dims(config, spec)
