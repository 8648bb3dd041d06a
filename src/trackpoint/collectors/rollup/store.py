"""The rollups' store: one SQLite file under data_dir, shared by every worker of one machine (and by replays).

Each batch is one IMMEDIATE transaction (WAL journal, a busy timeout): which ids are new is read under the write
lock, so two workers holding the same event id (a retried request landing on another worker) count it once, and a
crash leaves the whole batch or none of it. One shared file rather than one per worker because the dedupe must see
every worker's ids. Calls run in a thread: the event loop never waits on the disk.

Forgetting is the one thing the wall clock may not decide alone: `forgotten_before` (persisted, never moved back)
is the event time below which ids may have been forgotten, and every event older than it is too late, so no clock
step, forward or back, of a worker or of a replay can make a forgotten id countable again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec

from trackpoint.collectors.rollup.config import DIM_NAME, Role, RollupCollectorConfig
from trackpoint.collectors.rollup.model import COUNTERS, MS_PER_HOUR, Summed, counters, dim_reader, hour_of
from trackpoint.collectors.sqlite import SqliteFile, SqliteUnavailable, transaction
from trackpoint.event import Event

_COLUMNS = ("events", *COUNTERS)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS rollups (
  hour INTEGER NOT NULL, type TEXT NOT NULL, dims TEXT NOT NULL,
  {", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in _COLUMNS)},
  PRIMARY KEY (hour, type, dims)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, ts INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_ts ON seen (ts);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_UPSERT = (
    f"INSERT INTO rollups (hour, type, dims, {', '.join(_COLUMNS)}) VALUES (?, ?, ?, {', '.join('?' * len(_COLUMNS))}) "
    f"ON CONFLICT DO UPDATE SET {', '.join(f'{c} = {c} + excluded.{c}' for c in _COLUMNS)}"
)
# Forgotten ids per batch, at most: pruning keeps pace with a batch's new ids without holding the lock for long.
PRUNE_PER_BATCH = 10_000
MS_PER_DAY = 86_400_000

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The database cannot be used now (locked past the busy timeout, disk full): the batch is retried."""


@dataclass
class Counted:
    """What one batch did: events counted, repeats of an id already counted, and events older than the window."""

    counted: int = 0
    duplicates: int = 0
    too_late: int = 0


@dataclass(frozen=True)
class Query:
    """Which rows to read: hours from `from_ms` (its hour included) to `to_ms` (exclusive), event types (all when
    empty), the dims to group by, and dim values to keep (`{"cid": "c1"}`)."""

    from_ms: int
    to_ms: int
    types: tuple[str, ...] = ()
    by: tuple[str, ...] = ()
    where: Mapping[str, str] = field(default_factory=dict)


class RollupStore:
    """Counting into, and reading from, one rollup database."""

    def __init__(self, config: RollupCollectorConfig, data_dir: str) -> None:
        self.config = config
        self.path = Path(data_dir) / config.sqlite_path
        self.roles: Mapping[str, Role] = config.roles
        self.readers = [(dim, dim_reader(dim)) for dim in config.dims]
        self.window_ms = config.dedupe_window_h * MS_PER_HOUR
        self._file = SqliteFile(self.path, SCHEMA, config.busy_timeout_s)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._file.run(work)
        except SqliteUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def count(self, events: Sequence[Event], now_ms: int) -> Counted:
        """Adds a batch to the rollups, each id at most once."""
        return await self._run(lambda db: self.count_batch(db, events, now_ms))

    def count_batch(self, db: sqlite3.Connection, events: Sequence[Event], now_ms: int) -> Counted:
        """One transaction: the batch's distinct ids within the window, which of them are known (one query per 500),
        the new ones summed into rows in memory, then written with one statement each (executemany).

        An event is too late when it is older than the window by `now_ms`, or older than `forgotten_before`. Ids are
        forgotten only up to a window before the batch's newest event, if `now_ms` is not earlier: a replay of
        old logs under a clock that runs ahead forgets nothing that live traffic still needs, and a clock that
        steps back cannot bring a forgotten id back, since forgotten_before stays where it was."""
        result = Counted()
        with transaction(db):
            forgotten_before = _forgotten_before(db)
            cutoff = max(forgotten_before, now_ms - self.window_ms)
            first: dict[str, Event] = {}
            last_ts: dict[str, int] = {}
            for event in events:
                if event.ts < cutoff:
                    result.too_late += 1
                    continue
                first.setdefault(event.id, event)
                last_ts[event.id] = max(event.ts, last_ts.get(event.id, event.ts))
            keys = {event_id: _id_key(event_id) for event_id in first}
            known_keys = self._known(db, list(keys.values()))
            known = {event_id: known_keys[key] for event_id, key in keys.items() if key in known_keys}
            rows: dict[tuple[int, str, str], list[int]] = {}
            for event_id, event in first.items():
                if event_id in known:
                    continue
                values = {dim: read(event) for dim, read in self.readers}
                key = (hour_of(event.ts), event.type, msgspec.json.encode(values).decode())
                added = counters(event, self.roles.get(event.type))
                summed = rows.get(key)
                if summed is None:
                    rows[key] = added
                else:
                    for i, value in enumerate(added):
                        summed[i] += value
            new = [(keys[event_id], last_ts[event_id]) for event_id in first if event_id not in known]
            db.executemany(_UPSERT, [(*key, *sums) for key, sums in rows.items()])
            db.executemany("INSERT INTO seen (id, ts) VALUES (?, ?)", new)
            # A repeat keeps its id remembered for a window from its own time (a retry, later than the first).
            db.executemany(
                "UPDATE seen SET ts = ? WHERE id = ? AND ts < ?",
                [(last_ts[i], keys[i], last_ts[i]) for i, ts in known.items() if last_ts[i] > ts],
            )
            if last_ts:
                # The newest event time the batch and the clock agree on: neither alone can age the store.
                newest_ms = min(now_ms, max(last_ts.values()))
                forget_before = newest_ms - self.window_ms
                if forget_before > forgotten_before:
                    # Recorded before ids are deleted, in the same transaction: every one deleted is too late now.
                    db.execute(
                        "INSERT INTO state (name, value) VALUES ('forgotten_before', ?) "
                        "ON CONFLICT DO UPDATE SET value = max(value, excluded.value)",
                        (forget_before,),
                    )
                    db.execute(
                        "DELETE FROM seen WHERE id IN (SELECT id FROM seen WHERE ts < ? ORDER BY ts LIMIT ?)",
                        (forget_before, PRUNE_PER_BATCH),
                    )
                db.execute(
                    "DELETE FROM rollups WHERE hour < ?",
                    (hour_of(newest_ms) - self.config.retention_days * MS_PER_DAY,),
                )
        result.counted = len(new)
        result.duplicates = len(events) - result.too_late - result.counted
        return result

    @staticmethod
    def _known(db: sqlite3.Connection, ids: list[bytes | str]) -> dict[bytes | str, int]:
        found: dict[bytes | str, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(db.execute(f"SELECT id, ts FROM seen WHERE id IN ({marks})", chunk).fetchall())
        return found

    async def close(self) -> None:
        await self._file.close()


def _forgotten_before(db: sqlite3.Connection) -> int:
    """The event time below which ids may have been forgotten (read inside the batch's transaction). A database
    from before it was recorded forgot only ids no newer than every id it still holds (it forgot the oldest first),
    or, holding none, possibly every id it counted."""
    row = db.execute("SELECT value FROM state WHERE name = 'forgotten_before'").fetchone()
    if row is not None:
        return int(row[0])
    (oldest,) = db.execute("SELECT min(ts) FROM seen").fetchone()
    if oldest is not None:
        return int(oldest) + 1
    (newest_hour,) = db.execute("SELECT max(hour) FROM rollups").fetchone()
    return 0 if newest_hour is None else int(newest_hour) + MS_PER_HOUR


def _id_key(event_id: str) -> bytes | str:
    """How an id is remembered: the 16 bytes of a hex id (every id trackpoint makes), else its text."""
    if len(event_id) == 32:
        try:
            return bytes.fromhex(event_id)
        except ValueError:
            pass
    return event_id


def read_rollups(path: Path, query: Query, busy_timeout_s: float = 10.0) -> list[Summed]:
    """The rows of `query`, summed over the dims left out of `by` (blocking: call it in a thread). A database not
    created yet holds no rows."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout_s)
    try:
        dims = [_extract(dim) for dim in query.by]
        sql = (
            f"SELECT hour, type{''.join(f', {d}' for d in dims)}, {', '.join(f'SUM({c})' for c in _COLUMNS)} "
            "FROM rollups WHERE hour >= ? AND hour < ?"
        )
        parameters: list[object] = [hour_of(query.from_ms), query.to_ms]
        if query.types:
            sql += f" AND type IN ({','.join('?' * len(query.types))})"
            parameters.extend(query.types)
        for dim, value in query.where.items():
            sql += f" AND {_extract(dim)} = ?"
            parameters.append(value)
        sql += " GROUP BY hour, type" + "".join(f", {i + 3}" for i in range(len(dims)))
        width = len(query.by)
        return [(row[0], row[1], tuple(row[2 : 2 + width]), row[2 + width :]) for row in db.execute(sql, parameters)]
    finally:
        db.close()


def _extract(dim: str) -> str:
    """The SQL reading one dim's value from a row's dims (names are checked against DIM_NAME: no quotes)."""
    if DIM_NAME.fullmatch(dim) is None:
        raise ValueError(f"{dim!r} is not a dim name")
    return f"json_extract(dims, '$.\"{dim}\"')"
