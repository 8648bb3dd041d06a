"""The hourly report: its query (from the admin route's parameters or the CLI's options), read from the rollups,
and its JSON and CSV forms. The admin route and `trackpoint report` both answer through here, so they agree.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from trackpoint.collectors.rollup.config import DIM_NAME, RollupCollectorConfig, rollups_in_use
from trackpoint.collectors.rollup.model import COUNTERS, MS_PER_HOUR, Row, finish, hour_of, hour_text, types_to_read
from trackpoint.collectors.rollup.store import Query, read_rollups
from trackpoint.config.model import Config

if TYPE_CHECKING:  # rich is imported by the CLI's table only, not by the admin route the supervisor loads
    from rich.table import Table

MAX_ROWS = 10_000  # one answer of the admin route stays small whatever the store holds
MAX_HOURS = 24 * 400


class ReportError(ValueError):
    """A query the report cannot answer (a bad time, an unknown dim or collector): a 400 or a usage error."""


def parse_time(value: str, option: str) -> int:
    """Epoch seconds, epoch milliseconds or ISO 8601 (UTC unless it says otherwise) → epoch ms."""
    try:
        number = float(value)
    except ValueError:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ReportError(f"{option}: not a time: {value!r} (use ISO 8601 or epoch seconds)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)
    if not math.isfinite(number) or abs(number) > 1e15:  # nan, inf, 1e400: no moment (past year 33,000 in ms)
        raise ReportError(f"{option}: not a time: {value!r} (use ISO 8601 or epoch seconds)")
    return int(number if number > 1e11 else number * 1000)


def make_query(
    since: str | None,
    until: str | None,
    *,
    types: Sequence[str],
    by: Sequence[str] | None,
    where: Sequence[str],
    default_by: Sequence[str],
    now_ms: int | None = None,
) -> Query:
    """The query of a report: `since` defaults to the start of today (UTC), `until` to the end of this hour; `by`
    to the collector's dims; `where` items are `DIM=VALUE`."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    from_ms = parse_time(since, "from") if since else now - now % (24 * MS_PER_HOUR)
    to_ms = parse_time(until, "to") if until else hour_of(now) + MS_PER_HOUR
    if to_ms <= from_ms:
        raise ReportError("to: must be later than from")
    if (to_ms - hour_of(from_ms)) // MS_PER_HOUR > MAX_HOURS:
        raise ReportError(f"from, to: at most {MAX_HOURS} hours at once")
    grouped = tuple(default_by if by is None else [dim for dim in by if dim])
    filters: dict[str, str] = {}
    for item in where:
        dim, equals, value = item.partition("=")
        if not equals:
            raise ReportError(f"where: {item!r} is not DIM=VALUE")
        filters[dim] = value
    for dim in (*grouped, *filters):
        if DIM_NAME.fullmatch(dim) is None:
            raise ReportError(f"{dim!r} is not a dim name (cid, geo.country)")
    if len(set(grouped)) != len(grouped):
        raise ReportError("by: a dim is listed twice")
    return Query(from_ms, to_ms, tuple(t for t in types if t), grouped, filters)


def rollup_collector(config: Config, name: str | None) -> tuple[str, RollupCollectorConfig]:
    """The rollup collector a report reads: `name`, else the only (or first by name) one some event type feeds."""
    rollups = rollups_in_use(config)
    if not rollups:
        raise LookupError("no event type feeds a collector of type rollup (collectors: [log, rollup])")
    chosen = name or min(rollups)
    collector = rollups.get(chosen)
    if collector is None:
        raise LookupError(f"no rollup collector named {chosen!r} in use (in use: {', '.join(sorted(rollups))})")
    return chosen, collector


def store_report(config: Config, collector: RollupCollectorConfig, query: Query) -> list[Row]:
    """The report from the rollups' store (blocking). Only the collector's dims can be grouped or filtered by."""
    unknown = [dim for dim in (*query.by, *query.where) if dim not in collector.dims]
    if unknown:
        raise ReportError(
            f"{', '.join(map(repr, unknown))}: not a dim of the rollups (dims: {', '.join(collector.dims)}); "
            "`trackpoint report --logs` groups by any"
        )
    read = dataclasses.replace(query, types=types_to_read(query.types, collector.roles))
    summed = read_rollups(rollups_path(config, collector), read, collector.busy_timeout_s)
    return finish(summed, query.by, collector.roles, query.types)


def rollups_path(config: Config, collector: RollupCollectorConfig) -> Path:
    """The rollups' database of a collector (created by the tracker once it writes a row)."""
    return Path(config.data_dir) / collector.sqlite_path


def document(rows: Sequence[Row], query: Query, source: str, limit: int | None = MAX_ROWS) -> dict[str, object]:
    """The report as JSON: `rows` (at most `limit`; `truncated` says when more matched), and what was asked."""
    shown = rows if limit is None else rows[:limit]
    return {
        "rows": shown,
        "from": hour_text(hour_of(query.from_ms)),
        "to": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(query.to_ms // 1000)),
        "types": list(query.types),
        "by": list(query.by),
        "where": dict(query.where),
        "source": source,
        "truncated": len(shown) < len(rows),
    }


def to_json(rows: Sequence[Row], query: Query, source: str) -> bytes:
    return msgspec.json.format(msgspec.json.encode(document(rows, query, source, None)), indent=2)


def metric_names(rows: Sequence[Row]) -> list[str]:
    """The metrics the rows show, in COUNTERS order (CTR after clicks)."""
    present = {name for row in rows for name in row.metrics}
    ordered = [name for name in (*COUNTERS[:2], "ctr", *COUNTERS[2:]) if name in present]
    return ordered


def to_csv(rows: Sequence[Row], by: Sequence[str]) -> str:
    """One line per row: hour, type, the dims, events, then every metric any row shows (empty where it has none)."""
    metrics = metric_names(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["hour", "type", *by, "events", *metrics])
    for row in rows:
        values: Mapping[str, object] = row.metrics
        writer.writerow([
            row.hour, row.type, *(row.dims.get(dim) or "" for dim in by), row.events,
            *("" if values.get(m) is None else values[m] for m in metrics),
        ])  # fmt: skip
    return out.getvalue()


# The table's short names (money in currency units, times in seconds); CSV and JSON keep the metric names.
TABLE_LABELS = {
    "conversion_value_micros": "value",
    "spend_micros": "spend",
    "first_quartiles": "q1",
    "midpoints": "q2",
    "third_quartiles": "q3",
    "watch_time_ms": "watched",
}


def _shown(name: str, value: float | None) -> str:
    label = TABLE_LABELS.get(name, name)
    if value is None:
        return f"{label} —"
    if name == "ctr":
        return f"{label} {value:.2%}"
    if name.endswith("_micros"):  # currency units, exactly: 0.094, 99.80
        units, micros = divmod(int(value), 1_000_000)
        return f"{label} {units:,}.{f'{micros:06d}'.rstrip('0').ljust(2, '0')}"
    if name.endswith("_ms"):
        return f"{label} {value / 1000:,.1f} s"
    return f"{label} {value:,}"


def to_table(rows: Sequence[Row], by: Sequence[str], source: str) -> Table:
    """A rich table with one metrics column (each row shows its role's metrics by name), readable on a laptop."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"hourly report · {source}")
    for column in ("hour (UTC)", "type", *by, "events", "metrics"):
        table.add_column(column, justify="right" if column == "events" else "left")
    for row in rows:
        # A type and dims come from requests: Text, never markup (`cid=[/x]` was a MarkupError traceback).
        table.add_row(
            row.hour.replace("T", " ").removesuffix(":00Z"), Text(row.type),
            *(Text(row.dims.get(dim) or "—") for dim in by),
            f"{row.events:,}", " · ".join(_shown(name, value) for name, value in row.metrics.items()),
        )  # fmt: skip
    return table
