"""flag_invalid_traffic: marks bots, prefetches and impossibly fast clicks in `dims.ivt` (the first finding wins).

The User-Agent verdict comes from parse_user_agent's cached device when it ran first; the prefetch headers are read
only when that check is on. The event type's `invalid_traffic` policy then keeps, routes or drops flagged events.
"""

from __future__ import annotations

from trackpoint.adtech.ivt import BOT, IVT_DIM, PREFETCH, TOO_FAST, automated, flag, prefetch
from trackpoint.config.model import FieldSpec
from trackpoint.event import Event
from trackpoint.preprocessors.flag_invalid_traffic.config import FlagInvalidTrafficConfig

# The prefetch headers, read into private dims that this preprocessor removes again.
PREFETCH_HEADERS = {
    "ivt.purpose": "Purpose",
    "ivt.sec_purpose": "Sec-Purpose",
    "ivt.x_moz": "X-Moz",
    "ivt.x_purpose": "X-Purpose",
}
_CACHE_LIMIT = 65536


class FlagInvalidTraffic:
    """Sets dims.ivt to `bot`, `prefetch` or `too_fast`; counts each flag (`counts`, on /metrics)."""

    flag_dim = IVT_DIM  # the event type's invalid_traffic policy routes on this dim

    def __init__(self, name: str, config: FlagInvalidTrafficConfig) -> None:
        self.name = name
        self.bots = config.bots
        self.prefetch_dims = tuple(PREFETCH_HEADERS) if config.prefetch else ()
        self.time_field = config.impression_time_field
        self.min_delay_ms = config.min_delay_ms
        self.input_fields: dict[str, FieldSpec] = {}
        if config.prefetch:
            for dim, header in PREFETCH_HEADERS.items():
                self.input_fields[dim] = FieldSpec(source="header", name=header, max_len=256)
        if self.time_field is not None:
            self.input_fields[self.time_field] = FieldSpec(type="timestamp", max_len=32)
        self.counts = dict.fromkeys((BOT, PREFETCH, TOO_FAST), 0)
        self._automated: dict[str, bool] = {}  # User-Agent → verdict, when parse_user_agent did not run

    def __call__(self, event: Event) -> Event:
        dims = event.dims
        prefetched = False
        for dim in self.prefetch_dims:  # removed whatever the verdict: they are input, not event data
            value = dims.pop(dim, None)
            if value is not None and prefetch(value):
                prefetched = True
        if IVT_DIM in dims:  # another preprocessor flagged it already: the first finding wins
            return event
        finding = None
        if self.bots and self.is_bot(event):
            finding = BOT
        elif prefetched:
            finding = PREFETCH
        elif self.time_field is not None:
            shown = event.metrics.get(self.time_field)
            if shown is not None and event.ts - shown < self.min_delay_ms:
                finding = TOO_FAST
        if finding is not None:
            flag(event, finding)
            self.counts[finding] += 1
        return event

    def is_bot(self, event: Event) -> bool:
        ctx = event.ctx
        ua = ctx.ua
        if ua is not None and not ua.strip():  # an empty User-Agent: every browser sends one
            return True
        device = ctx.device
        if device is not None:  # parse_user_agent's verdict, cached with the parse
            return device.bot
        if ua is None:  # no User-Agent at all
            return True
        verdict = self._automated.get(ua)
        if verdict is None:
            if len(self._automated) >= _CACHE_LIMIT:
                self._automated.clear()
            verdict = self._automated[ua] = automated(ua)
        return verdict
