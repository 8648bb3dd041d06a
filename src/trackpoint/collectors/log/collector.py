"""log: the durable record. JSON lines, one file per worker (no cross-process locks), rotated by size and time.

Rotated files are compressed in a thread (compression.py) and the directory is kept within its disk budget
(budget.py); names are described in files.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.collectors.log.budget import CHECK_INTERVAL_S, DiskBudget, DiskUsage
from trackpoint.collectors.log.compression import compress, lower_priority
from trackpoint.collectors.log.files import file_name, log_dir
from trackpoint.config.model import LogCollectorConfig
from trackpoint.pipeline.event import Event


class LogCollector(Collector):
    """Appends batches to the worker's current file; rotation closes it and compresses it off the event loop."""

    def __init__(self, name: str, config: LogCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        self.directory = log_dir(context.data_dir, config)
        self.worker = context.worker
        self._encoder = msgspec.json.Encoder()
        self._fd: int | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._seq = 0
        self._unsynced = False
        self._last_fsync = 0.0
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"log-{name}")  # fsync and close
        # Compression is background work at a lower priority, yet one that keeps up (see COMPRESSION_NICE).
        self._compressor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"compress-{name}", initializer=lower_priority
        )
        self._background: set[asyncio.Future[Path]] = set()
        self._error: str = ""
        # The disk budget: checked in its own thread, so a slow directory scan never delays an fsync.
        self.budget = DiskBudget(name, self.directory, config)
        self._budget_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"budget-{name}")
        self._budget_task: asyncio.Task[None] | None = None
        self._budget_check: asyncio.Future[DiskUsage] | None = None
        self._rotated_bytes = 0  # bytes of this worker's closed files: with _size, all it wrote
        self._written_at_check = 0

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await super().start()
        if self.budget.enabled:
            self._budget_task = asyncio.get_running_loop().create_task(self._budget_loop(), name=f"budget-{self.name}")

    async def send(self, batch: Sequence[Event]) -> SendResult:
        payload = self._encoder.encode_lines(batch)
        try:
            if self._fd is None or self._due_for_rotation(len(payload)):
                await self._rotate()
            self._write(payload)
        except OSError as exc:
            self._error = f"{exc.strerror or exc}"
            raise
        self._error = ""
        await self._sync_per_policy()
        return SendResult.DELIVERED

    def health(self) -> Health:
        return Health(healthy=not self._error, detail=self._error)

    async def close(self, drain_timeout_s: float) -> None:
        await super().close(drain_timeout_s)
        if self._budget_task is not None:
            self._budget_task.cancel()
        await self._rotate(reopen=False)
        if self._background:
            await asyncio.wait(self._background, timeout=drain_timeout_s)
        self._io.shutdown(wait=True)
        self._compressor.shutdown(wait=True)
        self._budget_thread.shutdown(wait=True)

    # --- the disk budget -------------------------------------------------------------------------------------------

    def disk_allows(self) -> bool:
        """Whether the disk budget lets this worker write more (O(1), for the request path): under the budget at the
        last check, counting what this worker wrote since. False: the edge answers 503 log_disk_full."""
        return self.budget.allows(self._rotated_bytes + self._size - self._written_at_check)

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

    # --- files ---------------------------------------------------------------------------------------------------

    def _due_for_rotation(self, incoming: int) -> bool:
        too_big = self._size > 0 and self._size + incoming > self.config.rotate_bytes
        return too_big or time.monotonic() - self._opened_at >= self.config.rotate_interval_s

    def _write(self, payload: bytes) -> None:
        assert self._fd is not None
        view = memoryview(payload)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(payload)
        self._unsynced = True

    async def _sync_per_policy(self) -> None:
        policy = self.config.fsync
        if policy == "none" or self._fd is None:
            return
        now = time.monotonic()
        if policy == "always" or now - self._last_fsync >= self.config.fsync_interval_s:
            self._last_fsync = now
            self._unsynced = False
            await asyncio.get_running_loop().run_in_executor(self._io, os.fsync, self._fd)

    async def _rotate(self, reopen: bool = True) -> None:
        """Closes the current file (fsynced unless the policy is none) and starts compressing it; opens the next."""
        loop = asyncio.get_running_loop()
        if self._fd is not None:
            fd, path = self._fd, self._path
            self._fd = self._path = None
            sync = self.config.fsync != "none" and self._unsynced
            await loop.run_in_executor(self._io, _close, fd, sync)
            closed_size, self._size = self._size, 0
            self._rotated_bytes += closed_size
            if path is not None and closed_size == 0:
                path.unlink(missing_ok=True)
            elif path is not None and self.config.compression != "none":
                codec, level = self.config.compression, self.config.compression_level
                future = loop.run_in_executor(self._compressor, compress, path, codec, level)
                self._background.add(future)
                future.add_done_callback(self._compressed)
            self._check_budget()
        if reopen:
            self._open()

    def _compressed(self, future: asyncio.Future[Path]) -> None:
        """A failed compression leaves the plain file in place (nothing is lost); it is counted and logged. A done
        one changed the directory's size: the budget looks again."""
        self._background.discard(future)
        if not future.cancelled() and (exc := future.exception()) is not None:
            self._note_error(exc)
        self._check_budget()

    def _open(self) -> None:
        self._seq += 1
        self._path = self.directory / file_name(self.worker, self._seq)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._opened_at = time.monotonic()
        self._size = 0
        self._unsynced = False


def _close(fd: int, sync: bool) -> None:
    if sync:
        os.fsync(fd)
    os.close(fd)
