"""Compression of finished log files: the codecs (zstd, gzip, none), durable compress(), orphans of dead workers,
and the one function every reader opens a log file with, whatever its codec.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import threading
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import IO

import zstandard

from trackpoint.collectors.log.config import COMPRESSION_LEVELS, Compression
from trackpoint.collectors.log.files import ACTIVE_SUFFIX, LOG_SUFFIXES, rotated_name

COMPRESSED_SUFFIXES = tuple(suffix for suffix in LOG_SUFFIXES if suffix != ACTIVE_SUFFIX)
# What a reader meets when a compressed file ends early (a crash during a copy, a partial download).
TRUNCATED = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)

# Compression runs at nice 5, not 19: it must keep up with a fully loaded core, or files pile up. Measured with
# bench/compression.py (~500-byte impression lines): zstd level 1, the default, costs 0.65 µs of CPU per event, 4.5%
# of the 14.5 µs a core spends serving one (69,000 events/s), so at full load it needs about 5% of the core; zstd 3
# costs twice that, gzip level 6 5.3 µs (37%). Under CFS a thread's share of a contended core is its weight against
# the worker's (nice 0: 1024): nice 19 (15) gets 1.4%, less than even zstd needs, which is how 128 MiB files piled
# up; nice 5 (335) gets up to 25%: five times what zstd needs, short of what gzip 6 needs at full load. Averaged over
# time compression takes only its cost either way; the nice value bounds how fast it catches up, not how much it
# takes.
COMPRESSION_NICE = 5


def compress(path: Path, codec: Compression = "zstd", level: int | None = None) -> Path:
    """Compresses a closed log file durably: write to a temporary name, fsync, rename, then remove the original.
    Returns the compressed file (the file itself for codec none). On a failure (a full disk) the temporary is
    removed, so the space it took is free again for the retry, and the plain file stays."""
    if codec == "none":
        return path
    target = rotated_name(path, codec)
    temporary = target.with_name(target.name + ".tmp")
    chosen = COMPRESSION_LEVELS[codec][2] if level is None else level
    try:
        with path.open("rb") as source, temporary.open("wb") as sink:
            if codec == "zstd":
                # write_checksum: a reader can tell a damaged frame from a clean one.
                compressor = zstandard.ZstdCompressor(level=chosen, write_checksum=True)
                compressor.copy_stream(source, sink, size=os.fstat(source.fileno()).st_size, write_size=1 << 20)
            else:
                with gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=chosen, mtime=0) as gzipped:
                    shutil.copyfileobj(source, gzipped, 1 << 20)
            sink.flush()
            os.fsync(sink.fileno())
        temporary.rename(target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    path.unlink()
    return target


def finalize_orphans(
    directory: Path, pid: int | None = None, codec: Compression = "zstd", level: int | None = None
) -> list[Path]:
    """Compresses active files left by dead workers (all of them, or those of one pid); returns the new files.
    Temporaries of interrupted compressions (any codec) are removed: their source is still there.

    A file cut short by a crash keeps its torn last line: readers skip and count it.
    """
    if not directory.is_dir():
        return []
    for suffix in COMPRESSED_SUFFIXES:  # first: their space may be what the compressions below need
        for stale in directory.glob(f"events-*{suffix}.tmp"):
            if pid is None or f"-p{pid}-" in stale.name:  # a live worker's compression in progress stays
                stale.unlink(missing_ok=True)
    done = []
    failure: OSError | None = None
    for path in sorted(directory.glob(f"events-*{ACTIVE_SUFFIX}")):
        if pid is not None and f"-p{pid}-" not in path.name:
            continue
        try:
            if path.stat().st_size == 0:
                path.unlink()
                continue
            if codec != "none":
                done.append(compress(path, codec, level))
        except FileNotFoundError:  # taken meanwhile (another pass, an operator)
            continue
        except OSError as exc:  # one file that cannot be compressed now keeps none of the others back
            failure = failure or exc
    if failure is not None:
        raise failure
    return done


def read_lines(path: Path, consumed: Callable[[int], None] | None = None) -> Generator[bytes]:
    """The lines of a log file, decompressed by its suffix (`.zst`, `.gz`, else plain); the last one lacks its
    newline when the write was cut short. A compressed file that ends early yields what decoded, then raises one of
    TRUNCATED. `consumed`, if given, is told how many bytes of the file itself each step read (for progress)."""
    with path.open("rb") as raw:
        yield from read_open(raw, path, consumed)


def read_open(raw: IO[bytes], path: Path, consumed: Callable[[int], None] | None = None) -> Generator[bytes]:
    """read_lines over a file already open (`path` names its codec); the caller closes it."""
    if path.name.endswith(".zst"):
        yield from _split_lines(_zstd_chunks(raw, consumed))
        return
    stream: Iterable[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
    if consumed is None:
        yield from stream
        return
    at = 0
    for line in stream:
        yield line
        consumed(raw.tell() - at)
        at = raw.tell()


def cut_short(path: Path) -> bool:
    """Whether a zstd or gzip file ends before its stream does (a crash while copying, a partial download), read to
    its end with the output dropped; False for a plain file and for one gone. For readers that do not decompress
    through read_lines (DuckDB stops quietly at the end of a cut zstd file)."""
    if not path.name.endswith((".zst", ".gz")):
        return False
    try:
        with path.open("rb") as raw:
            if path.name.endswith(".zst"):
                for _ in _zstd_chunks(raw):
                    pass
            else:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    while stream.read(1 << 20):
                        pass
    except FileNotFoundError:
        return False
    except TRUNCATED:
        return True
    return False


def _zstd_chunks(raw: IO[bytes], consumed: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """Decompressed data of every frame in turn (`cat a.zst b.zst` reads whole, as with gzip members); EOFError when
    the last frame is incomplete, which zstandard's stream reader would not tell."""
    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    inside = False
    while chunk := raw.read(1 << 20):
        if consumed is not None:
            consumed(len(chunk))
        while chunk:
            inside = True
            yield frame.decompress(chunk)
            chunk = b""
            if frame.eof:
                chunk, frame, inside = frame.unused_data, decompressor.decompressobj(), False
    if inside:
        raise EOFError("zstd frame ends early")


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    pending = b""
    for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def lower_priority() -> None:
    """COMPRESSION_NICE for the calling thread only (Linux applies setpriority to a thread id), and the thread's
    name where the OS shows it (top -H, /proc/<pid>/task/<tid>/comm), which Python 3.11 does not set."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, COMPRESSION_NICE)
    with contextlib.suppress(OSError):
        Path(f"/proc/self/task/{tid}/comm").write_text(threading.current_thread().name[:15])
