"""The conformance battery every trackpoint collector passes, run against this plugin's sqlite collector:
delivery, outages and recovery, retries and replays without duplicates (trackpoint.testing.conformance).

The target is a database file in a temporary directory. An outage is another connection holding the database's
write lock (`BEGIN EXCLUSIVE`), as a long transaction of another writer would: the collector's batches time out on
the lock and are retried until the lock is released (trackpoint.testing.conformance.SqliteFileTarget).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import trackpoint_sqlite
from trackpoint.testing.conformance import CollectorConformance, SqliteFileTarget, Target


class TestSqliteConformance(CollectorConformance):
    """Every test of the battery, against a new SqliteTarget each."""

    plugins = (trackpoint_sqlite.plugin,)  # what provides the collector type, next to the built-in plugin

    async def make_target(self) -> Target:
        return SqliteTarget(Path(tempfile.mkdtemp(prefix="tp-sqlite-")) / "conformance.sqlite")


class SqliteTarget(SqliteFileTarget):
    """A database file of its own; its outage is the write lock held by another connection."""

    name = "sqlite"
    dedupes_replays = True  # the event id is the primary key and rows are inserted OR IGNORE

    def collector_config(self) -> dict[str, Any]:
        # A short busy timeout: a locked batch fails fast (well within the battery's send timeout) and is retried.
        return {"type": "sqlite", "path": str(self.path), "busy_timeout_ms": 200, "flush_interval_ms": 20}

    def ids_in(self, connection: sqlite3.Connection) -> list[str]:
        """Stored ids in insertion order (rowid); a duplicate is impossible by the primary key."""
        table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
        if connection.execute(table).fetchone() is None:
            return []
        return [str(row[0]) for row in connection.execute("SELECT id FROM events ORDER BY rowid")]
