"""The embedded banker store: one SQLite file under data_dir, shared by every worker of one machine.

The ledger's primary key is the event id, so `INSERT OR IGNORE` is the dedupe: a debit whose id is already in the
ledger changes nothing. Each batch is one IMMEDIATE transaction (WAL journal), so workers racing on a campaign are
serialised by SQLite and a crash leaves either the whole batch or none of it. Calls run in a thread: the event loop
never waits on the disk.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from trackpoint.collectors.banker.config import BankerCollectorConfig
from trackpoint.collectors.banker.model import Budget, Debit, Notification, RawCampaign, TrackerStatus, periods
from trackpoint.collectors.banker.store import Applied, Store, StoreUnavailable
from trackpoint.collectors.sqlite import SqliteFile, SqliteUnavailable, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
  id TEXT PRIMARY KEY,
  total_budget_micros INTEGER, daily_budget_micros INTEGER, hourly_budget_micros INTEGER, hourly_cap_micros INTEGER,
  spent_micros INTEGER NOT NULL DEFAULT 0, debits INTEGER NOT NULL DEFAULT 0,
  exhausted_total INTEGER NOT NULL DEFAULT 0,
  hour TEXT NOT NULL DEFAULT '', hour_spent_micros INTEGER NOT NULL DEFAULT 0, paced_hour TEXT NOT NULL DEFAULT '',
  updated_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS days (
  campaign TEXT NOT NULL, day TEXT NOT NULL, spent_micros INTEGER NOT NULL DEFAULT 0,
  exhausted INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (campaign, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ledger (
  event_id TEXT PRIMARY KEY, campaign TEXT NOT NULL, micros INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
  type TEXT NOT NULL, spent_after INTEGER NOT NULL, applied_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_by_campaign ON ledger (campaign, ts_ms);
CREATE TABLE IF NOT EXISTS notifications (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, campaign TEXT NOT NULL, reason TEXT NOT NULL, period TEXT NOT NULL,
  spent_micros INTEGER NOT NULL, budget_micros INTEGER NOT NULL, event_id TEXT NOT NULL, ts_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS trackers (
  instance TEXT PRIMARY KEY, at_ms INTEGER NOT NULL, backlog INTEGER NOT NULL, oldest_ms INTEGER NOT NULL
);
"""

T = TypeVar("T")

_CAMPAIGN_COLUMNS = (
    "id, total_budget_micros, daily_budget_micros, hourly_budget_micros, hourly_cap_micros, spent_micros, debits, "
    "exhausted_total, hour, hour_spent_micros, paced_hour, updated_ms"
)


class _Campaign:
    """A campaign row being updated inside one transaction."""

    __slots__ = ("cap", "daily", "debits", "exhausted", "hour", "hour_spent", "id", "paced", "spent", "total")

    def __init__(self, row: tuple[Any, ...]) -> None:
        self.id: str = row[0]
        self.total: int | None = row[1]
        self.daily: int | None = row[2]
        self.cap: int | None = row[4]
        self.spent: int = row[5]
        self.debits: int = row[6]
        self.exhausted = bool(row[7])
        self.hour: str = row[8]
        self.hour_spent: int = row[9]
        self.paced: str = row[10]


class SqliteStore(Store):
    def __init__(self, config: BankerCollectorConfig, data_dir: str) -> None:
        super().__init__(config)
        self.path = Path(data_dir) / config.sqlite_path
        self._file = SqliteFile(self.path, SCHEMA, 30.0)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._file.run(work)
        except SqliteUnavailable as exc:
            raise StoreUnavailable(str(exc)) from exc

    # --- spend -------------------------------------------------------------------------------------------------

    async def apply(self, debits: Sequence[Debit], now_ms: int) -> Applied:
        return await self._run(lambda db: self._apply(db, debits, now_ms))

    def _apply(self, db: sqlite3.Connection, debits: Sequence[Debit], now_ms: int) -> Applied:
        """One transaction: which ids are new (one query per 500), the debits applied in memory in batch order,
        then the ledger, days, campaigns and notifications written with one statement each (executemany). The
        IMMEDIATE transaction holds the write lock from the first read, so no other worker interleaves."""
        result = Applied()
        with transaction(db):
            new = self._new_debits(db, debits)
            result.duplicates = len(debits) - len(new)
            campaigns: dict[str, _Campaign] = {}
            days: dict[tuple[str, str], list[int]] = {}  # (campaign, day) -> [spent, exhausted]
            ledger = []
            create = self.config.unknown_campaigns == "create"
            for debit in new:
                campaign = campaigns.get(debit.campaign) or self._load(db, campaigns, debit.campaign, create)
                if campaign is None:
                    result.unknown += 1
                    continue
                day, hour = periods(debit.ts)
                day_state = days.get((campaign.id, day)) or self._load_day(db, days, campaign.id, day)
                self._debit(campaign, day_state, debit, day, hour, result.notifications)
                ledger.append((debit.id, debit.campaign, debit.micros, debit.ts, debit.type, campaign.spent, now_ms))
            result.applied = len(ledger)
            db.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)", ledger)
            db.executemany(
                "INSERT INTO days (campaign, day, spent_micros, exhausted) VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE "
                "SET spent_micros = excluded.spent_micros, exhausted = excluded.exhausted",
                [(campaign, day, spent, exhausted) for (campaign, day), (spent, exhausted) in days.items()],
            )
            db.executemany(
                "UPDATE campaigns SET spent_micros = ?, debits = ?, exhausted_total = ?, hour = ?, "
                "hour_spent_micros = ?, paced_hour = ?, updated_ms = ? WHERE id = ?",
                [(c.spent, c.debits, int(c.exhausted), c.hour, c.hour_spent, c.paced, now_ms, c.id)
                 for c in campaigns.values()],
            )  # fmt: skip
            for note in result.notifications:
                cursor = db.execute(
                    "INSERT INTO notifications (campaign, reason, period, spent_micros, budget_micros, event_id, "
                    "ts_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (note.campaign, note.reason, note.period, note.spent_micros, note.budget_micros, note.event_id,
                     note.ts),
                )  # fmt: skip
                note.seq = str(cursor.lastrowid)
        return result

    @staticmethod
    def _new_debits(db: sqlite3.Connection, debits: Sequence[Debit]) -> list[Debit]:
        """The debits whose id is neither in the ledger nor earlier in the batch, in batch order."""
        distinct: dict[str, Debit] = {}
        for debit in debits:
            distinct.setdefault(debit.id, debit)
        ids = list(distinct)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for (known,) in db.execute(f"SELECT event_id FROM ledger WHERE event_id IN ({marks})", chunk):
                del distinct[known]
        return list(distinct.values())

    @staticmethod
    def _load(
        db: sqlite3.Connection, campaigns: dict[str, _Campaign], campaign_id: str, create: bool
    ) -> _Campaign | None:
        if create:
            db.execute("INSERT OR IGNORE INTO campaigns (id) VALUES (?)", (campaign_id,))
        row = db.execute(f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        if row is None:
            return None
        campaign = campaigns[campaign_id] = _Campaign(row)
        return campaign

    @staticmethod
    def _load_day(db: sqlite3.Connection, days: dict[tuple[str, str], list[int]], campaign: str, day: str) -> list[int]:
        row = db.execute("SELECT spent_micros, exhausted FROM days WHERE campaign = ? AND day = ?", (campaign, day))
        state = days[(campaign, day)] = list(row.fetchone() or (0, 0))
        return state

    @staticmethod
    def _debit(  # noqa: PLR0917 (the state the caller already holds)
        campaign: _Campaign, day_state: list[int], debit: Debit, day: str, hour: str, notes: list[Notification]
    ) -> None:
        micros = debit.micros
        campaign.spent += micros
        campaign.debits += 1
        day_state[0] += micros
        if hour == campaign.hour:
            campaign.hour_spent += micros
        elif hour > campaign.hour:  # a debit of an older hour counts in its day, not in today's pacing
            campaign.hour, campaign.hour_spent = hour, micros

        def note(reason: str, period: str, budget: int) -> None:
            notes.append(Notification(
                campaign=campaign.id, reason=reason, period=period, spent_micros=campaign.spent,
                budget_micros=budget, event_id=debit.id, ts=debit.ts,
            ))  # fmt: skip

        if campaign.total is not None and not campaign.exhausted and campaign.spent >= campaign.total:
            campaign.exhausted = True
            note("total", "", campaign.total)
        if campaign.daily is not None and not day_state[1] and day_state[0] >= campaign.daily:
            day_state[1] = 1
            note("daily", day, campaign.daily)
        cap = campaign.cap
        if cap is not None and hour == campaign.hour and campaign.paced != hour and campaign.hour_spent >= cap:
            campaign.paced = hour
            note("paced", hour, cap)

    # --- budgets -----------------------------------------------------------------------------------------------

    async def set_budget(self, campaign: str, budget: Budget, now_ms: int) -> RawCampaign:
        cap = self.cap_of(budget)

        def work(db: sqlite3.Connection) -> RawCampaign:
            with transaction(db):
                db.execute(
                    "INSERT INTO campaigns (id, total_budget_micros, daily_budget_micros, hourly_budget_micros, "
                    "hourly_cap_micros, updated_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                    "total_budget_micros = excluded.total_budget_micros, "
                    "daily_budget_micros = excluded.daily_budget_micros, "
                    "hourly_budget_micros = excluded.hourly_budget_micros, "
                    "hourly_cap_micros = excluded.hourly_cap_micros, updated_ms = excluded.updated_ms",
                    (campaign, budget.total_budget_micros, budget.daily_budget_micros, budget.hourly_budget_micros,
                     cap, now_ms),
                )  # fmt: skip
                # A raised budget re-arms its flag: crossing it again notifies again.
                db.execute(
                    "UPDATE campaigns SET exhausted_total = 0 WHERE id = ? AND spent_micros < total_budget_micros",
                    (campaign,),
                )
                db.execute(
                    "UPDATE days SET exhausted = 0 WHERE campaign = ? AND spent_micros < ?",
                    (campaign, budget.daily_budget_micros if budget.daily_budget_micros is not None else 2**62),
                )
                db.execute(
                    "UPDATE campaigns SET paced_hour = '' WHERE id = ? AND hour_spent_micros < ?",
                    (campaign, cap if cap is not None else 2**62),
                )
            found = self._read(db, campaign)
            assert found is not None
            return found

        return await self._run(work)

    async def campaign(self, campaign: str) -> RawCampaign | None:
        return await self._run(lambda db: self._read(db, campaign))

    async def campaigns(self, after: str = "", limit: int | None = None) -> list[RawCampaign]:
        def work(db: sqlite3.Connection) -> list[RawCampaign]:
            rows = db.execute(
                "SELECT id FROM campaigns WHERE id > ? ORDER BY id LIMIT ?", (after, -1 if limit is None else limit)
            )
            ids = [row[0] for row in rows]
            return [campaign for i in ids if (campaign := self._read(db, i)) is not None]

        return await self._run(work)

    @staticmethod
    def _read(db: sqlite3.Connection, campaign_id: str) -> RawCampaign | None:
        row = db.execute(f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        if row is None:
            return None
        days = dict(db.execute("SELECT day, spent_micros FROM days WHERE campaign = ?", (campaign_id,)).fetchall())
        return RawCampaign(
            id=row[0], total_budget_micros=row[1], daily_budget_micros=row[2], hourly_budget_micros=row[3],
            hourly_cap_micros=row[4], spent_micros=row[5], debits=row[6], exhausted_total=bool(row[7]),
            hour=row[8], hour_spent_micros=row[9], updated_ms=row[11], day_spent=days,
        )  # fmt: skip

    # --- signals -----------------------------------------------------------------------------------------------

    async def notifications(self, after: str, limit: int) -> list[Notification]:
        if after and not (after.isascii() and after.isdigit() and len(after) <= 18):
            raise ValueError(f"after: {after!r} is not a notification seq of this store (an integer)")
        seq = int(after or 0)

        def work(db: sqlite3.Connection) -> list[Notification]:
            rows = db.execute(
                "SELECT seq, campaign, reason, period, spent_micros, budget_micros, event_id, ts_ms "
                "FROM notifications WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
            return [
                Notification(seq=str(r[0]), campaign=r[1], reason=r[2], period=r[3], spent_micros=r[4],
                             budget_micros=r[5], event_id=r[6], ts=r[7])
                for r in rows
            ]  # fmt: skip

        return await self._run(work)

    async def report_status(self, instance: str, status: TrackerStatus) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO trackers VALUES (?, ?, ?, ?)",
                (instance, status.at_ms, status.backlog, status.oldest_ms),
            )
        )

    async def forget_status(self, instance: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM trackers WHERE instance = ?", (instance,)))

    async def statuses(self) -> list[TrackerStatus]:
        rows = await self._run(lambda db: db.execute("SELECT at_ms, backlog, oldest_ms FROM trackers").fetchall())
        return [TrackerStatus(*row) for row in rows]

    async def applied_ids(self, ids: Sequence[str]) -> set[str]:
        def work(db: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    r[0] for r in db.execute(f"SELECT event_id FROM ledger WHERE event_id IN ({marks})", chunk)
                )
            return found

        return await self._run(work)

    async def ledger(self, campaign: str, limit: int | None = None) -> list[Debit]:
        rows = await self._run(
            lambda db: db.execute(
                "SELECT event_id, campaign, micros, ts_ms, type FROM ledger WHERE campaign = ? "
                "ORDER BY rowid DESC LIMIT ?",
                (campaign, -1 if limit is None else limit),
            ).fetchall()
        )
        return [Debit(*row) for row in reversed(rows)]

    async def close(self) -> None:
        await self._file.close()
