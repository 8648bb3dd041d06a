"""The rollup conformance target: the rollups' SQLite database in a temporary directory.

An outage is another connection holding the database's write lock (`BEGIN EXCLUSIVE`), as a long transaction of
another worker would. What reached the target is read back from the remembered ids (ordered by event time: counts do
not keep an order), and every read checks that the rollups counted exactly those events.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

LOCK_WAIT_S = 10.0


class RollupTarget:
    name = "rollup"
    supports_restart = True
    dedupes_replays = True  # an id already counted is never counted again

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "rollup.db"
        self._lock: sqlite3.Connection | None = None

    def collector_config(self) -> dict[str, Any]:
        # A short busy timeout: a locked batch fails fast (well within the battery's send timeout) and is retried.
        return {"type": "rollup", "sqlite_path": str(self.path), "busy_timeout_s": 0.2, "flush_interval_ms": 20}

    async def read_ids(self) -> list[str]:
        return await asyncio.to_thread(self._read_ids)

    def _read_ids(self) -> list[str]:
        if not self.path.exists():
            return []
        connection = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
        try:
            table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'seen'"
            if connection.execute(table).fetchone() is None:
                return []
            ids = [row[0].hex() for row in connection.execute("SELECT id FROM seen ORDER BY ts")]
            (counted,) = connection.execute("SELECT COALESCE(SUM(events), 0) FROM rollups").fetchone()
            assert counted == len(ids), f"the rollups counted {counted} events for {len(ids)} ids"
            return ids
        finally:
            connection.close()

    async def stop(self) -> None:
        await asyncio.to_thread(self._take_lock)

    def _take_lock(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = sqlite3.connect(self.path, timeout=LOCK_WAIT_S, isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN EXCLUSIVE")
        self._lock = lock

    async def start(self) -> None:
        await asyncio.to_thread(self._release_lock)

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._release_lock)
        shutil.rmtree(self.directory, ignore_errors=True)


async def make_target() -> RollupTarget:
    return RollupTarget(Path(tempfile.mkdtemp(prefix="tp-rollup-")))
