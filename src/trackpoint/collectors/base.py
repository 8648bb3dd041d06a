"""The collector contract and the bounded batching every collector shares.

start, send(batch) -> delivered / retry / rejected, health, close(drain timeout); offer() is the only member the
request path calls, and it never does I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence

import msgspec

from trackpoint.config.model import CollectorBase
from trackpoint.pipeline.event import Event

log = logging.getLogger("trackpoint.collectors")


class SendResult(enum.Enum):
    """What became of a batch: delivered, worth retrying later, or refused for good (counted as dropped)."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


class Health(msgspec.Struct):
    healthy: bool
    detail: str = ""


class CollectorStats(msgspec.Struct):
    """Counters every collector reports: received, sent, dropped (with the reason counted), errors."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    pending: int = 0
    healthy: bool = True


class Collector(ABC):
    """A destination for events, fed through a bounded in-memory batch flushed on size or time."""

    def __init__(self, name: str, config: CollectorBase) -> None:
        self.name = name
        self.max_pending = config.max_pending_events
        self.batch_max = config.batch_max_events
        self.flush_interval_s = config.flush_interval_ms / 1000
        self.stats = CollectorStats()
        self._pending: list[Event] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._last_error_log = 0.0

    # --- the request path ---------------------------------------------------------------------------------------

    def offer(self, event: Event) -> None:
        """Appends to the batch; beyond the bound the event is dropped and counted. Never blocks, never raises."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            self.stats.dropped += 1
            return
        pending.append(event)
        self.stats.received += 1
        if len(pending) == self.batch_max:
            self._wake.set()

    # --- the contract each collector fills in --------------------------------------------------------------------

    async def start(self) -> None:
        """Opens connections or files; then the flush loop runs until close()."""
        self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop(), name=f"flush-{self.name}")

    @abstractmethod
    async def send(self, batch: Sequence[Event]) -> SendResult:
        """Delivers one batch."""

    def health(self) -> Health:
        return Health(healthy=True)

    async def close(self, drain_timeout_s: float) -> None:
        """Stops the flush loop and delivers what is pending, within the drain timeout."""
        self._closing = True
        self._wake.set()
        if self._flush_task is not None:
            try:
                await asyncio.wait_for(self._flush_task, drain_timeout_s)
            except TimeoutError:
                log.error("collector %s: drain timed out with %d events pending", self.name, len(self._pending))

    # --- batching ------------------------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            await self.flush()
        await self.flush()

    async def flush(self) -> None:
        """Sends everything pending, in batches of at most batch_max events; a failed batch goes back in front."""
        while self._pending:
            batch = self._pending[: self.batch_max]
            del self._pending[: len(batch)]
            try:
                result = await self.send(batch)
            except Exception as exc:  # a collector's failure must never reach the request path
                self._note_error(exc)
                result = SendResult.RETRY
            if result is SendResult.DELIVERED:
                self.stats.sent += len(batch)
            elif result is SendResult.REJECTED:
                self.stats.dropped += len(batch)
            else:
                self._requeue(batch)
                return

    def _requeue(self, batch: list[Event]) -> None:
        room = max(0, self.max_pending - len(self._pending))
        kept = batch[:room]
        self.stats.dropped += len(batch) - len(kept)
        self._pending[:0] = kept

    def _note_error(self, exc: BaseException) -> None:
        self.stats.errors += 1
        now = time.monotonic()
        if now - self._last_error_log > 10:  # logged once per interval, counted always
            self._last_error_log = now
            log.error("collector %s: %r", self.name, exc)

    def snapshot(self) -> CollectorStats:
        self.stats.pending = len(self._pending)
        self.stats.healthy = self.health().healthy
        return msgspec.structs.replace(self.stats)
