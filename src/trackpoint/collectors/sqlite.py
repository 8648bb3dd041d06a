"""One SQLite database file as the collectors' stores use it (the banker's embedded store, the rollups): WAL, opened
on first use, one statement sequence at a time on one shared connection, run in a thread off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SqliteUnavailable(Exception):
    """The database cannot be used now (locked past the busy timeout, disk full, an unreadable or damaged file):
    retry later."""


def unavailable(exc: BaseException) -> bool:
    """Whether an error is the file's or its disk's (the store is unavailable; retry later) rather than the caller's
    (IntegrityError, ProgrammingError, ...: a bug, raised as it is). OperationalError: locked past the timeout, disk
    full, I/O error, cannot open. A plain DatabaseError is SQLite's SQLITE_CORRUPT or SQLITE_NOTADB: the file is
    damaged or not a database, and no retry of the batch changes that, but an operator restoring the file does."""
    return isinstance(exc, (sqlite3.OperationalError, OSError)) or damaged(exc)


def damaged(exc: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB, which Python raises as a plain DatabaseError (as it does the rare codes it
    has no class for), never as one of its subclasses."""
    return type(exc) is sqlite3.DatabaseError


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT. On an error the transaction is rolled back if SQLite has not done so itself (it
    does on SQLITE_FULL and SQLITE_IOERR), and that error propagates, never the rollback's own ("cannot rollback -
    no transaction is active" hid a full disk)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # SqliteFile.run closes a connection left in a transaction
                db.execute("ROLLBACK")
        raise


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
                db = self._connect()
                try:
                    return work(db)
                except BaseException as exc:
                    # A connection still in a transaction would refuse the next BEGIN, and one on a damaged file
                    # would go on reading the old file after an operator restored it: the next call opens afresh.
                    if db.in_transaction or damaged(exc):
                        self._discard()
                    raise

        async with self._lock:
            try:
                return await asyncio.to_thread(locked)
            except Exception as exc:
                if unavailable(exc):  # a data_dir that cannot hold the file is an OSError from _connect
                    raise SqliteUnavailable(f"sqlite {self.path}: {exc}") from exc
                raise

    def _discard(self) -> None:
        """Closes the connection (rolling back what it holds); the next call reconnects. Under _connection_lock."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    async def close(self) -> None:
        def close() -> None:
            with self._connection_lock:  # after a thread still running an abandoned call
                self._discard()

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
