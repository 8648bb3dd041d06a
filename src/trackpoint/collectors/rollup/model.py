"""What a rollup counts: the counters of each role, how one event adds to them, and how summed counters become the
rows of a report (metrics per role, CTR).

The same rules run over the logs in SQL (`logs.py`); tests/test_rollup.py checks that both agree on the same events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from trackpoint.adtech.vast import QUARTILES, START
from trackpoint.collectors.rollup.config import Role
from trackpoint.event import Event

MS_PER_HOUR = 3_600_000

# The default fields each role reads (DESIGN.md, public contracts): the win's CPM price, the conversion's value
# (both money: integer micros), the video event's name and the vast preprocessor's playback offset.
PRICE_FIELD = "price"
VALUE_FIELD = "value"
VIDEO_EVENT_FIELD = "ev"
WATCH_FIELD = "watch_ms"

# The counters every rollup row keeps, after `events`; all integers, so sums are exact whatever the order.
COUNTERS = (
    "impressions",
    "clicks",
    "conversions",
    "conversion_value_micros",
    "wins",
    "spend_micros",
    "starts",
    "first_quartiles",
    "midpoints",
    "third_quartiles",
    "completes",
    "watch_time_ms",
)
_INDEX = {name: i for i, name in enumerate(COUNTERS)}
# The counter of each quartile event, and the quarters of the ad its watch_ms spans (watch_ms // quarters is the
# quarter of the ad this event proves was played: a view that stops between quartiles counts to the last one).
QUARTILE_COUNTERS = {"firstQuartile": "first_quartiles", "midpoint": "midpoints", "thirdQuartile": "third_quartiles",
                     "complete": "completes"}  # fmt: skip
QUARTERS = {name: round(share * 4) for name, share in QUARTILES.items()}

# The metrics a row of each role shows (CTR is derived on read, see `finish`).
ROLE_METRICS: dict[str, tuple[str, ...]] = {
    "impression": ("impressions",),
    "click": ("clicks",),
    "conversion": ("conversions", "conversion_value_micros"),
    "win": ("wins", "spend_micros"),
    "video": ("starts", "first_quartiles", "midpoints", "third_quartiles", "completes", "watch_time_ms"),
}


def _int(value: object) -> int:
    """A non-negative integer metric, else 0 (a float or a negative number adds nothing)."""
    return value if type(value) is int and value >= 0 else 0


def counters(event: Event, role: Role | None) -> list[int]:
    """What one event adds to its row: `events` first, then COUNTERS."""
    added = [1] + [0] * len(COUNTERS)
    if role is None:
        return added
    if role == "video":
        name = event.dims.get(VIDEO_EVENT_FIELD)
        if name == START:
            added[1 + _INDEX["starts"]] = 1
        elif name in QUARTILE_COUNTERS:
            added[1 + _INDEX[QUARTILE_COUNTERS[name]]] = 1
            added[1 + _INDEX["watch_time_ms"]] = _int(event.metrics.get(WATCH_FIELD)) // QUARTERS[name]
        return added
    added[1 + _INDEX[ROLE_METRICS[role][0]]] = 1
    if role == "conversion":
        added[1 + _INDEX["conversion_value_micros"]] = _int(event.metrics.get(VALUE_FIELD))
    elif role == "win":  # a CPM: the spend of one impression, rounded half up to the micro (as the banker debits)
        added[1 + _INDEX["spend_micros"]] = (_int(event.metrics.get(PRICE_FIELD)) + 500) // 1000
    return added


def dim_reader(dim: str) -> Callable[[Event], str | None]:
    """How a dim's value is read from an event: from dims (`cid`, and the dotted names preprocessors add, such as
    geo's `geo.country`), else a dotted path into the context (`device.browser`, as text)."""
    if "." not in dim:
        return lambda event: event.dims.get(dim)
    path = dim.split(".")

    def read(event: Event) -> str | None:
        added = event.dims.get(dim)
        if added is not None:
            return added
        value: Any = event.ctx
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
            if value is None:
                return None
        return text(value)

    return read


def text(value: object) -> str | None:
    """A context value as the logs' JSON shows it (true, 12, DE): strings, numbers and booleans; None otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return msgspec.json.encode(value).decode()
    return None


def hour_of(ts_ms: int) -> int:
    """The start of the event's hour (UTC), epoch ms."""
    return ts_ms - ts_ms % MS_PER_HOUR


def hour_text(hour_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(hour_ms // 1000))


class Row(msgspec.Struct, kw_only=True):
    """One report row: an hour (UTC, ISO 8601), an event type, the values of the dims grouped by (null when the
    events had none), the number of events and the metrics of the type's role."""

    hour: str
    type: str
    dims: dict[str, str | None]
    events: int
    metrics: dict[str, int | float | None]


# A row as a store or the logs sum it: (hour ms, type, dim values in `by` order, [events, *COUNTERS]).
Summed = tuple[int, str, tuple[str | None, ...], Sequence[int]]


def types_to_read(types: Sequence[str], roles: Mapping[str, Role]) -> tuple[str, ...]:
    """The event types a report must read for `types` (all when empty): a click type's CTR needs the impressions."""
    if not types or not any(roles.get(name) == "click" for name in types):
        return tuple(types)
    return tuple(dict.fromkeys([*types, *(name for name, role in roles.items() if role == "impression")]))


def finish(
    summed: Iterable[Summed], by: Sequence[str], roles: Mapping[str, Role], types: Sequence[str] = ()
) -> list[Row]:
    """Report rows of `types` (all when empty) from summed counters (read for `types_to_read(types)`), ordered by
    hour, type and dims: each shows the metrics of its type's role; a click row's `ctr` is its clicks over the
    impressions of the same hour and dims (null without any)."""
    ordered = sorted(summed, key=lambda s: (s[0], s[1], tuple((v is None, v or "") for v in s[2])))
    impressions: dict[tuple[int, tuple[str | None, ...]], int] = {}
    for hour, type_name, values, sums in ordered:
        if roles.get(type_name) == "impression":
            key = (hour, values)
            impressions[key] = impressions.get(key, 0) + sums[1 + _INDEX["impressions"]]
    rows = []
    for hour, type_name, values, sums in ordered:
        if types and type_name not in types:
            continue
        role = roles.get(type_name)
        metrics: dict[str, int | float | None] = {}
        for name in ROLE_METRICS.get(role or "", ()):
            metrics[name] = sums[1 + _INDEX[name]]
        if role == "click":
            shown = impressions.get((hour, values), 0)
            metrics["ctr"] = round(sums[1 + _INDEX["clicks"]] / shown, 6) if shown else None
        rows.append(
            Row(hour=hour_text(hour), type=type_name, dims=dict(zip(by, values, strict=True)), events=sums[0],
                metrics=metrics)
        )  # fmt: skip
    return rows
