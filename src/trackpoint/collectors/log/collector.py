"""log: the durable record. JSON lines, one file per worker (no cross-process locks), rotated by size and time.

Rotated files are gzipped in a thread; names sort by creation time and are unique across workers and restarts:
`events-<UTC time>-w<slot>-p<pid>-<seq>.jsonl[.gz]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.config.model import LogCollectorConfig
from trackpoint.pipeline.event import Event

ACTIVE_SUFFIX = ".jsonl"
ROTATED_SUFFIX = ".jsonl.gz"
# The names _open gives, with the parts that tools read from them (the shipper: the day, the writing pid, the order).
FILE_NAME = re.compile(
    r"events-(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})T\d{9}Z-w\d+-p(?P<pid>\d+)-(?P<seq>\d+)"
    + re.escape(ACTIVE_SUFFIX)
    + r"(?P<gz>\.gz)?"
)
assert ROTATED_SUFFIX == ACTIVE_SUFFIX + ".gz"  # FILE_NAME's `gz` group


def log_dir(data_dir: str, config: LogCollectorConfig) -> Path:
    return Path(data_dir) / config.dir


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
        # Compression is background work: at the lowest CPU priority it takes only what serving leaves over.
        self._compressor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"gzip-{name}", initializer=_lowest_priority
        )
        self._background: set[asyncio.Future[None]] = set()
        self._error: str = ""

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        await super().start()

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
        await self._rotate(reopen=False)
        if self._background:
            await asyncio.wait(self._background, timeout=drain_timeout_s)
        self._io.shutdown(wait=True)
        self._compressor.shutdown(wait=True)

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
            if path is not None and self._size == 0:
                path.unlink(missing_ok=True)
            elif path is not None and self.config.gzip:
                future = loop.run_in_executor(self._compressor, compress, path)
                self._background.add(future)
                future.add_done_callback(self._compressed)
        if reopen:
            self._open()

    def _compressed(self, future: asyncio.Future[None]) -> None:
        """A failed compression leaves the plain file in place (nothing is lost); it is counted and logged."""
        self._background.discard(future)
        if not future.cancelled() and (exc := future.exception()) is not None:
            self._note_error(exc)

    def _open(self) -> None:
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
        name = f"events-{stamp}Z-w{self.worker:02d}-p{os.getpid()}-{self._seq:04d}{ACTIVE_SUFFIX}"
        self._path = self.directory / name
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._opened_at = time.monotonic()
        self._size = 0
        self._unsynced = False


def _lowest_priority() -> None:
    """Nice 19 for the calling thread only (Linux applies setpriority to a thread id)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _close(fd: int, sync: bool) -> None:
    if sync:
        os.fsync(fd)
    os.close(fd)


def compress(path: Path) -> None:
    """Gzips a closed log file durably: write to a temporary name, fsync, rename, then remove the original."""
    target = path.with_name(path.name[: -len(ACTIVE_SUFFIX)] + ROTATED_SUFFIX)
    temporary = target.with_name(target.name + ".tmp")
    with path.open("rb") as source, gzip.open(temporary, "wb", compresslevel=6) as sink:
        shutil.copyfileobj(source, sink, 1 << 20)
    with temporary.open("rb") as written:
        os.fsync(written.fileno())
    temporary.rename(target)
    path.unlink()


def finalize_orphans(directory: Path, pid: int | None = None) -> list[Path]:
    """Compresses active files left by dead workers (all of them, or those of one pid); returns the new files.

    A file cut short by a crash keeps its torn last line: readers skip and count it.
    """
    if not directory.is_dir():
        return []
    done = []
    for path in sorted(directory.glob(f"events-*{ACTIVE_SUFFIX}")):
        if pid is not None and f"-p{pid}-" not in path.name:
            continue
        if path.stat().st_size == 0:
            path.unlink()
            continue
        compress(path)
        done.append(path.with_name(path.name[: -len(ACTIVE_SUFFIX)] + ROTATED_SUFFIX))
    for stale in directory.glob(f"events-*{ROTATED_SUFFIX}.tmp"):
        if pid is None or f"-p{pid}-" in stale.name:  # a live worker's compression in progress stays
            stale.unlink()
    return done
