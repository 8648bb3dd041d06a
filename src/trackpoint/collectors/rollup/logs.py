"""The hourly report straight over log files, with DuckDB (the `reports` extra): for history beyond the rollups'
window, or any dims. It applies the rollups' rules (model.py) in SQL: each event id counted once (its earliest
line, reader.precedence), in the hour of that line, with the counters of its type's role.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trackpoint.collectors.log.compression import cut_short
from trackpoint.collectors.log.reader import current_name
from trackpoint.collectors.rollup.config import Role
from trackpoint.collectors.rollup.model import (
    COUNTERS,
    MS_PER_HOUR,
    PRICE_FIELD,
    QUARTERS,
    QUARTILE_COUNTERS,
    ROLE_METRICS,
    VALUE_FIELD,
    VIDEO_EVENT_FIELD,
    WATCH_FIELD,
    Row,
    finish,
    hour_of,
    types_to_read,
)
from trackpoint.collectors.rollup.store import Query

INSTALL_HINT = "the report over logs needs DuckDB: pip install 'trackpoint[reports]'"
# A live directory renames (compresses) and removes files while DuckDB reads them: it reads them again, under the
# names they have then, this many times at most.
READ_ATTEMPTS = 5
# The columns read from each line; the rest of an event (meta, the context's other members) is never parsed.
_COLUMNS = {
    "id": "VARCHAR",
    "type": "VARCHAR",
    "ts": "BIGINT",
    "dims": "MAP(VARCHAR, VARCHAR)",
    "metrics": "JSON",
    "ctx": "JSON",
}


class LogsReportError(Exception):
    """DuckDB is missing, or could not read the files."""


@dataclass
class LogsReport:
    """The rows, and what reading cost: lines read (events), distinct ids among them, torn lines, seconds; the
    files gone before they were read (under their name and compressed), skipped; and the compressed files that end
    early, counted as far as they decoded."""

    rows: list[Row]
    events: int
    distinct: int
    skipped: int
    seconds: float
    missing: list[str]
    truncated: list[str]

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _dim_sql(dim: str) -> str:
    """The SQL reading a dim (names are DIM_NAME-checked: letters, digits, _ and -, no quotes): as model.dim_reader,
    a dotted name from dims (`geo.country`, added by geo) before the context path (`device.browser`)."""
    if "." in dim:
        return f"coalesce(dims['{dim}'], json_extract_string(ctx, '$.{dim}'))"
    return f"dims['{dim}']"


def _metric_sql(name: str) -> str:
    """A non-negative integer metric, else 0 (model._int)."""
    path = f"'$.\"{name}\"'"
    value = f"TRY_CAST(json_extract(metrics, {path}) AS BIGINT)"
    return f"CASE WHEN json_type(metrics, {path}) IN ('UBIGINT', 'BIGINT') AND {value} >= 0 THEN {value} ELSE 0 END"


def _counter_sql(name: str) -> str:
    """SUM of one counter over a group: model.counters in SQL."""
    ev = f"dims['{VIDEO_EVENT_FIELD}']"
    video = "role = 'video'"
    if name == "starts":
        return f"SUM(CASE WHEN {video} AND {ev} = 'start' THEN 1 ELSE 0 END)"
    for event_name, counter in QUARTILE_COUNTERS.items():
        if name == counter:
            return f"SUM(CASE WHEN {video} AND {ev} = '{event_name}' THEN 1 ELSE 0 END)"
    if name == "watch_time_ms":
        cases = " ".join(f"WHEN '{e}' THEN {_metric_sql(WATCH_FIELD)} // {k}" for e, k in QUARTERS.items())
        return f"SUM(CASE WHEN {video} THEN (CASE {ev} {cases} ELSE 0 END) ELSE 0 END)"
    if name == "conversion_value_micros":
        return f"SUM(CASE WHEN role = 'conversion' THEN {_metric_sql(VALUE_FIELD)} ELSE 0 END)"
    if name == "spend_micros":
        return f"SUM(CASE WHEN role = 'win' THEN ({_metric_sql(PRICE_FIELD)} + 500) // 1000 ELSE 0 END)"
    role = next(role for role, metrics in ROLE_METRICS.items() if metrics[0] == name)
    return f"SUM(CASE WHEN role = '{role}' THEN 1 ELSE 0 END)"


def logs_report(files: Sequence[Path], query: Query, roles: Mapping[str, Role]) -> LogsReport:
    """The report of `query` over the log files (zstd, gzip or plain JSON lines), deduped by event id."""
    try:
        import duckdb
    except ImportError:
        raise LogsReportError(INSTALL_HINT) from None
    started = time.perf_counter()
    wanted = list(dict.fromkeys((*query.by, *query.where)))
    extracted = "".join(f", {_dim_sql(dim)} AS d{i}" for i, dim in enumerate(wanted))
    connection = duckdb.connect()
    try:
        connection.execute("CREATE TEMP TABLE roles (type VARCHAR, role VARCHAR)")
        if roles:
            connection.executemany("INSERT INTO roles VALUES (?, ?)", list(roles.items()))
        connection.execute("SET preserve_insertion_order = true")  # rowid: file-name order, then line order
        missing = _read_lines(connection, files, extracted)
        # DuckDB reads a zstd file cut short as far as it decodes, and says nothing: the reader's check says it.
        truncated = [str(name) for name in map(current_name, files) if name is not None and cut_short(name)]
        events, skipped = connection.execute("SELECT count(id), count(*) - count(id) FROM lines").fetchone() or (0, 0)
        position = {dim: i for i, dim in enumerate(wanted)}
        conditions = ["hour >= ?", "hour < ?"]
        parameters: list[Any] = [hour_of(query.from_ms), query.to_ms]
        types = types_to_read(query.types, roles)
        if types:
            conditions.append(f"type IN ({', '.join('?' * len(types))})")
            parameters.extend(types)
        for dim, value in query.where.items():
            conditions.append(f"d{position[dim]} = ?")
            parameters.append(value)
        grouped = "".join(f", d{position[dim]}" for dim in query.by)
        sums = ", ".join(["count(*)", *(_counter_sql(name) for name in COUNTERS)])
        sql = (
            f"WITH firsts AS (SELECT *, ts - ts % {MS_PER_HOUR} AS hour FROM lines WHERE id IS NOT NULL "
            "QUALIFY row_number() OVER (PARTITION BY id ORDER BY ts, rowid) = 1) "
            f"SELECT hour, type{grouped}, {sums} FROM firsts LEFT JOIN roles USING (type) "
            f"WHERE {' AND '.join(conditions)} GROUP BY hour, type{grouped}"
        )
        result = connection.execute(sql, parameters).fetchall()
        (distinct,) = connection.execute("SELECT count(DISTINCT id) FROM lines").fetchone() or (0,)
    except duckdb.Error as exc:
        raise LogsReportError(f"DuckDB could not read the logs: {exc}") from None
    finally:
        connection.close()
    width = len(query.by)
    summed = [(r[0], r[1], tuple(r[2 : 2 + width]), [int(v) for v in r[2 + width :]]) for r in result]
    rows = finish(summed, query.by, roles, query.types)
    return LogsReport(rows, events, distinct, skipped, time.perf_counter() - started, missing, truncated)


def _read_lines(connection: Any, files: Sequence[Path], extracted: str) -> list[str]:
    """Loads the files (in name order) into the table `lines`; returns those gone. A file renamed or removed while
    DuckDB reads makes it fail: the files are then read again under the names they have now."""
    import duckdb

    for attempt in range(READ_ATTEMPTS):
        names = [current_name(path) for path in files]
        present = [str(name) for name in names if name is not None]
        missing = [str(path) for path, name in zip(files, names, strict=True) if name is None]
        source = (
            "read_json(?, format='newline_delimited', columns=?, ignore_errors=true)"
            if present
            else "(SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS type, NULL::BIGINT AS ts, "
            "NULL::MAP(VARCHAR, VARCHAR) AS dims, NULL::JSON AS metrics, NULL::JSON AS ctx WHERE false)"
        )
        try:
            connection.execute(
                f"CREATE OR REPLACE TEMP TABLE lines AS SELECT id, type, ts, dims, metrics{extracted} FROM {source}",
                [present, _COLUMNS] if present else [],
            )
        except duckdb.IOException:
            if attempt + 1 == READ_ATTEMPTS or all(Path(name).exists() for name in present):
                raise
            continue
        return missing
    return []  # not reached: the last attempt returns or raises
