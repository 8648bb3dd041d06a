"""Bad rows: a sample of rejected requests, turned into `rejected` events for their own collectors.

Only a sampled rejection costs anything beyond one random number, and a per-second cap per worker keeps a flood of
garbage from becoming a flood of bad rows. What is recorded is anonymised: the client network, not the address, and
the request target with parameter values removed unless the configuration names them as safe to keep.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from urllib.parse import unquote

from trackpoint.collectors import Collector
from trackpoint.config.model import RejectedConfig
from trackpoint.event import Context, Event, Meta, random_id
from trackpoint.privacy.network import IPV4_PREFIX, IPV6_PREFIX, truncate_ip

EVENT_TYPE = "rejected"
# Longest parameter name and path kept in a recorded target (the whole target is cut to max_target_len as well).
_MAX_NAME_LEN = 64
_REMOVED = "*"


def redact_target(target: bytes, keep_values: frozenset[str], max_len: int) -> str:
    """The request target with every query value replaced by `*` unless its parameter is in `keep_values`, cut to
    `max_len` characters. Undecodable bytes are escaped, never dropped silently."""
    text = target.decode("utf-8", "backslashreplace")
    path, question, query = text.partition("?")
    if not question:
        return path[:max_len]
    params = []
    for param in query.split("&"):
        name, equals, value = param.partition("=")
        name = name[:_MAX_NAME_LEN]
        if equals and unquote(name) not in keep_values:
            value = _REMOVED
        params.append(name + equals + value if equals else name)
    return (path + "?" + "&".join(params))[:max_len]


class BadRows:
    """The rejected stream of one worker."""

    __slots__ = (
        "_clock",
        "_offer",
        "_prefixes",
        "_random",
        "_window_count",
        "_window_end",
        "capped",
        "collectors",
        "keep_values",
        "max_per_s",
        "max_target_len",
        "meta",
        "sample_rate",
    )

    def __init__(
        self,
        config: RejectedConfig,
        collectors: tuple[Collector, ...],
        meta: Meta,
        offer: Callable[[tuple[Collector, ...], Event], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.collectors = collectors
        self.meta = meta
        # The edge's offer: a collector that raises loses this bad row, counted and logged, the others still get it.
        self._offer = offer
        self.sample_rate = config.sample_rate
        self.max_per_s = config.max_per_s
        self.max_target_len = config.max_target_len
        self.keep_values = frozenset(config.keep_values)
        self._prefixes = (IPV4_PREFIX, IPV6_PREFIX)  # anonymize_ip's defaults
        self._clock = clock
        self._random = rng
        self._window_end = 0.0
        self._window_count = 0
        # Sampled rejections not recorded because the per-second cap was reached.
        self.capped = 0

    def sampled(self) -> bool:
        """Whether this rejection is recorded: sampled at `sample_rate`, at most `max_per_s` a second."""
        if self._random() >= self.sample_rate:
            return False
        now = self._clock()
        if now >= self._window_end:
            self._window_end = now + 1.0
            self._window_count = 0
        if self._window_count >= self.max_per_s:
            self.capped += 1
            return False
        self._window_count += 1
        return True

    def record(  # noqa: PLR0917 - everything known about one rejection
        self,
        status: int,
        reason: str,
        field: str | None,
        event_type: str | None,
        method: bytes,
        target: bytes,
        client_ip: str,
    ) -> None:
        """Builds the `rejected` event and offers it to the stream's collectors."""
        dims = {
            "reason": reason,
            "method": method.decode("latin-1"),
            "target": redact_target(target, self.keep_values, self.max_target_len),
        }
        if event_type is not None:
            dims["event_type"] = event_type
        if field is not None:
            dims["field"] = field
        ts = int(time.time() * 1000)
        context = Context(ip=truncate_ip(client_ip, *self._prefixes) if client_ip else None)
        event = Event(random_id(ts), EVENT_TYPE, ts, dims, {"status": status}, context, self.meta)
        self._offer(self.collectors, event)
