"""One SQLite database file as the collectors' stores use it (the banker's embedded store, the rollups): WAL, opened
on first use, one statement sequence at a time on one shared connection, run in a thread off the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SqliteUnavailable(Exception):
    """The database cannot be used now (locked past the busy timeout, disk full, an unreadable file): retry later."""


class SqliteFile:
    """A database file and its schema (`CREATE ... IF NOT EXISTS` statements, run once when it is opened)."""

    def __init__(self, path: Path, schema: str, busy_timeout_s: float) -> None:
        self.path = path
        self.schema = schema
        self.busy_timeout_s = busy_timeout_s
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one call at a time waits for a thread
        # One statement sequence at a time on the shared connection. An abandoned call (a send past its timeout)
        # leaves its thread running: the next call must wait for it, or its BEGIN would land in the first one's
        # transaction and its ROLLBACK undo part of it.
        self._connection_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            try:
                _prepare(db, self.schema, self.busy_timeout_s)
            except BaseException:
                db.close()  # the next call opens it afresh
                raise
            self._db = db
        return self._db

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` in a thread; SqliteUnavailable when the database cannot be used."""

        def locked() -> T:
            with self._connection_lock:
                return work(self._connect())

        async with self._lock:
            try:
                return await asyncio.to_thread(locked)
            # Locked past the timeout, disk full, unreadable file; a data_dir that cannot hold the file.
            except (sqlite3.OperationalError, OSError) as exc:
                raise SqliteUnavailable(f"sqlite {self.path}: {exc}") from exc

    async def close(self) -> None:
        def close() -> None:
            with self._connection_lock:  # after a thread still running an abandoned call
                if self._db is not None:
                    self._db.close()
                    self._db = None

        async with self._lock:
            await asyncio.to_thread(close)


def _prepare(db: sqlite3.Connection, schema: str, busy_timeout_s: float) -> None:
    """WAL, then the schema. Workers opening a new file at the same moment race to switch it to WAL, and SQLite
    answers the loser "database is locked" at once, without waiting out the busy timeout (its busy handler is not
    called there): the step is retried until the busy timeout has passed. The schema's statements are idempotent."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(schema)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
