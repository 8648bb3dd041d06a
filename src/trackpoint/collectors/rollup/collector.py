"""The rollup collector: each batch is counted into the hourly rollups in one SQLite transaction, off the request
path (the base Collector batches, retries and spools).

Since the store counts an event id at most once, a batch retried after a send that did land, a replayed log or a
request retried to another worker never count twice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.collectors.rollup.config import RollupCollectorConfig
from trackpoint.collectors.rollup.store import RollupStore, StoreUnavailable
from trackpoint.event import Event


class RollupCollector(Collector):
    """Counters beyond the common ones: `counted` events, `duplicates` (ids already counted) and `too_late` (events
    older than dedupe_window_h, not counted)."""

    def __init__(self, name: str, config: RollupCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.store = RollupStore(config, context.data_dir)
        self.counted = 0
        self.duplicates = 0
        self.too_late = 0
        self._error = ""

    async def send(self, batch: Sequence[Event]) -> SendResult:
        try:
            result = await self.store.count(batch, int(time.time() * 1000))
        except StoreUnavailable as exc:
            self._error = str(exc)
            return SendResult.RETRY
        except Exception as exc:  # a bug, raised for the delivery to log and count; nothing is counted meanwhile
            self._error = repr(exc)
            raise
        self._error = ""
        self.counted += result.counted
        self.duplicates += result.duplicates
        self.too_late += result.too_late
        return SendResult.DELIVERED

    def health(self) -> Health:
        return Health(healthy=not self._error, detail=self._error)

    def outcomes(self) -> dict[str, int]:
        return {"counted": self.counted, "duplicates": self.duplicates, "too_late": self.too_late}

    async def close(self, drain_timeout_s: float) -> None:
        await super().close(drain_timeout_s)
        await self.store.close()
