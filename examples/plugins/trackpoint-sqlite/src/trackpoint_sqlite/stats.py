"""GET /sqlite/stats on the admin port: the row count per event type in each sqlite collector's database, read-only.

The handler gets the tracker's running configuration (the one in force after reloads): the databases it reads are
those of the configured sqlite collectors, each path resolved against `data_dir` exactly as the collector does.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from trackpoint.admin.server import AdminRequest, AdminResponse
from trackpoint.config.model import Config
from trackpoint_sqlite.config import SqliteCollectorConfig, database_path

READ_TIMEOUT_S = 1.0


def stats_databases(config: Config) -> dict[str, Path]:
    """The database of every sqlite collector in the configuration, by collector name."""
    return {
        name: database_path(config.data_dir, collector)
        for name, collector in sorted(config.collectors.items())
        if isinstance(collector, SqliteCollectorConfig)
    }


def count_rows(path: Path) -> dict[str, int]:
    """Rows per event type. The connection is read-only (`mode=ro`), and the SQL is fixed: nothing from the
    request reaches the database."""
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=READ_TIMEOUT_S)
    try:
        table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        if connection.execute(table).fetchone() is None:
            return {}  # the collector has not created its table yet
        counts = connection.execute("SELECT type, COUNT(*) FROM events GROUP BY type ORDER BY type").fetchall()
        return {str(event_type): int(count) for event_type, count in counts}
    finally:
        connection.close()


def database_stats(path: Path) -> dict[str, Any]:
    """One collector's entry: {"database", "rows", "total"}, or {"database", "error"[, "detail"]} when the file
    does not exist (the route never creates it) or cannot be read."""
    if not path.is_file():
        return {"database": str(path), "error": "no_database"}
    try:
        rows = count_rows(path)
    except sqlite3.Error as exc:
        return {"database": str(path), "error": "unavailable", "detail": str(exc)}
    return {"database": str(path), "rows": rows, "total": sum(rows.values())}


async def sqlite_stats(request: AdminRequest, config: Config) -> AdminResponse:
    """200 with {"collectors": {name: entry}} (see `database_stats`), one entry per sqlite collector of the running
    configuration; 404 when it has none."""
    databases = stats_databases(config)
    if not databases:
        return AdminResponse.json(404, {"error": "no_sqlite_collector"})

    def read_all() -> dict[str, dict[str, Any]]:
        return {name: database_stats(path) for name, path in databases.items()}

    collectors = await asyncio.to_thread(read_all)  # sqlite3 blocks: off the admin event loop
    return AdminResponse.json(200, {"collectors": collectors})
