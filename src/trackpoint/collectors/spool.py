"""spool: the at-least-once disk buffer a collector writes batches to while its target is down, drained in order.

Segment files `00000001.seg`, ... of length-prefixed, checksummed records; the acknowledged position lives in `ack`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"TS"
# magic, payload length, events, crc32 of (magic, length, events) continued over the payload. The checksum covers
# the header fields too, so a flipped bit in the event count cannot pass for a valid record.
HEADER = struct.Struct("<2sIII")
CHECKED_FIELDS = struct.Struct("<2sII")
ACK = struct.Struct("<QQI")  # segment number, offset of the oldest unacknowledged record in it, crc32 of both
ACK_FIELDS = struct.Struct("<QQ")
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "lock"
ACK_NAME = "ack"
# The acknowledged position is persisted at most this often while records are acknowledged (by a pop, or by
# persist_due() from the collector's flush loop when no pop follows), by that loop as soon as the spool is drained,
# and on close: a crash re-delivers what was acknowledged since, about this much of the drain at most.
ACK_INTERVAL_S = 0.1
LOCK_ATTEMPTS = 5  # orphans() probes a lock for microseconds: an owner opening meanwhile retries instead of failing
LOCK_RETRY_S = 0.01


class SpoolLocked(Exception):
    """Another live process (or another Spool in this one) owns the directory."""


@dataclass(frozen=True)
class Recovery:
    """What open() found: valid unacknowledged records, and the torn or corrupt tails it cut off (counted)."""

    records: int
    events: int
    corrupt_bytes: int
    corrupt_records: int  # best effort: at least 1 whenever corrupt_bytes > 0


@dataclass
class _Segment:
    number: int
    path: Path
    size: int  # bytes of valid records in the file


class Spool:
    """FIFO of batches on disk, in size-bounded segment files of length-prefixed, checksummed records.

    Memory stays small whatever the spool holds: only segment names and sizes are kept; records are read on demand.
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 16 << 20, fsync: bool = False) -> None:
        if max_bytes <= HEADER.size or segment_bytes <= HEADER.size:
            raise ValueError(f"max_bytes and segment_bytes must exceed the {HEADER.size}-byte record header")
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        # A header claiming more than any record this spool could have written is garbage, not a length to read.
        self._record_limit = max(max_bytes, segment_bytes)
        self._lock_fd: int | None = None
        self._segments: deque[_Segment] = deque()
        self._head = 0  # offset of the oldest unacknowledged record in _segments[0]
        self._head_record: tuple[int, int] | None = None  # (length, events) of that record, once read
        self._writing: _Segment | None = None  # the segment pushes append to; created by this process, never reused
        self._write_fd = -1
        self._reading: _Segment | None = None
        self._read_fd = -1
        self._next_number = 1
        self._held_bytes = 0
        self._records = 0
        self._events = 0
        self._ack_dirty = False
        self._ack_at = 0.0

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def open(self) -> Recovery:
        """Locks the directory, keeps the valid prefix of each segment (cutting off and counting a torn or corrupt
        tail) and resumes after the last persisted acknowledgement."""
        if self._lock_fd is not None:
            raise RuntimeError(f"spool {self.directory} is already open")
        try:
            self._lock_fd = _lock(self.directory)
        except OSError:
            with contextlib.suppress(OSError):  # a directory just made, whose lock file could not be (a full disk)
                self.directory.rmdir()
            raise
        try:
            return self._recover()
        except BaseException:
            self._release()
            raise

    def close(self) -> None:
        """Persists the acknowledged position and releases the lock; a spool left empty removes its directory."""
        if self._lock_fd is None:
            return
        try:
            self._close_files()
            if not self._records:
                self._remove_all()
            elif self._ack_dirty:
                self._persist_ack()
        finally:
            self._release()

    # --- the queue -----------------------------------------------------------------------------------------------

    def push(self, payload: bytes, events: int) -> bool:
        """Appends one record in a single write; False, with nothing written, when it would exceed max_bytes."""
        if self._lock_fd is None:
            raise RuntimeError(f"spool {self.directory} is not open")
        size = HEADER.size + len(payload)
        if self._held_bytes + size > self.max_bytes:
            return False
        checksum = zlib.crc32(payload, zlib.crc32(CHECKED_FIELDS.pack(MAGIC, len(payload), events)))
        header = HEADER.pack(MAGIC, len(payload), events, checksum)
        segment = self._writing
        if segment is None or (segment.size and segment.size + size > self.segment_bytes):
            segment = self._roll()
        try:
            written = os.writev(self._write_fd, (header, payload))  # O_APPEND: one write, header and payload
            if written != size:
                raise OSError(errno.ENOSPC, f"short write to {segment.path}: {written} of {size} bytes")
            if self.fsync:
                os.fdatasync(self._write_fd)
        except OSError:
            # Nothing half-written may stay in front of later records: cut it off, or at least stop appending here.
            with contextlib.suppress(OSError):
                os.ftruncate(self._write_fd, segment.size)
            self._stop_writing()
            raise
        segment.size += size
        self._held_bytes += size
        self._records += 1
        self._events += events
        return True

    def peek(self) -> tuple[bytes, int] | None:
        """The oldest unacknowledged record as (payload, events), left in place; None when the spool is empty."""
        if not self._records:
            return None
        fd = self._fd_for(self._segments[0])
        length, events = self._read_head(fd)
        payload = os.pread(fd, length, self._head + HEADER.size)
        if len(payload) != length:
            raise OSError(errno.EIO, f"{self._segments[0].path} shrank under the spool at offset {self._head}")
        return payload, events

    def pop(self) -> None:
        """Acknowledges the oldest record: delivered."""
        self._advance()

    def drop_oldest(self) -> int:
        """Discards the oldest record to make room; returns its event count, for the dropped counter."""
        return self._advance()

    def persist_due(self) -> None:
        """Called by the collector's flush loop, deliveries or not. Persists an acknowledged position not saved yet
        once ACK_INTERVAL_S has passed since the last save (the last pops of a drain, with no pop after them, waited
        for close(), and a crash however much later re-delivered them all); a drained spool at once, after removing
        the segment it was writing (acknowledged throughout; the next push starts a new one)."""
        if self._lock_fd is None or not self._ack_dirty:
            return
        if not self._records:
            with contextlib.suppress(OSError):
                self._stop_writing()
            self._save_ack()
        elif time.monotonic() - self._ack_at >= ACK_INTERVAL_S:
            self._save_ack()

    @property
    def records(self) -> int:
        return self._records

    @property
    def events(self) -> int:
        return self._events

    @property
    def bytes(self) -> int:
        """Bytes held: unacknowledged records including their headers (what max_bytes bounds)."""
        return self._held_bytes

    # --- internals -----------------------------------------------------------------------------------------------

    def _advance(self) -> int:
        if not self._records:
            raise IndexError(f"spool {self.directory} is empty")
        segment = self._segments[0]
        length, events = self._read_head(self._fd_for(segment))
        size = HEADER.size + length
        self._head += size
        self._head_record = None
        self._held_bytes -= size
        self._records -= 1
        self._events -= events
        if self._head >= segment.size and segment is not self._writing:
            self._retire_head()
        self._ack_dirty = True
        if time.monotonic() - self._ack_at >= ACK_INTERVAL_S:
            self._save_ack()
        return events

    def _save_ack(self) -> None:
        self._ack_at = time.monotonic()
        # No room for the ack file (a full disk) must not undo the pop: the position stays dirty and is saved later
        # (persist_due, a pop, close); a crash meanwhile re-delivers from the last saved one, as it always may.
        with contextlib.suppress(OSError):
            self._persist_ack()

    def _read_head(self, fd: int) -> tuple[int, int]:
        if self._head_record is None:
            header = os.pread(fd, HEADER.size, self._head)
            if len(header) != HEADER.size:
                raise OSError(errno.EIO, f"{self._segments[0].path} shrank under the spool at offset {self._head}")
            _, length, events, _ = HEADER.unpack(header)
            self._head_record = (length, events)
        return self._head_record

    def _fd_for(self, segment: _Segment) -> int:
        if segment is self._writing:
            return self._write_fd
        if segment is not self._reading:
            if self._reading is not None:
                os.close(self._read_fd)
                self._reading = None
            self._read_fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
            self._reading = segment
        return self._read_fd

    def _retire_head(self) -> None:
        """Deletes the fully acknowledged oldest segment; its deletion is itself a persisted acknowledgement."""
        segment = self._segments.popleft()
        if segment is self._reading:
            os.close(self._read_fd)
            self._reading = None
        segment.path.unlink(missing_ok=True)
        self._head = 0

    def _roll(self) -> _Segment:
        if self._writing is not None:
            self._stop_writing()
        segment = _Segment(self._next_number, self.directory / f"{self._next_number:08d}{SEGMENT_SUFFIX}", 0)
        self._next_number += 1
        self._write_fd = os.open(segment.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._writing = segment
        self._segments.append(segment)
        if self.fsync:
            _sync_directory(self.directory)
        return segment

    def _stop_writing(self) -> None:
        """Closes the segment pushes appended to; the next push starts a new one."""
        segment = self._writing
        if segment is None:
            return
        self._writing = None
        os.close(self._write_fd)
        self._write_fd = -1
        if segment.size == 0 or (segment is self._segments[0] and self._head >= segment.size):
            if segment is self._segments[0]:
                self._retire_head()
            else:  # an empty segment is always the newest
                self._segments.pop()
                segment.path.unlink(missing_ok=True)

    def _recover(self) -> Recovery:
        directory = self.directory
        (directory / (ACK_NAME + ".tmp")).unlink(missing_ok=True)
        ack = _read_ack(directory / ACK_NAME)
        numbered = sorted(
            (int(path.stem), path) for path in directory.glob(f"*{SEGMENT_SUFFIX}") if path.stem.isdigit()
        )
        last = max([number for number, _ in numbered] + [ack[0] if ack else 0])
        self._next_number = last + 1  # never reuse a number an older acknowledgement may point into
        self._segments.clear()
        self._head = 0
        self._held_bytes = 0
        records = events = corrupt_bytes = corrupt_records = 0
        for number, path in numbered:
            start = 0
            if ack is not None and number <= ack[0]:
                start = ack[1] if number == ack[0] else -1
            size = path.stat().st_size
            if start < 0 or start > size:  # acknowledged throughout
                path.unlink()
                continue
            scan = _scan(path, start, size, self._record_limit)
            if scan.end < size:
                os.truncate(path, scan.end)
                corrupt_bytes += size - scan.end
                corrupt_records += scan.lost
            if not scan.records:
                path.unlink()
                continue
            if not self._segments:
                self._head = start
            self._segments.append(_Segment(number, path, scan.end))
            records += scan.records
            events += scan.events
            self._held_bytes += scan.end - start
        self._records = records
        self._events = events
        self._head_record = None
        self._ack_dirty = False
        self._ack_at = time.monotonic()
        return Recovery(records, events, corrupt_bytes, corrupt_records)

    def _persist_ack(self) -> None:
        """Atomically replaces the ack file: a crash leaves the old position or the new one, never a torn one."""
        if self._segments:
            number, offset = self._segments[0].number, self._head
        else:  # everything before the next segment is acknowledged
            number, offset = self._next_number, 0
        fields = ACK_FIELDS.pack(number, offset)
        temporary = self.directory / (ACK_NAME + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, fields + struct.pack("<I", zlib.crc32(fields)))
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.directory / ACK_NAME)
        if self.fsync:
            _sync_directory(self.directory)
        self._ack_dirty = False

    def _close_files(self) -> None:
        if self._writing is not None:
            os.close(self._write_fd)
            self._writing = None
        if self._reading is not None:
            os.close(self._read_fd)
            self._reading = None

    def _remove_all(self) -> None:
        """Removes an empty spool's files, the lock last (still held), so orphans() never lists a half-removed one."""
        for segment in self._segments:
            segment.path.unlink(missing_ok=True)
        self._segments.clear()
        (self.directory / ACK_NAME).unlink(missing_ok=True)
        (self.directory / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # another process may have created a lock file meanwhile: it owns it now
            self.directory.rmdir()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


@dataclass(frozen=True)
class _Scan:
    end: int  # offset after the last valid record
    records: int
    events: int
    lost: int  # records counted in the discarded tail


def _scan(path: Path, start: int, size: int, limit: int) -> _Scan:
    """Walks the records from `start`, verifying each; reads one payload at a time, never the whole file."""
    offset = start
    records = events = 0
    with path.open("rb", buffering=1 << 20) as file:
        file.seek(start)
        while offset < size:
            header = file.read(HEADER.size)
            length = _sane_length(header, limit, size - offset)
            if length is None:
                break
            _, _, count, checksum = HEADER.unpack(header)
            payload = file.read(length)
            if zlib.crc32(payload, zlib.crc32(header[: CHECKED_FIELDS.size])) != checksum:
                break
            offset += HEADER.size + length
            records += 1
            events += count
        lost = _count_lost(file, offset, size, limit) if offset < size else 0
    return _Scan(offset, records, events, lost)


def _sane_length(header: bytes, limit: int, remaining: int) -> int | None:
    """The payload length a header claims, if the header could be a record's: magic, bounded, within the file."""
    if len(header) != HEADER.size or header[:2] != MAGIC:
        return None
    length: int = HEADER.unpack(header)[1]
    if length > limit or HEADER.size + length > remaining:
        return None
    return length


def _count_lost(file: BinaryIO, offset: int, size: int, limit: int) -> int:
    """Best effort: follows plausible headers through the discarded tail; whatever does not parse counts as one."""
    lost = 0
    while offset < size:
        lost += 1
        file.seek(offset)
        length = _sane_length(file.read(HEADER.size), limit, size - offset)
        if length is None:
            break
        offset += HEADER.size + length
    return lost


def _read_ack(path: Path) -> tuple[int, int] | None:
    """The persisted (segment number, offset); None when absent or damaged (then everything is re-delivered)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) != ACK.size:
        return None
    number, offset, checksum = ACK.unpack(data)
    if zlib.crc32(data[: ACK_FIELDS.size]) != checksum:
        return None
    return number, offset


def _lock(directory: Path) -> int:
    """An exclusive flock on directory/lock through its own open file description: it excludes within a process too."""
    path = directory / LOCK_NAME
    attempt = 0
    while True:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            attempt += 1
            if attempt >= LOCK_ATTEMPTS:
                raise SpoolLocked(f"spool {directory} is held by {_owner(path)}") from None
            time.sleep(LOCK_RETRY_S)
            continue
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        status = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (status.st_ino, status.st_dev):
            # The pid only names the owner in messages (the flock is the lock): a disk with no room for it (full)
            # leaves the file empty, and the spool opens all the same (its backlog can be drained meanwhile).
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # the previous owner removed the file while we waited for it: lock the one now in place


def _owner(lock: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"pid {int(lock.read_text())}"
    return "another process"


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def orphans(parent: Path, exclude: Path | None = None) -> list[Path]:
    """Spool directories under `parent` whose lock no live process holds (their worker died or was replaced):
    the caller opens each with Spool(...) and drains it."""
    if not parent.is_dir():
        return []
    skip = exclude.resolve() if exclude is not None else None
    found = []
    for directory in sorted(parent.iterdir()):
        if not directory.is_dir() or directory.resolve() == skip:
            continue
        lock = directory / LOCK_NAME
        if not lock.exists() and not any(directory.glob(f"*{SEGMENT_SUFFIX}")):
            continue  # not a spool
        if not _held(lock):
            found.append(directory)
    return found


def backlog(directory: Path) -> tuple[int, int]:
    """The events and bytes a spool no process holds still has past its acknowledged position, read without taking
    it (records verified as open() does; a damaged tail is not counted): for a warning about a spool nobody drains."""
    ack = _read_ack(directory / ACK_NAME)
    events = held = 0
    for path in directory.glob(f"*{SEGMENT_SUFFIX}"):
        if not path.stem.isdigit():
            continue
        number = int(path.stem)
        start = 0
        if ack is not None and number <= ack[0]:
            if number < ack[0]:
                continue
            start = ack[1]
        try:
            size = path.stat().st_size
            if start < size:
                scan = _scan(path, start, size, size)
                events += scan.events
                held += scan.end - start
        except FileNotFoundError:
            continue
    return events, held


def _held(lock: Path) -> bool:
    """Whether a live process holds the lock; probed with a shared lock, released at once."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    finally:
        os.close(fd)
    return False
