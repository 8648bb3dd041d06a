"""The banker collector: each batch of spend events becomes debits applied by the store in one round trip.

Delivery is the collectors' own: while the store is down, batches wait in memory and then in the disk spool, and
are applied when it is back; since the store applies an event id at most once, a batch retried after a send that
did land, a replayed log or two trackers seeing the same win never debit twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence

from trackpoint.collectors.banker.config import BankerCollectorConfig
from trackpoint.collectors.banker.model import DebitRule, TrackerStatus
from trackpoint.collectors.banker.store import StoreUnavailable, open_store
from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.event import Event

log = logging.getLogger("trackpoint.banker")
UNSAFE_CHECK_S = 30.0  # how often the store's settings are checked (Store.unsafe)


class BankerCollector(Collector):
    """Counters beyond the common ones: `applied` debits, `duplicates` skipped, `unknown_campaign` (spend for a
    campaign not created through the admin API, not applied), `notifications` published and `rule.skipped` (events
    that are no debit: no campaign, no price, unknown currency)."""

    def __init__(self, name: str, config: BankerCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        self.rule = DebitRule(config)
        self.store = open_store(config, context.data_dir)
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{context.worker}"
        self.applied = 0
        self.duplicates = 0
        self.unknown_campaign = 0
        self.notifications = 0
        self._error = ""
        self._unsafe = ""  # why the store may forget applied ids (a Redis that evicts), from Store.unsafe()
        self._unsafe_checked = -UNSAFE_CHECK_S
        self._behind_since_ms = 0  # wall time of the first failed send not yet made good
        self._status_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._status_task = asyncio.get_running_loop().create_task(self._report(), name=f"status-{self.name}")
        await super().start()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        skipped = dict(self.rule.skipped)
        debits = self.rule.debits(batch)
        if not debits:
            return SendResult.DELIVERED
        try:
            result = await self.store.apply(debits, int(time.time() * 1000))
        except BaseException as exc:
            # The batch comes back (a retry, or the spool): its events that are no debit are counted once, then.
            self.rule.skipped.update(skipped)
            if isinstance(exc, Exception):  # not a cancellation (a send past its timeout): the store failed
                # Unhealthy whatever the failure: no spend is applied meanwhile. An outage (the store down, its disk
                # full, its file damaged) is retried quietly; anything else is a bug, raised for the delivery to
                # log and count.
                self._error = str(exc) if isinstance(exc, StoreUnavailable) else repr(exc)
                if not self._behind_since_ms:
                    self._behind_since_ms = int(time.time() * 1000)
            if not isinstance(exc, StoreUnavailable):
                raise
            return SendResult.RETRY
        self._error = ""
        self.applied += result.applied
        self.duplicates += result.duplicates
        self.unknown_campaign += result.unknown
        for note in result.notifications:
            self.notifications += 1
            log.info("campaign %s: %s budget reached (%s)", note.campaign, note.reason, note.period or "total")
        return SendResult.DELIVERED

    def health(self) -> Health:
        """Unhealthy while the store is unreachable, or configured so that it may forget applied ids: a `required`
        banker then takes the tracker out of readiness."""
        detail = "; ".join(reason for reason in (self._unsafe, self._error) if reason)
        return Health(healthy=not detail, detail=detail)

    def outcomes(self) -> dict[str, int]:
        counts = {
            "applied": self.applied,
            "duplicates": self.duplicates,
            "unknown_campaign": self.unknown_campaign,
            "notifications": self.notifications,
        }
        counts.update((f"skipped_{reason}", n) for reason, n in self.rule.skipped.items())
        return counts

    def status(self) -> TrackerStatus:
        """This tracker's backlog: how many events it holds for the store and since when it is behind."""
        stats = self.snapshot()
        backlog = stats.pending + stats.spooled_events
        now = int(time.time() * 1000)
        if not backlog and not self._error:
            self._behind_since_ms = 0
        oldest = self._behind_since_ms or (now if backlog else 0)
        return TrackerStatus(at_ms=now, backlog=backlog, oldest_ms=oldest)

    async def _report(self) -> None:
        while True:
            try:
                await self.store.report_status(self.instance, self.status())
            except StoreUnavailable:
                pass  # the store is down: the sends say so, and the report's age tells bidders
            except Exception as exc:  # the report must outlive any failure
                self._note_error(exc)
            if time.monotonic() - self._unsafe_checked >= UNSAFE_CHECK_S:
                await self._check_unsafe()
            if not await self.idle(self.config.status_interval_s):  # closing, even if close()'s cancellation was lost
                return

    async def _check_unsafe(self) -> None:
        """At start and every UNSAFE_CHECK_S: a setting can change under a running tracker (a parameter group
        edited, a failover to a replica configured otherwise). A store that cannot be asked keeps the last answer."""
        try:
            reason = await self.store.unsafe() or ""
        except StoreUnavailable:
            return
        except Exception as exc:  # the report must outlive any failure
            self._note_error(exc)
            return
        self._unsafe_checked = time.monotonic()
        if reason and reason != self._unsafe:
            log.error("banker %s: %s", self.name, reason)
        self._unsafe = reason

    async def close(self, drain_timeout_s: float) -> None:
        await super().close(drain_timeout_s)
        if self._status_task is not None:
            self._status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._status_task
        # A tracker that leaves nothing behind is forgotten; one that spooled what it could not apply keeps its
        # report (the worker that adopts the spool reports it from then on).
        status = self.status()
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            if status.backlog:
                await asyncio.wait_for(self.store.report_status(self.instance, status), 1.0)
            else:
                await asyncio.wait_for(self.store.forget_status(self.instance), 1.0)
        await self.store.close()
