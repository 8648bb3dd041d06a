"""tag_dims: adds configured static dimensions to every event, never overwriting one the request set.

It runs on the request path, so it does one dict operation per configured dimension and nothing else.
"""

from __future__ import annotations

from trackpoint.event import Event
from trackpoint_sqlite.config import TagDimsConfig


class TagDims:
    """A preprocessor: a `name` for the counters and one call per event."""

    def __init__(self, name: str, config: TagDimsConfig) -> None:
        self.name = name
        self.dims = tuple(config.dims.items())

    def __call__(self, event: Event) -> Event:
        dims = event.dims
        for key, value in self.dims:
            dims.setdefault(key, value)
        return event
