"""The collector contract and the delivery every collector shares: batching, retries, the spool, counters.

start, send(batch) -> delivered / retry / rejected, health, close(drain timeout); offer() is the only member the
request path calls, and it never does I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import random
import sys
import time
from abc import ABC, abstractmethod
from array import array
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from trackpoint.collectors.sizing import event_size
from trackpoint.collectors.spool import Recovery, Spool, SpoolLocked, orphans
from trackpoint.config.model import CollectorBase
from trackpoint.data_dir import passing
from trackpoint.event import Event
from trackpoint.log_limiter import LogLimiter, kind_of_text
from trackpoint.privacy.filter import build_filter

log = logging.getLogger("trackpoint.collectors")

# How often a collector looks for spools of workers that are gone.
ORPHAN_SCAN_INTERVAL_S = 10.0
# Names tried beside our own spool's when siblings hold it (_open_own_spool): more would mean a bug, not pid reuse.
MAX_SPOOL_SUFFIX = 16
# Dropped events are logged (a warning with the counts) at most this often per collector, besides the counter.
DROP_LOG_INTERVAL_S = 10.0
# Errors (all counted) are logged the first time of each kind, then at most this often per kind, with the count of
# those not logged: an outage is one line, then a reminder per interval, then the line of the recovery.
ERROR_LOG_INTERVAL_S = 10.0
# A spool that could not be written (its disk full, an I/O error) is tried again this often.
SPOOL_RETRY_INTERVAL_S = 1.0
# A spool that could not be opened (its disk full at start) is tried again after each of these waits in turn, the
# last one repeating: a worker's spool directory is new, and on a full disk even it cannot be made.
SPOOL_OPEN_RETRY_S: Final[tuple[float, ...]] = (1.0, 2.0, 5.0)
# A close() still running this long after its drain timeout (a plugin's that hangs) is abandoned: a worker's drain
# ends, with its final counters reported, before the supervisor kills it (drain_timeout_s + 5 s).
CLOSE_GRACE_S: Final = 2.0
# A call abandoned after its timeout and still running this long after its cancellation is reported as stuck (one
# that stops when cancelled ends within an event-loop iteration or two).
STUCK_AFTER_S: Final = 1.0
# Events the spill moves from memory to the spool in one step; the event loop serves requests between steps. A step
# of 1024 win events (encoded and written) takes 0.4 ms; moving 200,000 at once stalled the loop 170 ms (0.57 s
# under load).
SPILL_STEP_EVENTS = 1024
# And at most these bytes (as offer() measures events): a step of large events moves fewer. 1024 win events are
# about 1.4 MB: they stay bounded by SPILL_STEP_EVENTS, as before.
SPILL_STEP_BYTES = 2 << 20

T = TypeVar("T")


_MEMORY_FULL = "memory batch full"
_SPOOL_OFF = "memory batch full, spool off"
_SPOOL_UNWRITABLE = "memory batch full, spool unwritable"
_SPOOL_FULL = "spool full"
_OLDEST_DROPPED = "spool full, oldest dropped"

# What became of a batch offered to the spool (Collector._push).
_PUSHED, _DROPPED, _FULL, _UNWRITABLE = range(4)


class CollectorStartError(Exception):
    """A collector cannot start for a reason its message says in full (a directory that cannot be made, a file that
    cannot be opened, options that cannot work): the worker reports it in one line, without a traceback, and does not
    start. Raise it from start() for a configuration error that no retry can mend; any other failure of start() only
    keeps the collector from delivering until a retry succeeds (Collector.launch)."""


def stops_the_start(exc: BaseException) -> bool:
    """Whether a failure of a collector's start() is the configuration's, for the worker to report instead of running
    the collector not started: a CollectorStartError, or an OSError on a path (a directory that is a file, a
    permission) other than a disk that is full or failing (data_dir.passing). A target that cannot be reached, a
    plugin's bug, a start that hangs: those are retried."""
    if isinstance(exc, CollectorStartError):
        return True
    return isinstance(exc, OSError) and exc.filename is not None and not passing(exc)


class SendResult(enum.Enum):
    """What became of a batch: delivered, worth retrying later, or refused for good (counted as dropped)."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


class Health(msgspec.Struct):
    """A collector's own view of its target: unhealthy makes /readyz fail when the collector is `required`."""

    healthy: bool
    detail: str = ""


class CollectorStats(msgspec.Struct):
    """Counters every collector reports. received: offered events taken; sent: delivered; retried: events of
    failed sends (each attempt counted); dropped: events given up (memory or spool full, or refused by the target);
    errors: failed sends, failed spool writes and opens, and exceptions; spool_lost_records: records of a torn or
    corrupt spool tail, found on recovery (their events cannot be counted). pending (events in memory not delivered:
    waiting, or taken by a send still running), memory_bytes (what the events in memory take, estimated as
    Collector.offer measures them), spooled_*, spool_max_bytes,
    healthy, accepting and problem (why it is unhealthy, for /readyz) are gauges; last_success_s is when `sent` last
    grew (Unix seconds, as of a snapshot; 0: not since start)."""

    received: int = 0
    sent: int = 0
    retried: int = 0
    dropped: int = 0
    errors: int = 0
    spool_lost_records: int = 0
    pending: int = 0
    memory_bytes: int = 0
    spooled_bytes: int = 0
    spooled_events: int = 0
    spool_max_bytes: int = 0
    last_success_s: float = 0.0
    healthy: bool = True
    required: bool = False
    accepting: bool = True
    problem: str = ""
    # What a collector counts beyond these, by name (monotonic): see Collector.outcomes().
    outcomes: dict[str, int] = {}
    # What a collector measures beyond these, by name (gauges): see Collector.levels().
    levels: dict[str, int] = {}


# The fields of CollectorStats that are levels of one running process, not totals: what a worker that exited (or was
# replaced) no longer holds. Its counters keep counting in the totals (Prometheus must see no reset); these do not.
# A new field is either a counter or listed here (tests/test_stats.py checks every field is one or the other).
COLLECTOR_GAUGES: Final = (
    "pending",
    "memory_bytes",
    "spooled_bytes",
    "spooled_events",
    "spool_max_bytes",
    "healthy",
    "accepting",
    "problem",
    "levels",
)


@dataclass(frozen=True)
class CollectorContext:
    """Where a collector instance runs: the tracker's data directory and the worker slot (0 outside workers)."""

    data_dir: str
    worker: int = 0


class Collector(ABC):
    """A destination for events: a bounded in-memory batch, flushed on size or time; failed batches spool to disk
    and are retried with backoff, oldest first, so the target sees events in order once it is back.

    Subclasses fill in `send` (and usually `start`, `health`, `close`); this class owns batching, timeouts,
    retries, the spool, backpressure and the counters."""

    # A durable collector is the record a response promises (the log): the edge calls its commit() once per
    # event-loop iteration, before that iteration's responses are written, and answers 503 when it fails.
    durable: bool = False

    def __init__(self, name: str, config: CollectorBase, context: CollectorContext) -> None:
        self.name = name
        self.context = context
        self.max_pending = config.max_pending_events
        self.max_pending_bytes = config.max_pending_bytes
        self.batch_max = config.batch_max_events
        self.flush_interval_s = config.flush_interval_ms / 1000
        self.send_timeout_s = config.send_timeout_s
        self.send_stall_s = config.send_stall_s
        self.start_timeout_s = config.start_timeout_s
        self.retry_initial_s = config.retry_initial_ms / 1000
        self.retry_max_s = config.retry_max_ms / 1000
        self.spool_config = config.spool
        # False while a full spool under the backpressure policy asks the edge to answer 503.
        self.accepting = True
        self.stats = CollectorStats(
            required=config.required, spool_max_bytes=config.spool.max_bytes if config.spool.enabled else 0
        )
        self._sent_seen = 0  # stats.sent at the last snapshot: last_success_s moves when it grew
        self._pending: list[Event] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._closing_event = asyncio.Event()  # set with _closing, for idle()
        self._abandoned = False  # close() gave up on the drain: the flush loop must stop
        self._error_log = LogLimiter(ERROR_LOG_INTERVAL_S)
        # Drops by cause (besides offer's, counted only in stats.dropped: the request path does nothing more),
        # and what the last drop warning reported.
        self._drops: dict[str, int] = {}
        self._drops_logged: dict[str, int] = {}
        self._dropped_logged = 0
        self._last_drop_log = -DROP_LOG_INTERVAL_S
        self._failures = 0
        self._retry_at = 0.0
        # Why the last call of send() failed as a call ("" once one answered a SendResult): it raised, hung past
        # send_timeout_s, or returned something else. Unhealthy meanwhile, whatever health() says: a RETRY is the
        # collector's answer (its health() says why), these are faults its health() may know nothing of.
        self._send_failure = ""
        # When the running call of send() began (time.monotonic(); 0: none runs): one in flight beyond send_stall_s
        # makes the collector unhealthy before its timeout ends it. Set per batch, read by snapshot() once a second.
        self._send_began = 0.0
        # Why start() failed ("" once it succeeded): the collector runs not started (launch), start() tried again
        # from the flush loop at _start_at.
        self._start_failure = ""
        self._start_failures = 0
        self._start_at = 0.0
        self._starting: asyncio.Task[None] | None = None
        # Calls of the plugin's (send, start, close) abandoned after their timeout but still running: they ignored
        # their cancellation. Referenced here so they are not garbage collected mid-run; while one runs, no new send
        # or start is made (they would pile up), and the collector is unhealthy.
        self._stray: set[asyncio.Task[Any]] = set()
        self._stray_since = 0.0
        self._refused = 0  # events of the running send refused on their own (refuse()): not counted as sent
        self._in_flight: list[Event] = []  # events taken from _pending by the running flush, from _in_flight_start
        self._in_flight_start = 0
        # While a send from memory runs, the spill may move the batch being sent (as the spool's oldest record), then
        # the rest of _in_flight, to the spool: they are older than the memory batch. 0: none moved; else the index of
        # _in_flight up to which they are in the spool.
        self._in_flight_spooled = 0
        # The spool whose oldest record is the batch being sent (drained, or moved there by the spill while it was
        # sent from memory): acknowledged (popped) once the send is done with. If drop_oldest discards that record
        # meanwhile, this is None and _sending_dropped holds its events: dropped only if the send fails after all.
        self._sending_head: Spool | None = None
        self._sending_dropped = 0
        # The pending step of the spill (it moves SPILL_STEP_EVENTS per event-loop iteration), if any.
        self._spill_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The spool refused a batch for want of room (when_full decided); cleared when it shrinks. Meanwhile offer()
        # does not count on the spool to take what exceeds max_pending_events.
        self._spool_full = False
        # Memory never holds more than this: max_pending_events, and room for what arrives while the spill moves the
        # excess to the spool, or (backpressure) while the requests already past the closed gate are recorded.
        self.memory_cap = self.max_pending + max(self.batch_max, self.max_pending // 4)
        # The same bounds in bytes, for the memory batch and the running flush's events together (what memory holds):
        # max_pending_bytes and a quarter more. The spill writes records of at most _record_bytes.
        self.memory_cap_bytes = self.max_pending_bytes + self.max_pending_bytes // 4
        self._record_bytes = max(1, min(SPILL_STEP_BYTES, self.max_pending_bytes // 4))
        # What the events in memory take (as offer() measured each): one size per event of _pending, in
        # _pending_sizes, and of the running flush's _in_flight (which holds all of its events until it is done), in
        # _in_flight_sizes and _in_flight_bytes; _held_bytes is the total, which offer() checks.
        self._pending_sizes = array("Q")
        self._in_flight_sizes = array("Q")
        self._in_flight_bytes = 0
        self._held_bytes = 0
        self._spool: Spool | None = None  # None: the spool is off, or could not be opened yet (_spool_missing)
        self._spool_name: str | None = None  # the directory our spool opened in, once it has (_open_own_spool)
        self._adopted: list[Spool] = []
        # Why the spool is on but not open ("" once it is): its disk was full at start. Unhealthy until it opens;
        # meanwhile events wait in memory, as with a spool that cannot be written.
        self._spool_missing = ""
        self._spool_open_failures = 0
        self._spool_open_at = 0.0
        # Why delivery itself is failing, not the target ("" while it works): the spool could not be written (events
        # then wait in memory), or a flush failed unexpectedly. Unhealthy until a spool write or a send succeeds.
        self._fault = ""
        # Durable collectors only: why the last commit() raised, set by the edge ("" once one returns): unhealthy.
        self.commit_problem = ""
        self._spool_retry_at = 0.0
        self._next_orphan_scan = 0.0
        self._batch_codec = msgspec.msgpack.Encoder()
        self._batch_decoder = msgspec.msgpack.Decoder(list[Event])
        # The privacy policy for this collector (None: it may receive events whole), applied on offer, to what a
        # spool gives back, and by replay.
        self.privacy_filter = build_filter(config)

    # --- the request path ---------------------------------------------------------------------------------------

    def offer(self, event: Event) -> None:
        """Appends to the batch; beyond max_pending_events or max_pending_bytes the oldest events move to the spool
        (in the background), and when nothing can take them the `when_full` policy applies. Never blocks, never
        raises."""
        pending = self._pending
        if (
            len(pending) >= self.max_pending or self._held_bytes >= self.max_pending_bytes
        ) and not self._beyond_bound():
            return
        try:
            if self.privacy_filter is not None:  # untrusted or with field lists: a filtered copy of its own
                event = self.privacy_filter(event)
            # What the event takes in memory, estimated once (the collector keeps it).
            size = event_size(event)
        except Exception as exc:  # a malformed event (the edge lets none through): lost to this collector only
            self.stats.dropped += 1
            self._note_error(exc)
            return
        pending.append(event)
        self._pending_sizes.append(size)
        self._held_bytes += size
        self.stats.received += 1
        if len(pending) == self.batch_max:
            self._wake.set()

    def _at_cap(self) -> bool:
        """Memory at its cap: memory_cap events in the batch, or memory_cap_bytes with the running flush's."""
        return len(self._pending) >= self.memory_cap or self._held_bytes >= self.memory_cap_bytes

    def _record_waiting(self) -> bool:
        """Whether the memory batch holds a whole record for the spill: _spill_batch events, or _record_bytes."""
        pending_bytes = self._held_bytes - self._in_flight_bytes
        return len(self._pending) >= self._spill_batch or pending_bytes >= self._record_bytes

    def _beyond_bound(self) -> bool:
        """offer() at max_pending_events or max_pending_bytes: whether the event is taken all the same (else it is
        dropped, counted). With a spool that takes events, it is, and the spill moves the oldest of memory there in
        the background; under backpressure with none that can, the gate closes (the edge answers 503) and the events
        of requests already past it are still taken; under drop_newest and drop_oldest they are dropped. Never beyond
        memory_cap (memory_cap_bytes), which only events that no gate holds back (bad rows, flagged traffic) can
        reach."""
        backpressure = self.spool_config.when_full == "backpressure"
        if self._at_cap() and self._spool_takes() and self._record_waiting():
            # The steps did not keep up: they move the batch being sent (and the rest of its flush) first, to keep
            # the order, while events arrive faster than a step an iteration. The rest moves now: a pause of a few
            # milliseconds (0.4 ms per 1,024 events), not a loss.
            self._spill()
        # At the cap in bytes with no whole record in the batch, what fills memory is the running flush's, which
        # cannot leave it before its send ends: the new events still go to the spool, behind it.
        if not self._at_cap() or (self._spool_takes() and not self._record_waiting()):
            if self._spool_takes():
                self._schedule_spill()
                # The spill not keeping up (a slow disk): the gate closes before memory reaches its cap.
                if backpressure and (
                    len(self._pending) >= (self.max_pending + self.memory_cap) // 2
                    or self._held_bytes >= (self.max_pending_bytes + self.memory_cap_bytes) // 2
                ):
                    self.accepting = False
                return True
            if backpressure:
                self.accepting = False
                return True
        elif backpressure:
            self.accepting = False
        self.stats.dropped += 1
        return False

    def offer_failed(self) -> None:
        """The edge's note that an offer() of this collector's own raised (a plugin's bug; the edge counts the error
        and logs it): the event is lost to this collector, counted as dropped."""
        self._drop("offer() raised", 1)

    # --- the contract each collector fills in --------------------------------------------------------------------

    async def start(self) -> None:
        """Opens connections or files (a subclass does that, then calls this); then the flush loop runs until
        close(). Should not fail because the target is down: sends fail and spool until it is back (a start that
        fails all the same is retried: launch). Nor because the disk under data_dir is full: events then wait in
        memory until the spool can be opened. This part may run more than once (a retried start): it does its work
        once."""
        if self.spool_config.enabled and self._spool is None and not self._spool_missing:
            self._open_spool(at_start=True)
            self._adopt_orphans()
        self._loop = asyncio.get_running_loop()
        if self._flush_task is None:
            self._flush_task = self._loop.create_task(self._flush_loop(), name=f"flush-{self.name}")

    async def launch(self) -> None:
        """Starts the collector as a worker (and `trackpoint replay`) does: start(), isolated. A start that raises or
        does not return within start_timeout_s does not stop the worker: the collector runs not started, unhealthy
        with the reason, its events held as during an outage (in the spool, or in memory within
        max_pending_events), and start() is tried again from the flush loop with the retry backoff until it
        succeeds; delivery then resumes. Raised all the same, for the worker to report: a configuration error
        (stops_the_start), and any failure of a durable collector (the log: without it nothing can be
        acknowledged)."""
        outcome = await self._try_start()
        if outcome is None:
            return
        if isinstance(outcome, BaseException) and (
            self.durable or stops_the_start(outcome) or not isinstance(outcome, Exception)
        ):
            raise outcome
        if self.durable:
            raise CollectorStartError(str(outcome))
        self._start_failed(outcome)
        await Collector.start(self)  # ours: the spool and the flush loop, where events wait and start is retried

    async def _try_start(self) -> BaseException | str | None:
        """One call of start(), bounded by start_timeout_s: None when it returned, else what it raised, or why it
        was not made or did not end (a text)."""
        if self._stray:
            return "a start() abandoned after start_timeout_s is still running (it ignored its cancellation)"
        try:
            task = await self._within(self.start(), self.start_timeout_s, "start")
        except Exception as exc:  # a start() that is not a coroutine function
            return exc
        if task is None:
            return f"start() did not return within {self.start_timeout_s:g} s (start_timeout_s); abandoned"
        if task.cancelled():
            return "start() was cancelled"
        return task.exception()

    def _start_failed(self, outcome: BaseException | str) -> None:
        """Counted and logged (first of its kind, then at most once per interval); tried again after the backoff."""
        reason = outcome if isinstance(outcome, str) else f"start() failed: {type(outcome).__name__}: {outcome}"
        held = "in the spool" if self.spool_config.enabled else f"in memory (at most {self.max_pending})"
        self._note_error(f"{reason}; running not started, unhealthy: events wait {held}, start tried again")
        self._start_failure = reason
        self._start_failures += 1
        self._start_at = time.monotonic() + self._backoff(self._start_failures)

    async def _restart(self) -> None:
        """A retry of a failed start (from the flush loop, in its own task: events keep moving to the spool)."""
        try:
            outcome = await self._try_start()
        finally:
            self._starting = None
        if outcome is not None:
            self._start_failed(outcome)
            return
        log.warning("collector %s: started after %d failed attempts", self.name, self._start_failures)
        self._error_log.forget_counts()
        self._start_failure = ""
        self._start_failures = 0
        self._retry_at = 0.0
        self._wake.set()

    @abstractmethod
    async def send(self, batch: Sequence[Event]) -> SendResult:
        """Delivers one batch: DELIVERED, RETRY (target unavailable; the batch comes back later) or REJECTED
        (the target refuses these events for good; they are dead-lettered and counted as dropped). Anything else
        returned, an exception, or no answer within send_timeout_s (the call is then cancelled and abandoned) is a
        failed attempt: counted, the collector unhealthy until a send answers, the batch retried with backoff.

        The events are read-only. A collector with a privacy filter (every untrusted one) gets copies of its own,
        which nothing else sees; a trusted one without lists gets the events themselves, shared with the other
        trusted collectors of their type and the dashboard's tail: a change it makes, they see."""

    def refuse(self, events: list[Event]) -> None:
        """For a send() that returns DELIVERED: events of its batch that the target refused for good while it took
        the others. They are dead-lettered and counted as dropped, and only the others are counted as sent."""
        self._refused += len(events)
        self._dead_letter(events)

    @property
    def retrying(self) -> bool:
        """Whether a failed batch waits for its retry (its outcome will tell whether the target is back)."""
        return self._failures > 0

    def health(self) -> Health:
        """Whether the target is usable now (e.g. connected), with a short detail; read once a second for the
        metrics and /readyz, so it must be cheap and must not do I/O."""
        return Health(healthy=True)

    def commit(self) -> bool:
        """Durable collectors only: writes what was offered since the last commit; False when it could not be
        recorded (the edge then answers those requests 503 with `failure_reason`)."""
        return True

    failure_reason = "collector_unavailable"
    # Durable collectors only: answers wait for sync() of their lines as well (durability power).
    sync_before_answer = False

    async def sync(self) -> None:
        """Durable collectors only: makes what commit() wrote survive power loss (fsync)."""
        return None

    def outcomes(self) -> dict[str, int]:
        """Counters of this collector's own (monotonic), reported as trackpoint_collector_outcomes_total."""
        return {}

    def levels(self) -> dict[str, int]:
        """Gauges of this collector's own, reported as trackpoint_collector_level{collector, level}: summed over
        the workers like `pending`, so a level of the shared target (not of this process) is reported by the
        worker in slot 0 alone (`context.worker == 0`). Read once a second: return what a periodic task measured,
        never do I/O here."""
        return {}

    async def idle(self, seconds: float) -> bool:
        """Waits `seconds`, less when close() begins; False once the collector is closing. The pause of a
        collector's own periodic task (a health probe, a status report): `if not await self.idle(interval): return`
        ends it with close() even when its cancellation was lost, as asyncio.wait_for loses one on Python 3.11 when
        the call it awaits finishes at that moment (redis-py connecting): a probe cancelled mid-connect went on
        pinging, and close() waited out the drain timeout and its grace."""
        if not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._closing_event.wait()
        return not self._closing

    async def close(self, drain_timeout_s: float) -> None:
        """Stops the flush loop and delivers what is pending within the drain timeout; what cannot be delivered
        in time goes to the spool, where the next worker finds it."""
        self._closing = True
        self._closing_event.set()
        self._wake.set()
        if self._starting is not None:  # a retried start still running: its call is abandoned
            self._starting.cancel()
        task = self._flush_task
        if task is not None:
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can lose the cancellation when the task's own
            # send finishes at that moment, and then waits for ever on a task that keeps retrying.
            done, _ = await asyncio.wait({task}, timeout=drain_timeout_s)
            if not done:
                spooled = sum(spool.events for spool in [*self._adopted, *([self._spool] if self._spool else [])])
                log.error(
                    "collector %s: drain timed out (target still failing) with %d events in memory and %d in the spool",
                    self.name,
                    len(self._pending),
                    spooled,
                )
                self._abandoned = True  # the loop stops at its next step even if the cancellation is lost
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        # Events taken for sending but not confirmed (a send cut off by the timeout may or may not have landed)
        # are kept, ahead of the newer ones; the rest of the spill is done here, at once.
        self._take_back_in_flight()
        if self._spill_handle is not None:
            self._spill_handle.cancel()
        self._loop = self._spill_handle = None
        if self._pending and self._spool_missing:
            self._spool_open_at = 0.0  # a last attempt, for the next worker to find them
            self._open_spool()
        if self._pending and self._spool is not None:
            self._spill()
        if self._pending:
            log.error("collector %s: %d events undelivered at shutdown", self.name, len(self._pending))
            self.stats.dropped += len(self._pending)
            self._pending = []
            self._pending_sizes = array("Q")
            self._held_bytes = 0
        for spool in [*self._adopted, *([self._spool] if self._spool else [])]:
            try:
                spool.close()
            except OSError as exc:  # its acknowledged position not saved: the next worker re-sends a little more
                self._note_error(exc)
        self._adopted = []

    # --- delivery ------------------------------------------------------------------------------------------------

    async def deliver(self, batch: list[Event]) -> bool:
        """One attempt to send a batch, isolated from whatever the collector does: an exception, a hang beyond
        send_timeout_s (the send is then cancelled and abandoned, not waited for) or an answer that is not a
        SendResult counts as a failed attempt, retried with backoff. True when the batch is done with (delivered,
        or refused for good)."""
        self._refused = 0
        result: object = None
        failure = ""  # why the attempt failed, when the call did not answer
        raised = called = False
        if self._start_failure:
            failure = f"not started: {self._start_failure}"
        elif self._stray:
            failure = "a call abandoned after its timeout is still running (it ignored its cancellation): no send "
            failure += "is made until it ends"
        else:
            called = True
            self._send_began = time.monotonic()
            try:
                task = await self._within(self.send(batch), self.send_timeout_s, "send")
                if task is None:
                    failure = f"send timed out after {self.send_timeout_s:g} s; abandoned"
                elif task.cancelled():
                    failure = "send was cancelled"
                else:
                    result = task.result()
            except Exception as exc:  # a collector's failure must never reach the request path
                self._note_error(exc)  # logged by its type: its text may hold anything (an event id)
                failure, raised = f"send raised {type(exc).__name__}: {str(exc)[:200]}", True
            finally:
                self._send_began = 0.0
        if result is SendResult.DELIVERED:
            self.stats.sent += len(batch) - self._refused
            if self._failures:
                log.warning("collector %s: delivering again after %d failed attempts", self.name, self._failures)
                self._error_log.forget_counts()  # what the outage repeated: the attempts say it
            self._failures = 0
            self._retry_at = 0.0
            self._send_failure = ""
            self._clear_fault()
            return True
        if result is SendResult.REJECTED:
            self._send_failure = ""
            self._dead_letter(batch)
            return True
        if result is SendResult.RETRY:
            self._send_failure = ""
            detail = self._health_detail()
            failure = "target unavailable, retrying with backoff" + (f": {detail}" if detail else "")
        elif not failure:
            # Not a SendResult (True, a forgotten return's None, a string): the collector's bug, not the target's
            # answer. Its type only: the value may be anything.
            returned = "None (no return?)" if result is None else f"a {type(result).__name__}"
            failure = f"send() returned {returned}, not a SendResult (a bug of the collector's)"
        if not raised:
            self._note_error(failure)
        if called and result is not SendResult.RETRY:  # (not called: not started, or a call still running)
            self._send_failure = failure
        self.stats.retried += len(batch)
        self._failures += 1
        self._retry_at = time.monotonic() + self._backoff(self._failures)
        return False

    def _backoff(self, failures: int) -> float:
        """The wait after this many failures in a row: doubling from retry_initial_ms up to retry_max_ms, ±50%."""
        backoff = min(self.retry_max_s, self.retry_initial_s * 2.0 ** min(failures - 1, 30))
        return backoff * random.uniform(0.5, 1.5)

    async def _within(self, call: Coroutine[Any, Any, T], timeout_s: float, what: str) -> asyncio.Task[T] | None:
        """Runs a call of the collector's for at most timeout_s: its task, done (its result or exception to read),
        or None when it did not end in time. It is then cancelled and abandoned, not waited for (asyncio.wait_for
        waits for the cancelled call to end: a call that ignores its cancellation held the flush loop, the drain,
        and replay for ever); as it is when the caller is cancelled (close)."""
        task = asyncio.get_running_loop().create_task(call, name=f"{what}-{self.name}")
        try:
            await asyncio.wait({task}, timeout=timeout_s)
        except asyncio.CancelledError:
            self._abandon(task)
            raise
        if not task.done():
            self._abandon(task)
            return None
        return task

    def _abandon(self, task: asyncio.Task[Any]) -> None:
        """Cancels a call of the collector's without waiting for it; kept in _stray until it ends."""
        task.cancel()
        if not self._stray:
            self._stray_since = time.monotonic()
        self._stray.add(task)
        task.add_done_callback(self._stray_ended)

    def _stray_ended(self, task: asyncio.Task[Any]) -> None:
        self._stray.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: what an abandoned call ended with is no longer anyone's to report
        if not self._stray and time.monotonic() - self._stray_since >= STUCK_AFTER_S:
            log.warning(
                "collector %s: the call abandoned %.0f s ago has ended", self.name, time.monotonic() - self._stray_since
            )

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            # Woken at the interval by a timer, or sooner by _wake.set(): not asyncio.wait_for, which makes a task
            # and raises its timeout each time, on the thread that serves requests, ten times a second per collector.
            timer = loop.call_later(self.flush_interval_s, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            self._wake.clear()
            await self._flush_isolated()
            for spool in [*self._adopted, *([self._spool] if self._spool else [])]:
                spool.persist_due()  # the last acknowledgements of a drain, with no delivery after them
            if self.stats.dropped != self._dropped_logged:
                self._warn_drops()
        # Shutdown: keep trying (with backoff) until everything is out or close() runs out of drain time and
        # spools the rest for the next worker.
        self._retry_at = 0.0
        await self._flush_isolated()
        while (
            not self._abandoned
            and not self._start_failure
            and (self._pending or (self._spool is not None and self._spool.records) or self._adopted)
        ):
            await asyncio.sleep(max(0.01, self._retry_at - time.monotonic()))
            if self._stray:  # a send that ignored its cancellation still runs: none can be made, close() spools
                break
            await self._flush_isolated()

    async def _flush_isolated(self) -> None:
        """flush(), which nothing may end: the loop is the only thing that ever delivers this collector's events, so
        an error it did not foresee is counted and logged, the events it held are kept, and it tries again after a
        backoff."""
        try:
            await self.flush()
        except Exception as exc:
            self._take_back_in_flight()
            self.stats.errors += 1
            if not self._fault:  # its traceback once, not at every retry
                log.exception("collector %s: flush failed", self.name)
            self._set_fault(f"delivery failed: {exc!r}")
            self._retry_at = time.monotonic() + self.retry_initial_s

    async def flush(self) -> None:
        """Delivers the spooled backlog, oldest first, then the memory batch. While the target is failing (in
        backoff), events move from memory to the spool so that memory stays small and order is kept; so do those
        beyond max_pending_events while a send hangs (offer)."""
        if self._spool_missing and time.monotonic() >= self._spool_open_at:
            self._open_spool()
        if self.spool_config.enabled and time.monotonic() >= self._next_orphan_scan:
            self._adopt_orphans()
        if self._start_failure:  # nothing can be sent: events wait as during an outage while start is retried
            if self._starting is None and not self._closing and time.monotonic() >= self._start_at:
                self._starting = asyncio.get_running_loop().create_task(self._restart(), name=f"start-{self.name}")
            self._hold_back()  # in steps: the loop serves requests between them
            return
        if time.monotonic() < self._retry_at:
            self._hold_back()
            return
        while await self._drain_spools() and self._pending:
            # Take the whole list (new events start a fresh one) and send it in slices: no front deletions, which
            # would move the rest of a long backlog once per batch.
            taken, self._pending = self._pending, []
            self._in_flight, self._in_flight_spooled = taken, 0
            self._in_flight_sizes, self._pending_sizes = self._pending_sizes, array("Q")
            self._in_flight_bytes = self._held_bytes  # all memory holds: no other flush's events are left
            start = 0
            while start < len(taken):
                self._in_flight_start = start
                done = await self.deliver(taken[start : start + self.batch_max])
                if not done or self._in_flight_spooled:
                    # Failed, or the spill took this batch (the spool's oldest record now) and maybe more while it
                    # was sent: the spool then holds the oldest events, and is drained before memory again.
                    self._take_back_in_flight(done)
                    if not done:
                        self._hold_back()
                        return
                    break
                start += self.batch_max
            else:
                self._in_flight = []
                self._held_bytes -= self._in_flight_bytes
                self._in_flight_sizes, self._in_flight_bytes = array("Q"), 0
            if not self.accepting:
                self._update_accepting()

    def _take_back_in_flight(self, done: bool = False) -> None:
        """The send from memory ended (done: delivered or refused for good) or did not (failed, cut off by close(),
        the flush failed): its unsent events that the spill did not take go back in front of the memory batch, older
        than it and newer than what the spool holds; the batch being sent, if the spill took it, is settled as the
        spool's oldest record."""
        taken = self._in_flight
        if taken:
            back = self._in_flight_spooled or self._in_flight_start
            self._pending[:0] = taken[back:]
            sizes = self._in_flight_sizes[back:]
            self._pending_sizes[:0] = sizes
            self._held_bytes -= self._in_flight_bytes - sum(sizes)  # the rest leaves memory with the list
        self._in_flight, self._in_flight_spooled = [], 0
        self._in_flight_sizes, self._in_flight_bytes = array("Q"), 0
        self._settle_head(done)

    def _settle_head(self, done: bool) -> None:
        """After the send of a spool's oldest record: acknowledged if the batch is done with, else left for the next
        attempt. One that drop_oldest discarded while it was sent is counted dropped only if the send failed."""
        head, dropped = self._sending_head, self._sending_dropped
        self._sending_head, self._sending_dropped = None, 0
        if head is not None and done:
            head.pop()
            self._spool_full = False
        elif dropped and not done:
            self._drop(_OLDEST_DROPPED, dropped)

    def _hold_back(self) -> None:
        """The target is failing: memory moves to the spool (a step now, the rest in the background), or without a
        spool stays within its bound."""
        if not self.spool_config.enabled:
            self._trim_memory()
        elif self._spill_handle is None:
            self._spill_step(tail=True)

    # --- the spool -----------------------------------------------------------------------------------------------

    def _spool_parent(self) -> Path:
        return Path(self.context.data_dir) / "spool" / self.name

    def _spool_directory(self) -> Path:
        name = self._spool_name or f"w{self.context.worker:02d}-p{os.getpid()}"
        return self._spool_parent() / name

    def _open_own_spool(self) -> tuple[Path, Spool, Recovery]:
        """Opens this worker's spool, named after its slot and pid. Pids repeat in a container restarted on its
        volume (the supervisor is pid 1, its workers 2, 3...): the spool a worker of the previous run left under our
        name may already be adopted by a sibling worker. Then ours opens beside it, with the first free suffix,
        rather than fail the collector's start while the sibling drains that backlog."""
        base = self._spool_directory()
        suffix = 0
        while True:
            directory = base.with_name(f"{base.name}-{suffix}") if suffix else base
            spool = self._new_spool(directory)
            try:
                recovery = spool.open()
            except SpoolLocked:
                if suffix == MAX_SPOOL_SUFFIX:
                    raise
                suffix += 1
                continue
            self._spool_name = directory.name
            return directory, spool, recovery

    def _open_spool(self, at_start: bool = False) -> None:
        """Opens this worker's spool. One that cannot be opened because of the disk (full, failing: data_dir's
        `passing` errors; any error after start) leaves the collector running without it, unhealthy, its events
        waiting in memory within max_pending_events (the `when_full` policy applies as to a spool that cannot be
        written), and is tried again from the flush loop after SPOOL_OPEN_RETRY_S. Any other error at start (a
        path that is a file, a permission) is raised: the worker reports it in one line."""
        directory = self._spool_directory()
        try:
            directory, spool, recovery = self._open_own_spool()
        except OSError as exc:
            if at_start and not passing(exc):
                raise
            self.stats.errors += 1
            delay = SPOOL_OPEN_RETRY_S[min(self._spool_open_failures, len(SPOOL_OPEN_RETRY_S) - 1)]
            self._spool_open_failures += 1
            self._spool_open_at = time.monotonic() + delay
            if not self._spool_missing:
                log.error(
                    "collector %s: spool %s cannot be opened (%s); running without it, unhealthy: events wait in "
                    "memory (at most %d) until it opens, tried again with backoff",
                    self.name,
                    directory,
                    exc.strerror or exc,
                    self.max_pending,
                )
            self._spool_missing = f"spool {directory} cannot be opened: {exc.strerror or exc}"
            return
        if self._spool_missing:
            log.warning(
                "collector %s: spool %s opened after %d failed attempts",
                self.name,
                directory,
                self._spool_open_failures,
            )
        self._spool = spool
        self._spool_missing = ""
        self._spool_open_failures = 0
        self._report_recovery(directory, recovery)
        self._update_accepting()

    def _new_spool(self, directory: Path) -> Spool:
        return Spool(
            directory,
            max_bytes=self.spool_config.max_bytes,
            segment_bytes=self.spool_config.segment_bytes,
            fsync=self.spool_config.fsync,
        )

    def _adopt_orphans(self) -> None:
        """Spools left by workers that exited (a crash, or a reload that replaced them) are drained by us."""
        self._next_orphan_scan = time.monotonic() + ORPHAN_SCAN_INTERVAL_S
        try:
            found = orphans(self._spool_parent(), exclude=self._spool_directory())
        except OSError as exc:  # the spool directory unreadable: looked at again at the next scan
            self._note_error(exc)
            return
        for directory in found:
            spool = self._new_spool(directory)
            try:
                recovery = spool.open()
            except SpoolLocked:
                continue  # another worker adopted it first
            except OSError as exc:
                self._note_error(exc)
                continue
            self._report_recovery(directory, recovery)
            self._adopted.append(spool)
            log.info("collector %s: adopted spool %s with %d events", self.name, directory, recovery.events)

    def _report_recovery(self, directory: Path, recovery: Recovery) -> None:
        if recovery.corrupt_bytes:
            self.stats.spool_lost_records += recovery.corrupt_records
            log.error(
                "collector %s: spool %s had a torn or corrupt tail: %d bytes (%d records) discarded",
                self.name,
                directory,
                recovery.corrupt_bytes,
                recovery.corrupt_records,
            )

    async def _drain_spools(self) -> bool:
        """Sends spooled batches in order (adopted spools first: they are older). False when a send failed."""
        while self._adopted:
            spool = self._adopted[0]
            if not await self._drain(spool):
                return False
            spool.close()
            self._adopted.pop(0)
            self._spool_full = False
        if self._spool is None or not self._spool.records:
            return True
        return await self._drain(self._spool)

    async def _drain(self, spool: Spool) -> bool:
        """Sends one spool's records, oldest first. Newer events wait in memory meanwhile (beyond max_pending_events
        the spill appends them to our spool, behind the backlog): memory is sent once the spool is empty."""
        while True:
            try:
                record = spool.peek()
            except OSError as exc:  # an I/O error reading it: tried again at the next flush
                self._note_error(exc)
                self._set_fault(f"spool {spool.directory} cannot be read: {exc}")
                return False
            if record is None:
                return True
            payload, events = record
            try:
                batch = self._batch_decoder.decode(payload)
            except msgspec.DecodeError as exc:
                self._note_error(exc)
                self._drop("unreadable spool record", events)
                spool.pop()
                continue
            if self.privacy_filter is not None:
                # Filtered again under this collector's policy as it is now: the spool may be a worker's that ran
                # an older config (a reload that made the collector untrusted, or narrowed its lists), whose
                # events it kept as that config let it. Filtering twice changes nothing; it costs on drains only.
                batch = [self.privacy_filter(event) for event in batch]
            # The spill may run while this is sent (a hang): under drop_oldest it may drop this very record, which
            # must then not be popped (the next, unsent, would be acknowledged in its place): _drop_oldest.
            self._sending_head = spool
            done = await self.deliver(batch)
            self._settle_head(done)
            if not done:
                return False
            self._update_accepting()

    # --- the spill: memory to the spool, a step per event-loop iteration -------------------------------------------

    def _spool_writable(self) -> bool:
        """Whether the spool is open and not waiting to be tried again after a failed write."""
        return self._spool is not None and not (self._fault and time.monotonic() < self._spool_retry_at)

    def _spool_takes(self) -> bool:
        """Whether the spool can take what exceeds max_pending_events: writable, with room when last tried."""
        return not self._spool_full and self._spool_writable()

    def _spill_wanted(self) -> bool:
        """Whether memory should move to the spool now: while the target is failing, all of it (memory stays small,
        order is kept) in records of _spill_batch events; else what exceeds half of max_pending_events, once offer()
        found the bound reached."""
        if self._failures or time.monotonic() < self._retry_at:
            return self._record_waiting()
        return len(self._pending) > self.max_pending // 2 or self._held_bytes > self.max_pending_bytes // 2

    @property
    def _spill_batch(self) -> int:
        """Events per spool record the spill writes (a batch for the drain to send)."""
        return min(self.batch_max, max(1, self.max_pending // 4))

    def _schedule_spill(self) -> None:
        if self._spill_handle is None and self._loop is not None:
            self._spill_handle = self._loop.call_soon(self._spill_step)

    def _spill_step(self, tail: bool = False) -> None:
        """One step of the spill, SPILL_STEP_EVENTS and SPILL_STEP_BYTES at most (a record at least); the next one
        is scheduled for the next event-loop iteration, so requests are served between the steps. `tail`: the events
        short of a whole record move too (the flush loop's step)."""
        self._spill_handle = None
        try:
            if (
                (tail or self._spill_wanted())
                and self._spill(SPILL_STEP_EVENTS, tail, SPILL_STEP_BYTES)
                and self._spill_wanted()
            ):
                self._schedule_spill()
        except Exception as exc:  # a bug of the spill's own: counted and logged; the flush loop's step tries again
            self._note_error(exc)

    def _spill(self, limit: int = 0, tail: bool = True, byte_limit: int = 0) -> bool:
        """Moves the oldest events not in the spool yet into it, up to `limit` events and `byte_limit` bytes (0: all;
        a record at least), in records of _spill_batch events or _record_bytes (`tail`: and the last, shorter one):
        while a send from memory runs, first the batch being sent (as one record, then the spool's oldest:
        _settle_head) and the rest of that flush's events, which are older than the memory batch; then the memory
        batch. The `when_full` policy decides what happens when the spool has no room. A spool that cannot be written
        (its disk full, an I/O error) leaves the events in memory, within max_pending_events and max_pending_bytes,
        and is tried again SPOOL_RETRY_INTERVAL_S later; so does one that could not be opened yet (flush() tries
        that). False when nothing moved, or the spool could take no more."""
        spool = self._spool
        if spool is None or not self._spool_writable():
            self._hold_in_memory()
            return False
        budget = limit or sys.maxsize
        byte_budget = byte_limit or sys.maxsize
        outcome = _PUSHED
        moved = moved_bytes = 0
        taken = self._in_flight
        if taken and self._record_waiting():  # nothing of a send that is not overtaken moves
            sizes = self._in_flight_sizes
            if not self._in_flight_spooled:
                start = self._in_flight_start
                sending = taken[start : start + self.batch_max]
                outcome = self._push(spool, sending, sending=True)
                if outcome == _PUSHED:
                    self._in_flight_spooled = start + len(sending)
                    self._sending_head = spool
                    moved += len(sending)
                    moved_bytes += sum(sizes[start : self._in_flight_spooled])
            # (These stay in memory too, held by the running flush until its send ends: no bytes are freed.)
            while outcome <= _DROPPED and moved < budget and moved_bytes < byte_budget:
                count, size = self._record(sizes, self._in_flight_spooled, True)
                if not count:
                    break
                outcome = self._push(spool, taken[self._in_flight_spooled : self._in_flight_spooled + count])
                if outcome <= _DROPPED:
                    self._in_flight_spooled += count
                    moved += count
                    moved_bytes += size
        pending, sizes = self._pending, self._pending_sizes
        done = done_bytes = 0
        try:
            while (
                outcome <= _DROPPED
                and moved < budget
                and moved_bytes < byte_budget
                and (not taken or self._in_flight_spooled >= len(taken))
            ):
                count, size = self._record(sizes, done, tail)
                if not count:
                    break
                outcome = self._push(spool, pending[done : done + count])
                if outcome <= _DROPPED:
                    done += count
                    done_bytes += size
                    moved += count
                    moved_bytes += size
        finally:
            del pending[:done]
            del sizes[:done]
            self._held_bytes -= done_bytes
        if outcome == _UNWRITABLE:
            self._hold_in_memory()
            return False
        if outcome == _FULL:
            if self.spool_config.when_full == "backpressure":
                self.accepting = False
            self._trim_memory()
            return False
        self._update_accepting()
        return moved > 0

    def _record(self, sizes: array[int], start: int, tail: bool) -> tuple[int, int]:
        """The events and bytes of the next record the spill writes from sizes[start:]: _spill_batch events, or fewer
        that reach _record_bytes; (0, 0) when there is no whole one yet, unless `tail` (then what there is)."""
        total = count = 0
        for size in itertools.islice(sizes, start, start + self._spill_batch):
            total += size
            count += 1
            if total >= self._record_bytes:
                return count, total
        if count == self._spill_batch or tail:
            return count, total
        return 0, 0

    def _push(self, spool: Spool, batch: list[Event], sending: bool = False) -> int:
        """Writes a batch to the spool as one record (_PUSHED). Without room, `when_full` decides: drop_oldest drops
        the oldest record of all and tries again; drop_newest drops this batch (_DROPPED, as a batch larger than the
        whole spool is); backpressure keeps it (_FULL), as it does the batch being sent (`sending`: its send decides).
        _UNWRITABLE: the write failed (the collector is then at fault, tried again later)."""
        payload = self._batch_codec.encode(batch)
        while True:
            try:
                if self._room(spool) and spool.push(payload, len(batch)):
                    self._spool_full = False
                    self._clear_fault()
                    return _PUSHED
            except OSError as exc:
                self._note_error(exc)
                self._set_fault(f"spool {spool.directory} cannot be written: {exc}")
                self._spool_retry_at = time.monotonic() + SPOOL_RETRY_INTERVAL_S
                return _UNWRITABLE
            # The oldest record of all: adopted backlogs are older than our own spool.
            oldest = next((held for held in (*self._adopted, spool) if held.records), None)
            if self.spool_config.when_full == "drop_oldest" and oldest is not None:
                self._drop_oldest(oldest)
                continue
            self._spool_full = True
            if self.spool_config.when_full == "backpressure" or sending:
                return _FULL
            self._drop(_SPOOL_FULL, len(batch))
            return _DROPPED

    def _drop_oldest(self, spool: Spool) -> None:
        """drop_oldest: discards the spool's oldest record, counted as dropped, unless it is the one being sent: that
        one counts only if its send fails (_settle_head), and must not be acknowledged when it ends."""
        events = spool.drop_oldest()
        if spool is self._sending_head:
            self._sending_head, self._sending_dropped = None, events
        else:
            self._drop(_OLDEST_DROPPED, events)

    def _room(self, spool: Spool) -> bool:
        """Sets our spool's bound to what max_bytes leaves beside the adopted backlogs (one worker's spooled bytes in
        all, however many restarts left a spool behind during an outage); whether that is anything at all."""
        spool.max_bytes = self.spool_config.max_bytes - sum(adopted.bytes for adopted in self._adopted)
        return spool.max_bytes > 0

    def _hold_in_memory(self) -> None:
        """The spool cannot take the memory batch: it stays within max_pending_events, and under `backpressure` the
        event types feeding this collector are refused (as with a full spool) until it can."""
        self._trim_memory(_SPOOL_UNWRITABLE)
        if self.spool_config.when_full == "backpressure":
            self.accepting = False

    def _set_fault(self, reason: str) -> None:
        if not self._fault:
            log.error(
                "collector %s: %s; unhealthy, events wait in memory (at most %d) until it recovers",
                self.name,
                reason,
                self.max_pending,
            )
        self._fault = reason

    def _clear_fault(self) -> None:
        if self._fault:
            log.warning("collector %s: recovered from: %s", self.name, self._fault)
            self._fault = ""
        if not self.accepting:
            self._update_accepting()

    def _update_accepting(self) -> None:
        if not self.accepting and not self._fault:
            # Hysteresis: accept again once a tenth of the spool is free, not at the first free byte. (A spool not
            # open yet holds nothing: memory took the events, and the send that made it room just succeeded.)
            held = sum(spool.bytes for spool in (*self._adopted, *([self._spool] if self._spool else [])))
            if held >= self.spool_config.max_bytes * 0.9:
                return
            # Memory too, where no spool takes its excess (a tenth below max_pending_events); where one does, the
            # spill moves it there.
            if len(self._pending) >= self.max_pending * 0.9 or self._held_bytes >= self.max_pending_bytes * 0.9:
                if not self._spool_takes():
                    return
                self._schedule_spill()
            self.accepting = True

    def _trim_memory(self, cause: str = "") -> None:
        """Memory that the spool cannot take: under backpressure the gate closes at max_pending_events or
        max_pending_bytes (the requests already past it are still recorded, up to memory_cap and memory_cap_bytes);
        otherwise the newest beyond max_pending_events, or beyond max_pending_bytes with the running flush's events,
        are dropped and counted."""
        held = len(self._pending)
        limit, byte_limit = self.max_pending, self.max_pending_bytes
        if self.spool_config.when_full == "backpressure":
            if held >= limit or self._held_bytes >= byte_limit:
                self.accepting = False
            limit, byte_limit = self.memory_cap, self.memory_cap_bytes
        sizes = self._pending_sizes
        keep = min(held, limit)
        dropped_bytes = sum(sizes[keep:])
        while keep and self._held_bytes - dropped_bytes > byte_limit:  # newest first, as a full spool drops them
            keep -= 1
            dropped_bytes += sizes[keep]
        if keep < held:
            del self._pending[keep:]
            del sizes[keep:]
            self._held_bytes -= dropped_bytes
            self._drop(cause or self._memory_full(), held - keep)

    def _memory_full(self) -> str:
        """The cause of a drop from a full memory batch: where the events would have gone otherwise."""
        if not self.spool_config.enabled:
            return _SPOOL_OFF
        if not self._spool_writable():
            return _SPOOL_UNWRITABLE
        return _SPOOL_FULL if self._spool_full else _MEMORY_FULL

    def _dead_letter(self, batch: list[Event]) -> None:
        """Batches the target refuses for good are kept as JSON lines for inspection and `trackpoint replay`."""
        self._drop("refused by the target", len(batch))
        directory = Path(self.context.data_dir) / "deadletter" / self.name
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"w{self.context.worker:02d}-p{os.getpid()}.jsonl"
            with path.open("ab") as file:
                file.write(msgspec.json.Encoder().encode_lines(batch))
        except OSError as exc:
            self._note_error(exc)
        log.error("collector %s: target refused %d events; kept in %s", self.name, len(batch), directory)

    def _drop(self, cause: str, events: int) -> None:
        self.stats.dropped += events
        self._drops[cause] = self._drops.get(cause, 0) + events

    def _warn_drops(self) -> None:
        """A warning with the events dropped since the last one, by cause, at most once per DROP_LOG_INTERVAL_S."""
        now = time.monotonic()
        if now - self._last_drop_log < DROP_LOG_INTERVAL_S:
            return
        causes = {cause: count - self._drops_logged.get(cause, 0) for cause, count in self._drops.items()}
        # What offer() dropped is the rest: the memory batch was full (max_pending_events) when the event came.
        offered = self.stats.dropped - self._dropped_logged - sum(causes.values())
        if offered:
            memory = self._memory_full()
            causes[memory] = causes.get(memory, 0) + offered
        log.warning(
            "collector %s dropped %d events since its last warning (%s); %d since start (counted in "
            "trackpoint_collector_dropped_total; warned at most every %.0f s)",
            self.name,
            self.stats.dropped - self._dropped_logged,
            ", ".join(f"{cause}: {count}" for cause, count in causes.items() if count),
            self.stats.dropped,
            DROP_LOG_INTERVAL_S,
        )
        self._last_drop_log = now
        self._dropped_logged = self.stats.dropped
        self._drops_logged = dict(self._drops)

    def _note_error(self, exc: BaseException | str) -> None:
        """Counted always; logged the first time of its kind, then at most once per ERROR_LOG_INTERVAL_S. The kind
        of an exception is its type (its text may hold anything, an event id); of our own texts, the text."""
        self.stats.errors += 1
        if isinstance(exc, str):
            self._error_log.log(log, logging.ERROR, kind_of_text(exc), "collector %s: %s", self.name, exc)
        else:
            self._error_log.log(log, logging.ERROR, type(exc).__name__, "collector %s: %r", self.name, exc)

    def _health_detail(self) -> str:
        try:
            return self.health().detail
        except Exception:  # a plugin's health() must not break delivery
            return ""

    def snapshot(self) -> CollectorStats:
        """The counters and gauges reported to the supervisor (summed over workers in /metrics)."""
        # In memory and not delivered: the batch waiting, and what a running send took from it (less what the spill
        # moved to the spool meanwhile): both are lost with the process.
        taken = self._in_flight
        in_flight = len(taken) - (self._in_flight_spooled or self._in_flight_start) if taken else 0
        self.stats.pending = len(self._pending) + in_flight
        self.stats.memory_bytes = self._held_bytes
        spools = [*self._adopted, *([self._spool] if self._spool else [])]
        self.stats.spooled_bytes = sum(spool.bytes for spool in spools)
        self.stats.spooled_events = sum(spool.events for spool in spools)
        try:
            health = self.health()
        except Exception as exc:
            self._note_error(exc)
            health = Health(healthy=False, detail=f"health() failed: {exc!r}")
        problems = [] if health.healthy else [health.detail or "unhealthy"]
        if self._start_failure:
            problems.append(f"not started: {self._start_failure}")
        if self._send_failure:
            problems.append(self._send_failure)
        now = time.monotonic()
        # A target that takes the connection but does not answer holds the send until its timeout, meanwhile
        # unanswered by anything that health() could read: how long the send has run is what tells.
        in_flight_s = now - self._send_began
        if self._send_began and self.send_stall_s and in_flight_s >= self.send_stall_s:
            problems.append(
                f"send in flight for {in_flight_s:.0f} s (over send_stall_s {self.send_stall_s:g} s): the target "
                "does not answer"
            )
        stuck_s = now - self._stray_since
        if self._stray and stuck_s >= STUCK_AFTER_S:
            problems.append(
                f"a call abandoned {stuck_s:.0f} s ago after its timeout is still running (it ignored its "
                "cancellation): no send is made until it ends"
            )
        problems += [problem for problem in (self._fault, self._spool_missing, self.commit_problem) if problem]
        self.stats.healthy = not problems
        self.stats.problem = "; ".join(problems)
        self.stats.accepting = self.accepting
        if self.stats.sent != self._sent_seen:  # read once a second: no clock on the delivery path
            self._sent_seen = self.stats.sent
            self.stats.last_success_s = time.time()
        try:
            self.stats.outcomes = self.outcomes()
            self.stats.levels = self.levels()
        except Exception as exc:
            self._note_error(exc)
        return msgspec.structs.replace(self.stats)


async def close_all(collectors: Sequence[Collector], drain_timeout_s: float) -> None:
    """Closes the collectors at once, each within drain_timeout_s: N collectors with a target down take one drain
    timeout, not N. A close() that raised is logged, and the others close all the same; one still running
    CLOSE_GRACE_S after the drain timeout (a plugin's that hangs) is cancelled and abandoned, not waited for."""
    loop = asyncio.get_running_loop()
    closing = {
        loop.create_task(collector.close(drain_timeout_s), name=f"close-{collector.name}"): collector
        for collector in collectors
    }
    if not closing:
        return
    await asyncio.wait(closing, timeout=drain_timeout_s + CLOSE_GRACE_S)
    for task, collector in closing.items():
        if not task.done():
            log.error(
                "collector %s: close() has not returned %g s after the drain timeout; abandoned",
                collector.name,
                CLOSE_GRACE_S,
            )
            collector._abandon(task)
        elif not task.cancelled() and task.exception() is not None:
            log.error("collector %s: close failed: %r", collector.name, task.exception())
