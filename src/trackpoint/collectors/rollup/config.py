"""Options of the rollup collector: which dims to group by, what each event type measures, where the store is and
how long event ids are remembered.

Imported at start-up by the plugin registry, so it imports no client library.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from trackpoint.config.model import CollectorBase, Config, collectors_in_use

Role = Literal["impression", "click", "conversion", "win", "video"]

# The default event types and what each measures (the roles of the embedded default's types).
DEFAULT_ROLES: dict[str, Role] = {
    "impression": "impression",
    "click": "click",
    "conversion": "conversion",
    "win": "win",
    "video": "video",
}
DEFAULT_DIMS = ["cid", "crid", "pub"]
DEFAULT_DEDUPE_WINDOW_H = 48

# A dim: a dims name (`cid`, or a dotted one a preprocessor adds: `geo.country`), or a dotted path into the event's
# context (`device.browser`).
DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}(\.[A-Za-z_][A-Za-z0-9_-]{0,63}){0,3}$")
# Context members that identify a person: never a rollup dim (a row per IP would be a log, not a rollup).
PERSONAL_CONTEXT = frozenset({"ip", "ua", "referer"})


class RollupCollectorConfig(CollectorBase, tag="rollup"):
    """Hourly rollups: per hour (UTC), event type and `dims`, the number of events and what the type's role
    measures (impressions, clicks, conversions and their value, wins and spend, VAST starts, quartiles, completes and
    watch time), each event id counted once, in SQLite under data_dir. Attach it to the event types to count:
    `collectors: [log, rollup]`; read it with `GET /reports/hourly` on the admin port or `trackpoint report`."""

    # The store keeps counts per dim value only, never ctx.ip or ctx.ua (they cannot be dims): the privacy
    # filter's per-event copy would buy nothing here.
    trusted: Annotated[
        bool, Meta(description="Trusted by default: the store keeps only counts per hour, type and dim values.")
    ] = True
    # Counts need no sub-second freshness, and larger transactions cost less per event (measured: 14.5 µs of CPU
    # per event at 1024 per batch, 10.5 µs at 4096).
    flush_interval_ms: Annotated[
        int, Meta(ge=1, le=60_000, description="The batch is counted at least this often.")
    ] = 1000
    batch_max_events: Annotated[
        int,
        Meta(ge=1, description="A batch this large is counted at once, in one transaction, without waiting."),
    ] = 4096
    dims: Annotated[
        list[str],
        Meta(
            description="What rows are grouped by: dims names (`cid`, and those preprocessors add: `geo.country`) "
            "or dotted paths into the event's context (`device.browser`); a dotted name is looked up in dims first. "
            "An event without one counts under null. Each distinct combination is a row per hour and type, so keep "
            "high-cardinality fields (ids, URLs) out.",
            max_length=8,
        ),
    ] = msgspec.field(default_factory=lambda: list(DEFAULT_DIMS))
    roles: Annotated[
        dict[str, Role],
        Meta(
            description="What each event type measures, by type name: impression (impressions), click (clicks, "
            "and CTR against the impressions of the same hour and dims), conversion (conversions, "
            "conversion_value_micros from metrics.value), win (wins, spend_micros: metrics.price / 1000, a CPM), "
            "video (starts, first_quartiles, midpoints, third_quartiles, completes and watch_time_ms, from the vast "
            "preprocessor's metrics.watch_ms). Other types count events only."
        ),
    ] = msgspec.field(default_factory=lambda: dict(DEFAULT_ROLES))
    sqlite_path: Annotated[str, Meta(description="The SQLite database, relative to data_dir.")] = "rollup/rollup.db"
    dedupe_window_h: Annotated[
        int,
        Meta(
            ge=1,
            le=24 * 400,
            description="How long a counted event id is remembered, in hours of event time (from the last time "
            "it was seen). An event older than this is not counted (outcome `too_late`): a retry or a replay "
            "within the window is recognised, and one beyond it cannot count twice either, whatever the clock does "
            "(an id forgotten stays too late). Costs about 65 bytes "
            "of disk per distinct event of the window. Beyond it, report from the logs (`trackpoint report --logs`).",
        ),
    ] = DEFAULT_DEDUPE_WINDOW_H
    retention_days: Annotated[
        int, Meta(ge=1, le=3660, description="Rollup rows older than this many days are deleted.")
    ] = 400
    busy_timeout_s: Annotated[
        float,
        Meta(
            gt=0,
            le=600,
            description="How long a worker waits for another worker's transaction on the shared database before "
            "the batch is retried (it stays in memory, then in the spool).",
        ),
    ] = 10.0

    def __post_init__(self) -> None:
        for dim in self.dims:
            if DIM_NAME.fullmatch(dim) is None:
                raise ValueError(f"dims: {dim!r} is not a dims name or a dotted context path (geo.country)")
            if dim.split(".")[0] in PERSONAL_CONTEXT:
                raise ValueError(f"dims: {dim!r} identifies a person; a rollup cannot group by it")
        if len(set(self.dims)) != len(self.dims):
            raise ValueError("dims: a dim is listed twice")


def rollups_in_use(config: Config) -> dict[str, RollupCollectorConfig]:
    """The rollup collectors some event type feeds (the implicit `rollup` exists in every config, used or not)."""
    return collectors_in_use(config, RollupCollectorConfig)
