"""The banker's store contract, shared by the Redis and SQLite stores.

`apply` is the one write on the spend path: for each debit, atomically, record its event id (a repeat is skipped),
add the amount to the campaign's total, day and hour, append it to the ledger, and flag (and notify, once) a budget
it crosses. Spend beyond a budget is still applied: the impression was bought, so hiding it would falsify the books.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from trackpoint.collectors.banker.config import BankerCollectorConfig
from trackpoint.collectors.banker.model import Budget, Debit, Notification, RawCampaign, TrackerStatus, hourly_cap


class StoreUnavailable(Exception):
    """The store cannot be reached now; the batch is retried (spooled meanwhile), never dropped."""


@dataclass
class Applied:
    """The outcome of one apply: debits applied, repeats skipped, debits of campaigns that do not exist (under
    `unknown_campaigns: ignore`; not marked applied, so a replay after the campaign is created debits them),
    notifications published (in order)."""

    applied: int = 0
    duplicates: int = 0
    unknown: int = 0
    notifications: list[Notification] = field(default_factory=list)


class Store(ABC):
    def __init__(self, config: BankerCollectorConfig) -> None:
        self.config = config

    def cap_of(self, budget: Budget) -> int | None:
        """The hourly cap a budget gets under this banker's pacing, fixed when the budget is set."""
        return hourly_cap(
            budget.daily_budget_micros, budget.hourly_budget_micros, self.config.pacing, self.config.pacing_slack
        )

    @abstractmethod
    async def apply(self, debits: Sequence[Debit], now_ms: int) -> Applied:
        """Applies each debit at most once per event id; raises StoreUnavailable when the store is down."""

    @abstractmethod
    async def set_budget(self, campaign: str, budget: Budget, now_ms: int) -> RawCampaign:
        """Sets a campaign's budgets (creating it). Raising a budget above the spend clears its exhausted flag,
        so crossing it again notifies again."""

    @abstractmethod
    async def campaign(self, campaign: str) -> RawCampaign | None: ...

    @abstractmethod
    async def campaigns(self, after: str = "", limit: int | None = None) -> list[RawCampaign]:
        """Campaigns ordered by id, those after `after` (a page's last id; "" from the first), at most `limit`."""

    @abstractmethod
    async def notifications(self, after: str, limit: int) -> list[Notification]:
        """Notifications after the given `seq` ("" or "0": from the oldest kept), oldest first; ValueError for a
        seq this store never issues."""

    @abstractmethod
    async def report_status(self, instance: str, status: TrackerStatus) -> None: ...

    @abstractmethod
    async def forget_status(self, instance: str) -> None: ...

    @abstractmethod
    async def statuses(self) -> list[TrackerStatus]: ...

    @abstractmethod
    async def applied_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these event ids have been debited (within the retention)."""

    @abstractmethod
    async def ledger(self, campaign: str, limit: int | None = None) -> list[Debit]:
        """A campaign's applied debits in the order they were applied (as far as the store keeps them); with a
        limit, only the newest."""

    async def unsafe(self) -> str | None:
        """Why the store cannot keep its promise to debit each id once, as configured (a Redis that may evict the
        dedupe records), or None; StoreUnavailable when it cannot be asked. Checked at start and periodically."""
        return None

    @abstractmethod
    async def close(self) -> None: ...


def open_store(config: BankerCollectorConfig, data_dir: str) -> Store:
    """The store the config names; nothing is connected until first use."""
    if config.store == "redis":
        from trackpoint.collectors.banker.redis_store import RedisStore

        return RedisStore(config)
    from trackpoint.collectors.banker.sqlite_store import SqliteStore

    return SqliteStore(config, data_dir)
