"""Reading log files back: plain, zstd and gzip JSON lines, in name (time) order, skipping and counting torn lines.

Every tool the project ships that reads logs (tests, replay, reconciliation) reads through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from trackpoint.collectors.log.compression import TRUNCATED, read_lines
from trackpoint.collectors.log.files import LOG_SUFFIXES
from trackpoint.event import Event


@dataclass
class ReadStats:
    """What a read met: events decoded, and torn or corrupt lines skipped (with where they were)."""

    events: int = 0
    skipped: int = 0
    skipped_at: list[str] = field(default_factory=list)


def log_files(paths: Iterable[Path]) -> list[Path]:
    """The log files named by `paths` (files, or directories searched for events-*), sorted by name."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in path.glob("events-*") if p.name.endswith(LOG_SUFFIXES))
        else:
            found.append(path)
    return sorted(found, key=lambda p: p.name)


def read_events(paths: Iterable[Path], stats: ReadStats | None = None) -> Iterator[Event]:
    """Every whole event in the files, in order; a line that does not decode (a torn tail) is skipped and counted."""
    stats = stats if stats is not None else ReadStats()
    decoder = msgspec.json.Decoder(Event)
    for path in log_files(paths):
        for number, line in _lines(path, stats):
            try:
                event = decoder.decode(line)
            except msgspec.DecodeError:
                stats.skipped += 1
                stats.skipped_at.append(f"{path}:{number}")
                continue
            stats.events += 1
            yield event


def _lines(path: Path, stats: ReadStats) -> Iterator[tuple[int, bytes]]:
    number = 0
    try:
        for number, line in enumerate(read_lines(path), start=1):
            if line.endswith(b"\n"):
                yield number, line
            else:  # no newline: the write was cut short
                stats.skipped += 1
                stats.skipped_at.append(f"{path}:{number}")
    except TRUNCATED:  # a compressed file that ends early: keep what decoded
        stats.skipped += 1
        stats.skipped_at.append(f"{path}:{number + 1}")
