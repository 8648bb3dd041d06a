"""log: the durable record. JSON lines, one file per worker (no cross-process locks), rotated by size and time.

The edge writes each event-loop iteration's lines before that iteration's answers (commit). Rotated files are
compressed in a thread (compression.py) and the directory is kept within its disk budget (budget.py); names are
described in files.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, final

import msgspec

from trackpoint.collectors.base import Collector, CollectorContext, CollectorStats, Health, SendResult
from trackpoint.collectors.log.budget import CHECK_INTERVAL_S, DiskBudget, DiskUsage
from trackpoint.collectors.log.compression import compress, lower_priority
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.files import file_name, log_dir
from trackpoint.data_dir import DISK_FULL, passing
from trackpoint.event import Event
from trackpoint.privacy.filter import PrivacyFilter

# After a failed write, how long the log stays unready before it looks whether it can write again.
ERROR_HOLD_S: Final = 1.0
# The free space a failed log waits for before it is ready again.
MIN_FREE_BYTES: Final = 1 << 20
# Waits before each new attempt at a compression that failed (a full disk that is freed later): the last one repeats.
COMPRESS_RETRY_S: Final[tuple[float, ...]] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_monotonic: Final = time.monotonic
_write: Final = os.write

log = logging.getLogger("trackpoint.collectors")


@final
class Group:
    """What the request path touches of a log, once per event (offer) and once per event-loop iteration (commit):
    compiled, a class of this module keeps its fields in slots, where the collector's own attributes are dictionary
    entries (its base class is not compiled) and its counters a msgspec Struct's (generic getattr and setattr). The
    lines written since the last snapshot are counted here and added to the stats then."""

    def __init__(self, privacy_filter: PrivacyFilter | None) -> None:
        self.events: list[Event] = []
        self.encoder = msgspec.json.Encoder()
        self.privacy_filter = privacy_filter
        self.written = 0


class LogCollector(Collector):
    """The record every acknowledgement promises. The edge offers each recorded event during an event-loop iteration
    and calls commit() once per iteration, before any response of that iteration is written: one write() of all the
    iteration's lines into the page cache (a group commit). Rotation swaps files synchronously and closes, fsyncs and
    compresses the finished file off the event loop."""

    durable = True

    def __init__(self, name: str, config: LogCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        self.directory = log_dir(context.data_dir, config)
        self.worker = context.worker
        self.sync_before_answer = config.durability == "power"
        self._group = Group(self.privacy_filter)
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._seq = 0
        self._unsynced = False
        self._last_fsync = 0.0
        # One thread, first in first out: a power-durability fsync queued after a rotation's close-and-fsync of the
        # previous file completes after it, so a group that spans a rotation is on disk whole when its sync is done.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"log-{name}")
        # Compression is background work at a lower priority, yet one that keeps up (see COMPRESSION_NICE).
        self._compressor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"compress-{name}", initializer=lower_priority
        )
        self._background: set[asyncio.Future[Any]] = set()  # closes (None) and compressions (the new Path)
        self._compress_retries: dict[Path, asyncio.TimerHandle] = {}  # failed compressions waiting to be tried again
        # The disk budget: checked in its own thread, so a slow directory scan never delays an fsync.
        self.budget = DiskBudget(name, self.directory, config, data_dir=context.data_dir)
        # Read by every group's write, so kept here as plain values: the config and the budget are interpreted
        # objects (an attribute of theirs is a dictionary lookup, and `enabled` a property), this class is compiled.
        self._budgeted = self.budget.enabled
        self._rotate_bytes = config.rotate_bytes
        self._rotate_interval_s = config.rotate_interval_s
        self._budget_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"budget-{name}")
        self._budget_task: asyncio.Task[None] | None = None
        self._budget_check: asyncio.Future[DiskUsage] | None = None
        self._rotated_bytes = 0  # bytes of this worker's closed files: with _size, all it wrote
        self._written_at_check = 0
        self._maintenance: asyncio.Task[None] | None = None
        self._error = ""
        self._error_at = 0.0
        # The reject reason of the requests whose lines could not be written (read by the edge after a failure).
        self.failure_reason = "log_unavailable"

    async def start(self) -> None:
        """Opens the first file. A disk that cannot take it now (full, failing: data_dir's `passing`) does not stop the
        worker: the log starts unwritable, its event types answer 503 (log_disk_full) and /readyz fails, and it
        opens its file once there is room (the next request's write, or _recover without traffic). Any other error
        (the directory is a file, a permission) is raised: the worker reports it in one line."""
        try:
            self._open()
        except OSError as exc:
            if not passing(exc):
                raise
            self._failed(exc)
        loop = asyncio.get_running_loop()
        self._maintenance = loop.create_task(self._maintain(), name=f"log-{self.name}")
        if self.budget.enabled:
            self._budget_task = loop.create_task(self._budget_loop(), name=f"budget-{self.name}")

    # --- the request path ----------------------------------------------------------------------------------------

    def offer(self, event: Event) -> None:
        """Adds the event to this iteration's group; commit() writes the group before the iteration's responses."""
        group = self._group
        if group.privacy_filter is not None:  # a log configured as untrusted gets the filtered copy
            event = group.privacy_filter(event)
        group.events.append(event)

    def commit(self) -> bool:
        """Writes the iteration's group with one write(). False: nothing of it may be acknowledged (the lines that
        reached the file before a failure are cut off again); `failure_reason` says why."""
        group = self._group
        events = group.events
        if not events:
            return True
        group.events = []
        try:
            self._append(group.encoder.encode_lines(events))
        except OSError as exc:
            self._failed(exc)
            self.stats.errors += 1
            self.stats.dropped += len(events)
            return False
        group.written += len(events)
        return True

    def snapshot(self) -> CollectorStats:
        """The counters, with the lines commit() wrote since the last snapshot added (received and delivered)."""
        group, stats = self._group, self.stats
        if group.written:
            stats.received += group.written
            stats.sent += group.written
            group.written = 0
        return super().snapshot()

    async def sync(self) -> None:
        """fsync of everything written so far, off the event loop (durability power). Always a job on the I/O
        thread, even with nothing new in the current file: it then waits for the close-and-fsync of a file that a
        rotation finished (queued before it), where the group may have been written."""
        fd = self._fd if self._unsynced else None
        self._unsynced = False
        self._last_fsync = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(self._io, _fsync, fd)

    # --- the collector contract (replay, and events offered outside a request) ----------------------------------

    async def send(self, batch: Sequence[Event]) -> SendResult:
        self._append(self._group.encoder.encode_lines(batch))
        if self.sync_before_answer:
            await self.sync()
        return SendResult.DELIVERED

    async def flush(self) -> None:
        """What was offered outside a request (the edge commits its own once per iteration)."""
        self.commit()

    def health(self) -> Health:
        return Health(healthy=not self._error, detail=self._error)

    async def close(self, drain_timeout_s: float) -> None:
        self._closing = True
        for task in (self._maintenance, self._budget_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not self.commit():
            log.error("collector %s: %d events could not be written at shutdown", self.name, len(self._group.events))
        # Compressions waiting for a retry: the supervisor compresses what is left once this worker has exited.
        for retry in self._compress_retries.values():
            retry.cancel()
        self._compress_retries.clear()
        self._finish_current()
        if self._background:
            await asyncio.wait(self._background, timeout=drain_timeout_s)
        self._io.shutdown(wait=True)
        self._compressor.shutdown(wait=True)
        self._budget_thread.shutdown(wait=True)

    async def _maintain(self) -> None:
        """Once per flush interval: lines offered outside a request, rotation of an idle file by age, the fsync
        policy, and whether a failed log can write again (so /readyz recovers without traffic)."""
        while True:
            await asyncio.sleep(self.flush_interval_s)
            await self.flush()
            now = time.monotonic()
            if self._fd is not None and self._size and now - self._opened_at >= self.config.rotate_interval_s:
                with contextlib.suppress(OSError):
                    self._rotate()
            interval = self.config.fsync == "interval" and not self.sync_before_answer
            if interval and self._unsynced and now - self._last_fsync >= self.config.fsync_interval_s:
                with contextlib.suppress(OSError):
                    await self.sync()
            if self._error and time.monotonic() - self._error_at >= ERROR_HOLD_S:
                self._recover()

    # --- files ---------------------------------------------------------------------------------------------------

    def _append(self, payload: bytes) -> None:
        """One write of whole lines. On a failure the file is cut back to its last whole line, so that the next
        group does not continue a torn one."""
        size = len(payload)
        fd = self._fd
        if fd is None or self._due_for_rotation(size):
            self._rotate()
            fd = self._fd
        if self._budgeted and not self.disk_allows(size):
            raise OSError(errno.ENOSPC, f"the log directory is at its disk budget ({self.config.max_disk_bytes} bytes)")
        assert fd is not None
        written = 0
        try:
            while written < size:
                written += _write(fd, payload[written:] if written else payload)
        except OSError:
            if written:
                try:
                    os.ftruncate(fd, self._size)
                except OSError:
                    self._size += written  # the torn part stays; readers skip and count it
                    os.write(fd, b"\n")
            raise
        self._size += written
        self._unsynced = True
        if self._error:
            self._error = ""

    def _failed(self, exc: OSError) -> None:
        first = not self._error
        self.failure_reason = "log_disk_full" if exc.errno in DISK_FULL else "log_unavailable"
        self._error = f"cannot write the log in {self.directory}: {exc.strerror or exc}"
        self._error_at = time.monotonic()
        if first:
            log.error("collector %s: %s; its event types answer 503", self.name, self._error)

    def _recover(self) -> None:
        """After ERROR_HOLD_S without a successful write, ready again when the budget and the disk have room (1 MiB
        free) and its file is open (made now if the disk could not take it before): new requests then try, and a
        failure holds readiness off again."""
        if self.budget.enabled and not self.disk_allows():
            return
        try:
            if self._fd is None:
                self._open()
            stat = os.statvfs(self.directory)
        except OSError:
            return
        if stat.f_bavail * stat.f_frsize >= MIN_FREE_BYTES:
            self._error = ""

    def _due_for_rotation(self, incoming: int) -> bool:
        size = self._size
        too_big = size > 0 and size + incoming > self._rotate_bytes
        return too_big or _monotonic() - self._opened_at >= self._rotate_interval_s

    def _rotate(self) -> None:
        """Opens the next file and hands the finished one to the I/O thread (close, fsync unless the policy is
        none) and then to compression."""
        self._finish_current()
        self._open()

    def _finish_current(self) -> None:
        fd, path = self._fd, self._path
        if fd is None or path is None:
            return
        self._fd = self._path = None
        empty = self._size == 0
        self._rotated_bytes += self._size
        self._size = 0
        sync = (self.config.fsync != "none" or self.sync_before_answer) and self._unsynced
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._io, _close, fd, sync, path if empty else None)
        self._background.add(future)
        future.add_done_callback(lambda done: self._closed_file(done, None if empty else path))

    def _closed_file(self, future: asyncio.Future[None], path: Path | None) -> None:
        self._background.discard(future)
        if not future.cancelled() and (exc := future.exception()) is not None:
            self._note_error(exc)
        if path is not None and self.config.compression != "none":
            self._compress(path, 0)
        self._check_budget()

    def _compress(self, path: Path, failures: int) -> None:
        self._compress_retries.pop(path, None)
        if self._closing and failures:  # a retry that fired as close() began: left to the supervisor
            return
        codec, level = self.config.compression, self.config.compression_level
        compressing = asyncio.get_running_loop().run_in_executor(self._compressor, compress, path, codec, level)
        self._background.add(compressing)
        compressing.add_done_callback(lambda done: self._compressed(done, path, failures))

    def _compressed(self, future: asyncio.Future[Path], path: Path, failures: int) -> None:
        """A failed compression leaves the plain file in place (nothing is lost; compress() removed its temporary);
        it is counted, logged, and tried again with backoff (COMPRESS_RETRY_S) until it succeeds, the file is gone,
        or the worker stops (the supervisor then compresses it). A done one changed the directory's size: the budget
        looks again."""
        self._background.discard(future)
        if not future.cancelled() and (exc := future.exception()) is not None:
            self._note_error(exc)
            if not isinstance(exc, FileNotFoundError) and not self._closing:
                delay = COMPRESS_RETRY_S[min(failures, len(COMPRESS_RETRY_S) - 1)]
                retry = asyncio.get_running_loop().call_later(delay, self._compress, path, failures + 1)
                self._compress_retries[path] = retry
        self._check_budget()

    # --- the disk budget -------------------------------------------------------------------------------------------

    def disk_allows(self, incoming: int = 0) -> bool:
        """Whether the disk budget lets this worker write `incoming` bytes more (O(1)): under the budget at the last
        check, counting what this worker wrote since. False: commit fails and the edge answers 503 log_disk_full."""
        return self.budget.allows(self._rotated_bytes + self._size - self._written_at_check + incoming)

    async def _budget_loop(self) -> None:
        while True:
            self._check_budget()
            await asyncio.sleep(CHECK_INTERVAL_S)

    def _check_budget(self) -> None:
        """Starts a check in the budget thread unless one is running (a rotation and the periodic check at once)."""
        if self._closing or not self.budget.enabled or (self._budget_check and not self._budget_check.done()):
            return
        written = self._rotated_bytes + self._size
        check = asyncio.get_running_loop().run_in_executor(self._budget_thread, self.budget.check)
        self._budget_check = check

        def checked(_: asyncio.Future[DiskUsage]) -> None:
            if not check.cancelled() and (exc := check.exception()) is not None:
                self._note_error(exc)
            else:
                self._written_at_check = written  # the check measured (at least) everything written before it

        check.add_done_callback(checked)

    def _open(self) -> None:
        """Opens the next file, and makes the directory first when it is not there (a full disk at start)."""
        path = self.directory / file_name(self.worker, self._seq + 1)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, flags, 0o644)
        self._seq += 1
        self._path = path
        self._opened_at = time.monotonic()
        self._size = 0
        self._unsynced = False


def _fsync(fd: int | None) -> None:
    if fd is not None:
        os.fsync(fd)


def _close(fd: int, sync: bool, remove: Path | None) -> None:
    try:
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if remove is not None:  # a file that never got a line
        remove.unlink(missing_ok=True)
