"""The rollups' admin route, served on the admin port by the supervisor: `GET /reports/hourly`."""

from __future__ import annotations

import asyncio
import sqlite3
from urllib.parse import parse_qs

from trackpoint.admin.server import AdminRequest, AdminResponse
from trackpoint.collectors.rollup.report import ReportError, document, make_query, rollup_collector, store_report
from trackpoint.config.model import Config


def _listed(values: list[str]) -> list[str]:
    """`type=a,b&type=c` → [a, b, c]."""
    return [item for value in values for item in value.split(",")]


async def get_hourly(request: AdminRequest, config: Config) -> AdminResponse:
    """The hourly rollups: `?from=..&to=..` (ISO 8601 or epoch seconds; default today, UTC), `type=` (repeatable
    or comma-separated), `by=cid,crid` (default: the collector's dims; empty: per type only), `where=DIM=VALUE`
    (repeatable), `rollup=NAME`. Answers `{"rows": [{"hour", "type", "dims", "events", "metrics"}], ...}`, at most
    10,000 rows (`truncated`); 400 `invalid_query`, 404 `rollup_not_configured`, 503 `store_unavailable`."""
    query_string = parse_qs(request.query, keep_blank_values=True)
    try:
        name, collector = rollup_collector(config, query_string.get("rollup", [None])[0])
    except LookupError as exc:
        return AdminResponse.json(404, {"error": "rollup_not_configured", "detail": str(exc)})
    by = query_string.get("by")
    try:
        query = make_query(
            query_string.get("from", [None])[0],
            query_string.get("to", [None])[0],
            types=_listed(query_string.get("type", [])),
            by=None if by is None else _listed(by),
            where=query_string.get("where", []),
            default_by=collector.dims,
        )
        rows = await asyncio.to_thread(store_report, config, collector, query)
    except ReportError as exc:
        return AdminResponse.json(400, {"error": "invalid_query", "detail": str(exc)})
    except sqlite3.Error as exc:
        return AdminResponse.json(503, {"error": "store_unavailable", "detail": str(exc)})
    return AdminResponse.json(200, document(rows, query, f"rollups:{name}"))
