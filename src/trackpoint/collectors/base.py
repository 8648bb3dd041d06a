"""The collector contract and the delivery every collector shares: batching, retries, the spool, counters.

start, send(batch) -> delivered / retry / rejected, health, close(drain timeout); offer() is the only member the
request path calls, and it never does I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from trackpoint.collectors.spool import Recovery, Spool, SpoolLocked, orphans
from trackpoint.config.model import CollectorBase
from trackpoint.data_dir import passing
from trackpoint.event import Event
from trackpoint.log_limiter import LogLimiter, kind_of_text
from trackpoint.privacy.filter import build_filter

log = logging.getLogger("trackpoint.collectors")

# How often a collector looks for spools of workers that are gone.
ORPHAN_SCAN_INTERVAL_S = 10.0
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

T = TypeVar("T")


_MEMORY_FULL = "memory batch full"
_SPOOL_OFF = "memory batch full, spool off"
_SPOOL_UNWRITABLE = "memory batch full, spool unwritable"


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
    corrupt spool tail, found on recovery (their events cannot be counted). pending, spooled_*, spool_max_bytes,
    healthy, accepting and problem (why it is unhealthy, for /readyz) are gauges; last_success_s is when `sent` last
    grew (Unix seconds, as of a snapshot; 0: not since start)."""

    received: int = 0
    sent: int = 0
    retried: int = 0
    dropped: int = 0
    errors: int = 0
    spool_lost_records: int = 0
    pending: int = 0
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


# The fields of CollectorStats that are levels of one running process, not totals: what a worker that exited (or was
# replaced) no longer holds. Its counters keep counting in the totals (Prometheus must see no reset); these do not.
# A new field is either a counter or listed here (tests/test_stats.py checks every field is one or the other).
COLLECTOR_GAUGES: Final = (
    "pending",
    "spooled_bytes",
    "spooled_events",
    "spool_max_bytes",
    "healthy",
    "accepting",
    "problem",
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
        self.batch_max = config.batch_max_events
        self.flush_interval_s = config.flush_interval_ms / 1000
        self.send_timeout_s = config.send_timeout_s
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
        self._spool: Spool | None = None  # None: the spool is off, or could not be opened yet (_spool_missing)
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
        """Appends to the batch; beyond the bound the event is dropped and counted. Never blocks, never raises."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            self.stats.dropped += 1
            return
        if self.privacy_filter is not None:  # untrusted or with field lists: a filtered copy of its own
            try:
                event = self.privacy_filter(event)
            except Exception as exc:  # a malformed event (the edge lets none through): lost to this collector only
                self.stats.dropped += 1
                self._note_error(exc)
                return
        pending.append(event)
        self.stats.received += 1
        if len(pending) == self.batch_max:
            self._wake.set()

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
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop(), name=f"flush-{self.name}")

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

    async def close(self, drain_timeout_s: float) -> None:
        """Stops the flush loop and delivers what is pending within the drain timeout; what cannot be delivered
        in time goes to the spool, where the next worker finds it."""
        self._closing = True
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
        # are kept, ahead of the newer ones.
        self._pending[:0] = self._in_flight[self._in_flight_start :]
        self._in_flight = []
        if self._pending and self._spool_missing:
            self._spool_open_at = 0.0  # a last attempt, for the next worker to find them
            self._open_spool()
        if self._pending and self._spool is not None:
            self._spill()
        if self._pending:
            log.error("collector %s: %d events undelivered at shutdown", self.name, len(self._pending))
            self.stats.dropped += len(self._pending)
            self._pending = []
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
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
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
            self._pending[:0] = self._in_flight[self._in_flight_start :]
            self._in_flight = []
            self.stats.errors += 1
            if not self._fault:  # its traceback once, not at every retry
                log.exception("collector %s: flush failed", self.name)
            self._set_fault(f"delivery failed: {exc!r}")
            self._retry_at = time.monotonic() + self.retry_initial_s

    async def flush(self) -> None:
        """Delivers the spooled backlog, oldest first, then the memory batch. While the target is failing (in
        backoff), events move from memory to the spool so that memory stays small and order is kept."""
        if self._spool_missing and time.monotonic() >= self._spool_open_at:
            self._open_spool()
        if self.spool_config.enabled and time.monotonic() >= self._next_orphan_scan:
            self._adopt_orphans()
        if self._start_failure:  # nothing can be sent: events wait as during an outage while start is retried
            if self._starting is None and not self._closing and time.monotonic() >= self._start_at:
                self._starting = asyncio.get_running_loop().create_task(self._restart(), name=f"start-{self.name}")
            if self.spool_config.enabled:
                self._spill()
            return
        if time.monotonic() < self._retry_at:
            if self.spool_config.enabled:
                self._spill()
            return
        if not await self._drain_spools():
            return
        while self._pending:
            # Take the whole list (new events start a fresh one) and send it in slices: no front deletions, which
            # would move the rest of a long backlog once per batch.
            taken, self._pending = self._pending, []
            self._in_flight = taken
            for start in range(0, len(taken), self.batch_max):
                self._in_flight_start = start
                if not await self.deliver(taken[start : start + self.batch_max]):
                    self._in_flight = []
                    self._pending[:0] = taken[start:]
                    if self.spool_config.enabled:
                        self._spill()
                    else:
                        self._trim_memory()
                    return
            self._in_flight = []

    # --- the spool -----------------------------------------------------------------------------------------------

    def _spool_parent(self) -> Path:
        return Path(self.context.data_dir) / "spool" / self.name

    def _spool_directory(self) -> Path:
        return self._spool_parent() / f"w{self.context.worker:02d}-p{os.getpid()}"

    def _open_spool(self, at_start: bool = False) -> None:
        """Opens this worker's spool. One that cannot be opened because of the disk (full, failing: data_dir's
        `passing` errors; any error after start) leaves the collector running without it, unhealthy, its events
        waiting in memory within max_pending_events (the `when_full` policy applies as to a spool that cannot be
        written), and is tried again from the flush loop after SPOOL_OPEN_RETRY_S. Any other error at start (a
        path that is a file, a permission) is raised: the worker reports it in one line."""
        directory = self._spool_directory()
        spool = self._new_spool(directory)
        try:
            recovery = spool.open()
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
        if self._spool is None or not self._spool.records:
            return True
        return await self._drain(self._spool)

    async def _drain(self, spool: Spool) -> bool:
        while True:
            if spool is self._spool:
                # Newer events queue behind the backlog, not in memory. Before the peek: under drop_oldest the spill
                # may drop the oldest record, which must then not be the one sent (and the next, unsent, popped).
                self._spill()
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
            if not await self.deliver(batch):
                return False
            spool.pop()
            self._update_accepting()

    def _spill(self) -> None:
        """Moves the memory batch into the spool, in batch-sized records; the `when_full` policy decides what
        happens when the spool has no room. A spool that cannot be written (its disk full, an I/O error) leaves the
        events in memory, bounded by max_pending_events, and is tried again SPOOL_RETRY_INTERVAL_S later; so does
        one that could not be opened yet (flush() tries that)."""
        spool = self._spool
        if spool is None:
            self._hold_in_memory()
            return
        if self._fault and time.monotonic() < self._spool_retry_at:
            self._hold_in_memory()
            return
        while self._pending:
            batch = self._pending[: self.batch_max]
            payload = self._batch_codec.encode(batch)
            while True:
                try:
                    if self._room(spool) and spool.push(payload, len(batch)):
                        self._clear_fault()
                        break
                except OSError as exc:
                    self._note_error(exc)
                    self._set_fault(f"spool {spool.directory} cannot be written: {exc}")
                    self._spool_retry_at = time.monotonic() + SPOOL_RETRY_INTERVAL_S
                    self._hold_in_memory()
                    return
                policy = self.spool_config.when_full
                # The oldest record of all: adopted backlogs are older than our own spool.
                oldest = next((held for held in (*self._adopted, spool) if held.records), None)
                if policy == "drop_oldest" and oldest is not None:
                    self._drop("spool full, oldest dropped", oldest.drop_oldest())
                    continue
                if policy == "backpressure":
                    self.accepting = False
                    self._trim_memory()
                    return
                self._drop("spool full", len(batch))  # drop_newest, or a batch larger than the whole spool
                break
            del self._pending[: len(batch)]
        self._update_accepting()

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
            self.accepting = held < self.spool_config.max_bytes * 0.9

    def _trim_memory(self, cause: str = "") -> None:
        excess = len(self._pending) - self.max_pending
        if excess > 0:
            del self._pending[self.max_pending :]
            self._drop(cause or self._memory_full(), excess)

    def _memory_full(self) -> str:
        """The cause of a drop from a full memory batch: where the events would have gone otherwise."""
        if not self.spool_config.enabled:
            return _SPOOL_OFF
        return _MEMORY_FULL if self._spool is not None else _SPOOL_UNWRITABLE

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
        self.stats.pending = len(self._pending)
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
        stuck_s = time.monotonic() - self._stray_since
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
