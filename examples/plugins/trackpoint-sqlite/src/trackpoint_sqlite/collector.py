"""sqlite: a collector that writes events to a SQLite database file, one row per event id (`INSERT OR IGNORE`).

sqlite3 blocks, so every database call runs on the collector's own single thread; one batch is one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import msgspec

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.event import Event
from trackpoint_sqlite.config import SqliteCollectorConfig, database_path

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, type TEXT, ts INTEGER, event TEXT)",
    "CREATE INDEX IF NOT EXISTS events_type ON events (type)",
)
# The id is the primary key: a retried batch, a replayed log or a repeated request with a dedupe key adds nothing.
INSERT = "INSERT OR IGNORE INTO events (id, type, ts, event) VALUES (?, ?, ?, ?)"

Row = tuple[str, str, int, str]
T = TypeVar("T")


class SqliteCollector(Collector):
    """Writes each batch in one transaction on a private thread. A locked or unreachable database is a RETRY: the
    base class keeps the batch (memory, then spool) and sends it again with backoff."""

    def __init__(self, name: str, config: SqliteCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.path = database_path(context.data_dir, config)
        self.busy_timeout_s = config.busy_timeout_ms / 1000
        self.journal_mode = config.journal_mode
        # One thread: batches are written in order, and the connection never changes threads (sqlite3's rule).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{name}")
        self._connection: sqlite3.Connection | None = None  # touched on the executor's thread only
        self._encoder = msgspec.json.Encoder()
        self._health = Health(healthy=True, detail="nothing written yet")

    async def start(self) -> None:
        try:
            await self._run(self._connect)
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)  # a database that is locked or missing at start is retried by the sends
        await super().start()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        encode = self._encoder.encode
        rows: list[Row] = [(event.id, event.type, event.ts, encode(event).decode()) for event in batch]
        try:
            await self._run(lambda: self._write(rows))
        except (sqlite3.OperationalError, OSError) as exc:  # locked, busy, disk full, cannot open: it will pass
            self._failed(exc)
            return SendResult.RETRY
        except sqlite3.Error as exc:  # anything else is not the events' fault: reconnect and try again later
            self._failed(exc)
            await self._run(self._disconnect)
            return SendResult.RETRY
        self._health = Health(healthy=True)
        return SendResult.DELIVERED

    def health(self) -> Health:
        """The outcome of the last attempt: unhealthy from a failed write until the next one succeeds."""
        return self._health

    async def close(self, drain_timeout_s: float) -> None:
        await super().close(drain_timeout_s)
        try:
            await self._run(self._disconnect)
        finally:
            self._executor.shutdown(wait=False)

    # --- on the executor's thread --------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are the explicit BEGIN/COMMIT below, not sqlite3's implicit ones.
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            connection.execute(f"PRAGMA journal_mode = {self.journal_mode}")  # a Literal of the config, not input
            for statement in SCHEMA:
                connection.execute(statement)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection

    def _write(self, rows: list[Row]) -> None:
        connection = self._connection or self._connect()
        # IMMEDIATE takes the write lock up front (waiting up to the busy timeout), so the batch never fails halfway.
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(INSERT, rows)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    # --- helpers -------------------------------------------------------------------------------------------------

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _failed(self, exc: BaseException) -> None:
        self._health = Health(healthy=False, detail=f"{self.path}: {exc}")
