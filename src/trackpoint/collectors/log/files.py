"""Log file names and what state a file is in (being written, finished, waiting for compression): the facts the
collector, compression, the disk budget and the shipper share.

Names sort by creation time and are unique across workers and restarts:
`events-<UTC time>-w<slot>-p<pid>-<seq>.jsonl`, then `.jsonl.zst` or `.jsonl.gz` once compressed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from trackpoint.collectors.log.config import Compression, LogCollectorConfig
from trackpoint.data_dir import Holder, holder

ACTIVE_SUFFIX = ".jsonl"
# The suffix each codec adds to a finished file's name; none leaves it plain.
CODEC_SUFFIXES: dict[Compression, str] = {"zstd": ".zst", "gzip": ".gz", "none": ""}
LOG_SUFFIXES = tuple(ACTIVE_SUFFIX + suffix for suffix in sorted(set(CODEC_SUFFIXES.values())))
# The names file_name gives, with the parts that tools read from them (the shipper: the day, the writing pid, the
# order; everyone: whether the file is compressed).
FILE_NAME = re.compile(
    r"events-(?P<year>\d{4})(?P<month>\d{2})(?P<day>\d{2})T\d{9}Z-w\d+-p(?P<pid>\d+)-(?P<seq>\d+)"
    + re.escape(ACTIVE_SUFFIX)
    + "(?P<compressed>"
    + "|".join(re.escape(suffix) for suffix in CODEC_SUFFIXES.values() if suffix)
    + ")?"
)


def log_dir(data_dir: str, config: LogCollectorConfig) -> Path:
    return Path(data_dir) / config.dir


def file_name(worker: int, seq: int) -> str:
    """The name of a worker's next active file (this process, now)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")[:-3]
    return f"events-{stamp}Z-w{worker:02d}-p{os.getpid()}-{seq:04d}{ACTIVE_SUFFIX}"


def rotated_name(path: Path, codec: Compression) -> Path:
    """The name an active file gets once compressed with `codec` (its own for none)."""
    return path.with_name(path.name + CODEC_SUFFIXES[codec])


@dataclass(frozen=True)
class LogFile:
    """One log file as a directory scan found it."""

    path: Path
    size: int
    mtime: float
    compressed: bool
    # The latest file of a running worker: still being written (or about to be, after a rotation).
    current: bool

    def finished(self, compression: Compression) -> bool:
        """No worker will write, compress or rename it again. A compressed file is finished by construction
        (compress() renames its temporary only when it is complete); a plain one only when the collector does not
        compress (else compression is about to replace it) and its worker moved on or is gone."""
        return self.compressed or (compression == "none" and not self.current)

    def waiting(self, compression: Compression) -> bool:
        """Finished writing, not yet compressed: the backlog compression must keep small."""
        return not self.compressed and not self.current and compression != "none"


def scan(directory: Path, data_dir: str | Path | None = None) -> list[LogFile]:
    """The log files in `directory`, oldest first; files that vanish meanwhile are left out.

    A worker writes only its newest file (by name, time, and by sequence number: a reused pid, files of an earlier
    boot, or a clock step back cannot make the file being written look older), so every other file is finished
    whoever looks. Whether a pid's newest file is still written depends on where the looker stands: while a tracker
    holds `data_dir`'s lock (its supervisor or any of its workers), a pid is taken for alive unless it is seen gone
    from the tracker's own pid namespace; a pid number means nothing from another one (`trackpoint ship --once`
    from a cron job or a sidecar container sharing the volume). With no tracker on it, a pid alive here still
    counts as writing (an embedded collector). `data_dir` None: no lock to consult, the pid is looked up here only.
    """
    try:
        entries = sorted(
            ((entry, match) for entry in os.scandir(directory) if (match := FILE_NAME.fullmatch(entry.name))),
            key=lambda item: item[0].name,
        )
    except FileNotFoundError:
        return []
    # After the listing: a tracker that takes the lock later writes only files created after it, not listed here.
    tracker = holder(data_dir) if data_dir is not None else Holder(running=False, here=True)
    latest_by_name: dict[str, str] = {}
    latest_by_seq: dict[str, tuple[int, str]] = {}
    for entry, match in entries:
        pid, seq = match["pid"], int(match["seq"])
        latest_by_name[pid] = entry.name
        if seq >= latest_by_seq.get(pid, (-1, ""))[0]:
            latest_by_seq[pid] = (seq, entry.name)
    blind = tracker.running and not tracker.here
    running = {pid: blind or _running(int(pid)) for pid in latest_by_name}
    found = []
    for entry, match in entries:
        try:
            stat = entry.stat()
        except FileNotFoundError:  # compressed, shipped or deleted since the listing
            continue
        pid = match["pid"]
        current = running[pid] and entry.name in (latest_by_name[pid], latest_by_seq[pid][1])
        found.append(LogFile(Path(entry.path), stat.st_size, stat.st_mtime, bool(match["compressed"]), current))
    return found


def finished_files(directory: Path, compression: Compression, data_dir: str | Path | None = None) -> list[Path]:
    """The log files no worker will write, compress or rename again, oldest first (see LogFile.finished and scan)."""
    return [file.path for file in scan(directory, data_dir) if file.finished(compression)]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
