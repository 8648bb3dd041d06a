"""The disk budget of a log directory: retention, deleting shipped files under pressure, the warning, and whether
new writes are allowed; plus the trackpoint_log_* gauges the supervisor shows on /metrics.

Policy, checked once a second and after each rotation by every log collector (off the event loop):
1. Finished files older than retention_s are deleted, oldest first (with ship.url: only once shipped).
2. At or above disk_warn_ratio of max_disk_bytes, shipped files still on disk (delete_after_upload off) are deleted,
   oldest first, until usage is below the ratio again.
3. Still at or above the ratio: a warning (log line once a minute, gauge trackpoint_log_disk_warning).
4. At or above max_disk_bytes with nothing left that may go (only the record, not yet shipped): the collector
   refuses new events (the edge answers 503 log_disk_full) until usage drops below the budget again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.files import LogFile, log_dir, scan
from trackpoint.collectors.log.shipping.shipper import MANIFEST_NAME, Manifest
from trackpoint.config.model import Config

log = logging.getLogger("trackpoint.collectors.log")

CHECK_INTERVAL_S = 1.0
WARN_LOG_INTERVAL_S = 60.0


@dataclass
class DiskUsage:
    """A log directory at one moment: every file in it (logs, temporaries of compression, the shipping manifest),
    and the finished files still waiting for compression."""

    bytes: int = 0
    waiting_bytes: int = 0
    deleted: list[Path] = field(default_factory=list)


def usage(
    directory: Path, config: LogCollectorConfig, files: list[LogFile] | None = None, data_dir: str | None = None
) -> DiskUsage:
    """What the directory holds now (no deletions)."""
    files = scan(directory, data_dir) if files is None else files
    waiting = sum(file.size for file in files if file.waiting(config.compression))
    return DiskUsage(bytes=_directory_bytes(directory), waiting_bytes=waiting)


def _directory_bytes(directory: Path) -> int:
    total = 0
    try:
        for path in directory.iterdir():
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # compressed or shipped since the listing
                continue
    except FileNotFoundError:
        return 0
    return total


class DiskBudget:
    """One collector's view of its directory's budget. check() runs in a thread; allows() is O(1) on the loop."""

    def __init__(
        self,
        name: str,
        directory: Path,
        config: LogCollectorConfig,
        clock: Callable[[], float] = time.time,
        data_dir: str | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.data_dir = data_dir  # whose lock says whether a tracker writes there (files.scan)
        self.config = config
        self.clock = clock
        self.manifest = Manifest(directory / MANIFEST_NAME)
        self.usage = DiskUsage()
        self.full = False
        self.warning = False
        self._next_warn_log = 0.0

    @property
    def enabled(self) -> bool:
        return self.config.max_disk_bytes is not None or self.config.retention_s is not None

    def check(self) -> DiskUsage:
        """Applies retention and the budget (see the module docstring), then measures; updates full and warning."""
        config, files = self.config, scan(self.directory, self.data_dir)
        deleted: list[Path] = []
        if config.retention_s is not None:
            cutoff = self.clock() - config.retention_s
            old = [file for file in files if file.mtime < cutoff and self._may_delete(file)]
            deleted += self._delete(old)
        measured = usage(self.directory, config, files)
        limit = config.max_disk_bytes
        if limit is not None and measured.bytes >= limit * config.disk_warn_ratio:
            excess = measured.bytes - int(limit * config.disk_warn_ratio) + 1
            shipped = [file for file in files if file.path not in deleted and self._shipped(file)]
            chosen = []
            for file in shipped:  # oldest first, only as many as it takes
                if excess <= 0:
                    break
                chosen.append(file)
                excess -= file.size
            if chosen:
                deleted += self._delete(chosen)
                measured = usage(self.directory, config, data_dir=self.data_dir)
        measured.deleted = deleted
        self.usage = measured
        self._judge(measured)
        return measured

    def allows(self, written_since_check: int) -> bool:
        """Whether a write may go ahead: not full at the last check, and this worker's writes since then still fit."""
        limit = self.config.max_disk_bytes
        return limit is None or (not self.full and self.usage.bytes + written_since_check < limit)

    def _may_delete(self, file: LogFile) -> bool:
        if not file.finished(self.config.compression):
            return False
        return self.config.ship.url is None or self._shipped(file)

    def _shipped(self, file: LogFile) -> bool:
        return file.finished(self.config.compression) and self.manifest.has(file.path, file.size)

    def _delete(self, files: list[LogFile]) -> list[Path]:
        for file in files:
            file.path.unlink(missing_ok=True)  # another worker's check may have taken it first
        return [file.path for file in files]

    def _judge(self, measured: DiskUsage) -> None:
        limit = self.config.max_disk_bytes
        if limit is None:
            return
        was_full = self.full
        self.full = measured.bytes >= limit
        self.warning = measured.bytes >= limit * self.config.disk_warn_ratio
        now = time.monotonic()
        if self.full and not was_full:
            log.error(
                "log %s: %s holds %d bytes, its budget max_disk_bytes is %d and nothing left may be deleted "
                "(unshipped files): refusing new events (503 log_disk_full)",
                self.name, self.directory, measured.bytes, limit,
            )  # fmt: skip
            self._next_warn_log = now + WARN_LOG_INTERVAL_S
        elif was_full and not self.full:
            log.warning("log %s: back under its disk budget (%d of %d bytes): accepting events", self.name,
                        measured.bytes, limit)  # fmt: skip
        elif self.warning and now >= self._next_warn_log:
            log.warning(
                "log %s: %s holds %d bytes, %.0f%% of its budget (%d bytes)%s",
                self.name, self.directory, measured.bytes, 100 * measured.bytes / limit, limit,
                "; refusing new events" if self.full else "",
            )  # fmt: skip
            self._next_warn_log = now + WARN_LOG_INTERVAL_S


class LogDiskMetrics:
    """trackpoint_log_* gauges on the supervisor's /metrics, measured at each scrape from the directories of the
    current configuration's log collectors (one directory, however many workers write to it)."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self.config = config

    def collect(self) -> Iterator[Metric]:
        disk, waiting, budget, warning = (
            GaugeMetricFamily(name, documentation, labels=["collector"])
            for name, documentation in [
                ("trackpoint_log_disk_bytes", "Bytes in the log directory (logs, compression temporaries, manifest)."),
                (
                    "trackpoint_log_uncompressed_waiting_bytes",
                    "Bytes of finished log files not compressed yet (more than one file's worth: compression is "
                    "behind).",
                ),
                ("trackpoint_log_disk_budget_bytes", "The log directory's max_disk_bytes (absent: no budget)."),
                (
                    "trackpoint_log_disk_warning",
                    "1 when the log directory is at or above disk_warn_ratio of its budget (at the budget, events are "
                    "refused with 503 log_disk_full).",
                ),
            ]
        )
        config = self.config()
        for name, collector in sorted(config.collectors.items()):
            if not isinstance(collector, LogCollectorConfig):
                continue
            measured = usage(log_dir(config.data_dir, collector), collector, data_dir=config.data_dir)
            disk.add_metric([name], measured.bytes)
            waiting.add_metric([name], measured.waiting_bytes)
            if (limit := collector.max_disk_bytes) is not None:
                budget.add_metric([name], limit)
                warning.add_metric([name], 1 if measured.bytes >= limit * collector.disk_warn_ratio else 0)
        yield from (disk, waiting, budget, warning)
