"""Reconciliation: spend recomputed from the log files, compared with what the store applied.

The logs are the durable record of every accepted event; the store holds what reached the banker. For each
campaign this reports the spend of the distinct debits in the logs, the store's spend, and the logged debits the
store has not applied (the cure for those is `trackpoint replay --collector <banker>`: it applies exactly them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from trackpoint.collectors.banker.config import BankerCollectorConfig, bankers_in_use
from trackpoint.collectors.banker.model import Debit, DebitRule
from trackpoint.collectors.banker.sqlite_store import SqliteStore
from trackpoint.collectors.banker.store import open_store
from trackpoint.collectors.log.reader import (
    LogSearchError,
    ReadStats,
    log_files,
    not_a_log,
    precedence,
    read_located,
)
from trackpoint.config.model import Config


class ReconcileError(Exception):
    """The reconciliation cannot run: no banker collector, or not the one named, no SQLite store where it says, or a
    file that is not a log (or cannot be read)."""


@dataclass
class CampaignReport:
    campaign: str
    log_micros: int = 0
    log_debits: int = 0
    store_micros: int | None = None  # None: the store has no such campaign
    missing_debits: int = 0  # logged, not applied by the store
    missing_micros: int = 0

    @property
    def difference_micros(self) -> int:
        """store - logs: positive when the store holds spend the given logs do not explain."""
        return (self.store_micros or 0) - self.log_micros

    @property
    def matches(self) -> bool:
        return self.difference_micros == 0 and self.missing_debits == 0


@dataclass
class Report:
    collector: str
    campaigns: list[CampaignReport] = field(default_factory=list)
    read: ReadStats = field(default_factory=ReadStats)
    duplicates: int = 0  # events logged more than once (the same id): counted once, as the store does
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def matches(self) -> bool:
        """Every campaign matches, and every file was read to its end: the debits of a file cut short or gone are
        not in the logs' sums, so a match over them would hide debits the store lacks."""
        return all(campaign.matches for campaign in self.campaigns) and not self.read.incomplete


def banker_of(config: Config, name: str | None) -> tuple[str, BankerCollectorConfig, frozenset[str]]:
    """The banker collector to reconcile (the only one, or the named one) and the event types that feed it."""
    bankers = bankers_in_use(config)
    if name is None:
        if len(bankers) != 1:
            found = ", ".join(sorted(bankers)) or "none"
            raise ReconcileError(f"name the banker collector with --collector (banker collectors: {found})")
        name = next(iter(bankers))
    if name not in bankers:
        raise ReconcileError(f"no banker collector named {name!r} in the configuration")
    types = frozenset(t for t, spec in config.event_types.items() if name in spec.collectors)
    return name, bankers[name], types


def logged_debits(paths: Iterable[Path], rule: DebitRule, types: frozenset[str], report: Report) -> list[Debit]:
    """The distinct debits of the logs: of each id, its earliest line (reader.precedence), in log order."""
    chosen: dict[str, tuple[tuple[int, int, int], Debit | str]] = {}
    for where, event in read_located(paths, report.read):
        if event.type not in types:
            continue
        rank = precedence(event, where)
        known = chosen.get(event.id)
        if known is not None:
            report.duplicates += 1
            if rank >= known[0]:
                continue
        chosen[event.id] = (rank, rule.judge(event))
    debits: list[Debit] = []
    for _, judged in sorted(chosen.values(), key=lambda item: item[0][1:]):
        if isinstance(judged, str):
            rule.skipped[judged] += 1
        else:
            debits.append(judged)
    return debits


async def reconcile(config: Config, paths: Iterable[Path], collector: str | None = None) -> Report:
    name, options, types = banker_of(config, collector)
    store = open_store(options, config.data_dir)
    if isinstance(store, SqliteStore) and not store.path.exists():  # opening it would create it, empty
        raise ReconcileError(
            f"no banker store at {store.path}: the tracker creates it on its first start, so this data_dir or "
            f"sqlite_path is not the tracker's (a store that was lost is rebuilt by `trackpoint replay --collector "
            f"{name}`, once its campaigns are created again)"
        )
    try:
        files = log_files(paths)
    except LogSearchError as exc:  # as replay: a directory left out unseen would pass for one without debits
        raise ReconcileError(str(exc)) from None
    for path in files:  # as replay: a file that is not a log, or cannot be read (a traceback before), stops it
        if (reason := not_a_log(path)) is not None:
            raise ReconcileError(reason)
    report = Report(collector=name)
    rule = DebitRule(options)
    debits = logged_debits(files, rule, types, report)
    report.skipped = {reason: count for reason, count in rule.skipped.items() if count}
    by_campaign: dict[str, CampaignReport] = {}
    for debit in debits:
        entry = by_campaign.get(debit.campaign) or by_campaign.setdefault(
            debit.campaign, CampaignReport(debit.campaign)
        )
        entry.log_micros += debit.micros
        entry.log_debits += 1
    try:
        applied = await store.applied_ids([debit.id for debit in debits])
        for debit in debits:
            if debit.id not in applied:
                entry = by_campaign[debit.campaign]
                entry.missing_debits += 1
                entry.missing_micros += debit.micros
        stored = {campaign.id: campaign for campaign in await store.campaigns()}
    finally:
        await store.close()
    for campaign_id, campaign in stored.items():
        if campaign.debits or campaign_id in by_campaign:
            entry = by_campaign.setdefault(campaign_id, CampaignReport(campaign_id))
            entry.store_micros = campaign.spent_micros
    report.campaigns = sorted(by_campaign.values(), key=lambda c: c.campaign)
    return report
