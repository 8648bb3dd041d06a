"""Start-up checks of the log collector: its directory can be made and written. Run by `config check`, `run` and
every reload, so a directory that cannot be used stops the tracker with one located error instead of workers that
fail to start for ever."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.files import log_dir
from trackpoint.config.load import KeyPath
from trackpoint.config.model import Config
from trackpoint.data_dir import DISK_FULL


def check_log_dirs(config: Config) -> Iterator[tuple[KeyPath, str]]:
    """Every log collector the tracker starts: its directory exists and is writable, or can be made. Made here to
    find out (mkdir says what /proc or a read-only mount refuses, which a permission check does not), then removed
    again: `config check` leaves nothing behind. A data_dir that cannot be made is the supervisor's to report."""
    data_dir = Path(config.data_dir)
    for name, collector in _started(config).items():
        directory = log_dir(config.data_dir, collector)
        if directory.is_relative_to(data_dir) and _usable(data_dir) is not None:
            continue
        if (problem := _usable(directory)) is not None:
            yield ("collectors", name, "dir"), f"cannot use the log directory {directory}: {problem}"


def _started(config: Config) -> dict[str, LogCollectorConfig]:
    """The log collectors a worker starts (Edge: fed by an event type, its invalid traffic, or the rejected)."""
    fed = {
        name for spec in config.event_types.values() for name in (*spec.collectors, *spec.invalid_traffic.collectors)
    }
    fed.update(config.rejected.collectors)
    return {name: c for name, c in config.collectors.items() if isinstance(c, LogCollectorConfig) and name in fed}


def _usable(directory: Path) -> str | None:
    """Why the directory cannot hold log files, or None; what this makes to find out, it removes."""
    made: list[Path] = []
    missing = directory
    while not missing.exists() and missing != missing.parent:
        made.append(missing)
        missing = missing.parent
    try:
        for path in reversed(made):
            path.mkdir()
        if not directory.is_dir():
            return "not a directory"
        if not os.access(directory, os.W_OK | os.X_OK):
            return "not writable"
        return None
    except OSError as exc:
        if exc.errno in DISK_FULL:  # no configuration error: the log starts unwritable and answers 503 meanwhile
            return None
        return exc.strerror or str(exc)
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()
