"""Reading log files back: plain, zstd and gzip JSON lines, in name (time) order, skipping and counting torn lines.

Every tool the project ships that reads logs (tests, replay, reconciliation, reports) reads through here; each reads
a live tracker's directory too, where a listed file may be compressed (renamed) or removed before it is opened.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import msgspec

from trackpoint.collectors.log.compression import TRUNCATED, read_open
from trackpoint.collectors.log.files import ACTIVE_SUFFIX, CODEC_SUFFIXES, LOG_SUFFIXES
from trackpoint.event import Event


@dataclass
class ReadStats:
    """What a read met: events decoded, torn or corrupt lines skipped (with where they were), and the compressed
    files that end early (a crash while copying, a partial download): what decoded of them was read, and the rest
    is one of the skipped lines; and the files listed that were gone when opened, under their name and under the
    compressed name they would have taken (shipped and deleted meanwhile, a dangling link): not read at all."""

    events: int = 0
    skipped: int = 0
    skipped_at: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def incomplete(self) -> list[str]:
        """The files not read to their end: cut short, or gone."""
        return [*self.truncated, *self.missing]


class LogSearchError(Exception):
    """A directory given to search for log files, or one under it, cannot be listed: its files would be left out."""


def log_files(paths: Iterable[Path]) -> list[Path]:
    """The log files named by `paths`: files, or directories searched for events-* down through every
    subdirectory (the layout logs are shipped in, `<node>/<YYYY>/<MM>/<DD>/`, a copy per host or per day, a whole
    data_dir), sorted by name: names are unique and start with their time, so that is time order wherever a file
    lies. Other files are not logs (manifests, compression temporaries, spools). A file found twice (a directory
    given with one of its subdirectories, a link) is listed once, and so is a file being compressed: for a moment
    a live directory holds it under both names, and the compressed one is whole (see `open_log`). A directory that
    cannot be listed raises LogSearchError, naming it: the files in it would be missing with no word."""
    found: list[Path] = []
    searched: set[tuple[int, int]] = set()  # directories, by device and inode: each once, a link loop ends
    for path in paths:
        if path.is_dir():
            _search(path, found, searched)
        else:
            found.append(path)
    names = {str(path) for path in found}
    found = [path for path in found if not any(f"{path}{suffix}" in names for suffix in _successors(path))]
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return sorted(unique.values(), key=lambda p: (p.name, str(p)))


def _search(top: Path, found: list[Path], searched: set[tuple[int, int]]) -> None:
    """Appends the log files under `top`, following links to directories (each directory searched once)."""
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            status = directory.stat()
            if (status.st_dev, status.st_ino) in searched:
                continue
            searched.add((status.st_dev, status.st_ino))
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir():
                        pending.append(Path(entry.path))
                    elif entry.name.startswith("events-") and entry.name.endswith(LOG_SUFFIXES):
                        found.append(Path(entry.path))
        except FileNotFoundError:  # removed since it was listed: it holds nothing now
            continue
        except OSError as exc:
            raise LogSearchError(
                f"{directory}: cannot be read ({exc.strerror or exc}): the log files in it would be left out; "
                "give access to it, or name the directories to read"
            ) from None


# What compression appends to the name of a file being written (events-….jsonl -> events-….jsonl.zst).
_ADDED_SUFFIXES = tuple(sorted(suffix for suffix in CODEC_SUFFIXES.values() if suffix))


def _successors(path: Path) -> tuple[str, ...]:
    """The suffixes compression may add to `path`: a file being written becomes a compressed one."""
    return _ADDED_SUFFIXES if path.name.endswith(ACTIVE_SUFFIX) else ()


def open_log(path: Path) -> tuple[Path, IO[bytes]] | None:
    """`path` open for reading, with the name it was found under: its own, or the compressed name a live tracker
    gave it since it was listed (compress() writes the compressed file before it removes the plain one, so one of
    the two is there unless the file was removed for good); None when it is gone."""
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in _successors(path))):
        try:
            return candidate, candidate.open("rb")
        except FileNotFoundError:
            continue
    return None


def current_name(path: Path) -> Path | None:
    """The name `path` has now (see `open_log`), for a reader that opens it later (DuckDB); None when it is gone."""
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in _successors(path))):
        if candidate.exists():
            return candidate
    return None


def stored_size(path: Path) -> int:
    """The size of `path` as stored now, under the name it has now (see `open_log`); 0 when it is gone."""
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in _successors(path))):
        try:
            return candidate.stat().st_size
        except FileNotFoundError:
            continue
    return 0


def read_events(
    paths: Iterable[Path], stats: ReadStats | None = None, consumed: Callable[[int], None] | None = None
) -> Iterator[Event]:
    """Every whole event in the files, in order; a line that does not decode (a torn tail) is skipped and counted.
    `consumed` is told the bytes of the files read as the reading goes (see `read_lines`)."""
    for _, event in read_located(paths, stats, consumed):
        yield event


def read_located(
    paths: Iterable[Path], stats: ReadStats | None = None, consumed: Callable[[int], None] | None = None
) -> Iterator[tuple[tuple[int, int], Event]]:
    """read_events with where each event is: (the file's rank in name order, the line's number), which orders the
    lines of the files as they are read, and breaks ties between lines of the same time (see `precedence`)."""
    stats = stats if stats is not None else ReadStats()
    decoder = msgspec.json.Decoder(Event)
    for rank, path in enumerate(log_files(paths)):
        for name, number, line in _lines(path, stats, consumed):
            try:
                event = decoder.decode(line)
            except msgspec.DecodeError:
                stats.skipped += 1
                stats.skipped_at.append(f"{name}:{number}")
                continue
            stats.events += 1
            yield (rank, number), event


def precedence(event: Event, where: tuple[int, int]) -> tuple[int, int, int]:
    """The rule every reader applies to an id logged more than once, with other values (two trackers sharing the
    banker's Redis each log the win they were told of): the line with the smallest precedence counts, the earliest
    event (`ts`), then the first in file-name order and line order. The banker debits the first arrival, which is
    the earliest event as far as the logs can tell; reconcile, replay and `report --logs` all count that line."""
    return (event.ts, *where)


def not_a_log(path: Path) -> str | None:
    """Why `path` is not a tracker log (`file:line: reason`), judged by its first line; None when it is one (an
    empty file is one too). A torn line later in a log is a crash's trace, not this, and so is a compressed file
    that ends before its first line decoded: its stream is a valid one, cut short (the reader counts it)."""
    try:
        opened = open_log(path)
    except OSError as exc:  # a directory, no permission: no verdict on what it holds
        return f"{path}: cannot be read ({exc.strerror or exc})"
    if opened is None:  # gone meanwhile: the reader notes it (ReadStats.missing)
        return None
    name, raw = opened
    lines = read_open(raw, name)
    try:
        first = next(lines, None)
    except EOFError:
        return None
    except TRUNCATED as exc:
        return f"{name}: not a trackpoint log: cannot be read as {_codec(name)} ({exc})"
    except OSError as exc:
        return f"{name}: cannot be read ({exc.strerror or exc})"
    finally:
        lines.close()
        raw.close()
    if first is None:
        return None
    try:
        msgspec.json.decode(first, type=Event)
    except msgspec.DecodeError as exc:
        return f"{path}:1: not a trackpoint log: the line is not an event ({exc})"
    return None


def _codec(path: Path) -> str:
    return "zstd" if path.name.endswith(".zst") else "gzip" if path.name.endswith(".gz") else "text"


def _lines(path: Path, stats: ReadStats, consumed: Callable[[int], None] | None) -> Iterator[tuple[Path, int, bytes]]:
    """The lines of one file, with the name it was read under and their numbers."""
    opened = open_log(path)
    if opened is None:
        stats.missing.append(str(path))
        return
    name, raw = opened
    number = 0
    with raw:
        try:
            for number, line in enumerate(read_open(raw, name, consumed), start=1):
                if line.endswith(b"\n"):
                    yield name, number, line
                else:  # no newline: the write was cut short
                    stats.skipped += 1
                    stats.skipped_at.append(f"{name}:{number}")
        except TRUNCATED:  # a compressed file that ends early: keep what decoded
            stats.skipped += 1
            stats.skipped_at.append(f"{name}:{number + 1}")
            stats.truncated.append(str(name))
