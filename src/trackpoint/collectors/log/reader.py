"""Reading log files back: plain, zstd and gzip JSON lines, in name (time) order, skipping and counting torn lines.

Every tool the project ships that reads logs (tests, replay, reconciliation) reads through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from trackpoint.collectors.log.compression import TRUNCATED, read_lines
from trackpoint.collectors.log.files import LOG_SUFFIXES
from trackpoint.event import Event


@dataclass
class ReadStats:
    """What a read met: events decoded, torn or corrupt lines skipped (with where they were), and the compressed
    files that end early (a crash while copying, a partial download): what decoded of them was read, and the rest
    is one of the skipped lines."""

    events: int = 0
    skipped: int = 0
    skipped_at: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)


def log_files(paths: Iterable[Path]) -> list[Path]:
    """The log files named by `paths` (files, or directories searched for events-*), sorted by name."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in path.glob("events-*") if p.name.endswith(LOG_SUFFIXES))
        else:
            found.append(path)
    return sorted(found, key=lambda p: p.name)


def read_events(
    paths: Iterable[Path], stats: ReadStats | None = None, consumed: Callable[[int], None] | None = None
) -> Iterator[Event]:
    """Every whole event in the files, in order; a line that does not decode (a torn tail) is skipped and counted.
    `consumed` is told the bytes of the files read as the reading goes (see `read_lines`)."""
    stats = stats if stats is not None else ReadStats()
    decoder = msgspec.json.Decoder(Event)
    for path in log_files(paths):
        for number, line in _lines(path, stats, consumed):
            try:
                event = decoder.decode(line)
            except msgspec.DecodeError:
                stats.skipped += 1
                stats.skipped_at.append(f"{path}:{number}")
                continue
            stats.events += 1
            yield event


def not_a_log(path: Path) -> str | None:
    """Why `path` is not a tracker log (`file:line: reason`), judged by its first line; None when it is one (an
    empty file is one too). A torn line later in a log is a crash's trace, not this, and so is a compressed file
    that ends before its first line decoded: its stream is a valid one, cut short (the reader counts it)."""
    lines = read_lines(path)
    try:
        first = next(lines, None)
    except EOFError:
        return None
    except (*TRUNCATED, OSError) as exc:
        return f"{path}: not a trackpoint log: cannot be read as {_codec(path)} ({exc})"
    finally:
        lines.close()
    if first is None:
        return None
    try:
        msgspec.json.decode(first, type=Event)
    except msgspec.DecodeError as exc:
        return f"{path}:1: not a trackpoint log: the line is not an event ({exc})"
    return None


def _codec(path: Path) -> str:
    return "zstd" if path.name.endswith(".zst") else "gzip" if path.name.endswith(".gz") else "text"


def _lines(path: Path, stats: ReadStats, consumed: Callable[[int], None] | None) -> Iterator[tuple[int, bytes]]:
    number = 0
    try:
        for number, line in enumerate(read_lines(path, consumed), start=1):
            if line.endswith(b"\n"):
                yield number, line
            else:  # no newline: the write was cut short
                stats.skipped += 1
                stats.skipped_at.append(f"{path}:{number}")
    except TRUNCATED:  # a compressed file that ends early: keep what decoded
        stats.skipped += 1
        stats.skipped_at.append(f"{path}:{number + 1}")
        stats.truncated.append(str(path))
