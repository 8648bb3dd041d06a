"""The rollup conformance target: the rollups' SQLite database in a temporary directory.

An outage is another connection holding the database's write lock (SqliteFileTarget), as a long transaction of
another worker would. What reached the target is read back from the remembered ids (ordered by event time: counts do
not keep an order), and every read checks that the rollups counted exactly those events.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from trackpoint.testing.conformance import SqliteFileTarget


class RollupTarget(SqliteFileTarget):
    name = "rollup"
    dedupes_replays = True  # an id already counted is never counted again

    def collector_config(self) -> dict[str, Any]:
        # A short busy timeout: a locked batch fails fast (well within the battery's send timeout) and is retried.
        return {"type": "rollup", "sqlite_path": str(self.path), "busy_timeout_s": 0.2, "flush_interval_ms": 20}

    def ids_in(self, connection: sqlite3.Connection) -> list[str]:
        table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seen'"
        if connection.execute(table).fetchone() is None:
            return []
        ids = [row[0].hex() for row in connection.execute("SELECT id FROM seen ORDER BY ts")]
        (counted,) = connection.execute("SELECT COALESCE(SUM(events), 0) FROM rollups").fetchone()
        assert counted == len(ids), f"the rollups counted {counted} events for {len(ids)} ids"
        return ids


async def make_target() -> RollupTarget:
    return RollupTarget(Path(tempfile.mkdtemp(prefix="tp-rollup-")) / "rollup.db")
