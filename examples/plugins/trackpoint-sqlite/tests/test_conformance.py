"""The conformance battery every trackpoint collector passes, run against this plugin's sqlite collector:
delivery, outages and recovery, retries and replays without duplicates (trackpoint.testing.conformance).

The target is a database file in a temporary directory. An outage is another connection holding the database's
write lock (`BEGIN EXCLUSIVE`), as a long transaction of another writer would: the collector's batches time out on
the lock and are retried until the lock is released.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import trackpoint_sqlite
from trackpoint.testing.conformance import CollectorConformance, Target

LOCK_WAIT_S = 10.0


class TestSqliteConformance(CollectorConformance):
    """Every test of the battery, against a new SqliteTarget each."""

    plugins = (trackpoint_sqlite.plugin,)  # what provides the collector type, next to the built-in plugin

    async def make_target(self) -> Target:
        return SqliteTarget(Path(tempfile.mkdtemp(prefix="tp-sqlite-")))


class SqliteTarget:
    """A database file of its own; its outage is the write lock held by another connection."""

    name = "sqlite"
    supports_restart = True
    dedupes_replays = True  # the event id is the primary key and rows are inserted OR IGNORE

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "conformance.sqlite"
        self._lock: sqlite3.Connection | None = None

    def collector_config(self) -> dict[str, Any]:
        # A short busy timeout: a locked batch fails fast (well within the battery's send timeout) and is retried.
        return {"type": "sqlite", "path": str(self.path), "busy_timeout_ms": 200, "flush_interval_ms": 20}

    async def read_ids(self) -> list[str]:
        """Stored ids in insertion order (rowid); a duplicate is impossible by the primary key."""
        return await asyncio.to_thread(self._read_ids)

    def _read_ids(self) -> list[str]:
        if not self.path.exists():
            return []
        connection = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
        try:
            table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'"
            if connection.execute(table).fetchone() is None:
                return []
            return [str(row[0]) for row in connection.execute("SELECT id FROM events ORDER BY rowid")]
        finally:
            connection.close()

    async def stop(self) -> None:
        """Another connection takes the write lock and keeps it: every write waits, then fails "database is locked"."""
        await asyncio.to_thread(self._take_lock)

    def _take_lock(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: the lock is taken and released on different threads of the default executor.
        lock = sqlite3.connect(self.path, timeout=LOCK_WAIT_S, isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN EXCLUSIVE")
        self._lock = lock

    async def start(self) -> None:
        """The lock is released: writes go through again."""
        await asyncio.to_thread(self._release_lock)

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._release_lock)
        shutil.rmtree(self.directory, ignore_errors=True)
