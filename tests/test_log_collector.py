"""Unit tests of the log collector (JSON lines, rotation, compression, fsync policies, bounded batch) and its reader.

Each test runs a real LogCollector on an asyncio loop over a temporary data dir and reads the files back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import pytest
import zstandard

from conftest import SmallDisk
from trackpoint.collectors.base import CollectorContext, CollectorStats
from trackpoint.collectors.log.collector import LogCollector
from trackpoint.collectors.log.compression import COMPRESSION_NICE, compress, finalize_orphans, lower_priority
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.files import log_dir
from trackpoint.collectors.log.reader import ReadStats, log_files, read_events
from trackpoint.event import Context, Device, Event, Meta
from trackpoint.plugins import registry

NAME = re.compile(r"events-(?P<stamp>\d{8}T\d{9})Z-w(?P<worker>\d{2})-p(?P<pid>\d+)-(?P<seq>\d{4})\.jsonl(\.zst|\.gz)?")
ENCODER = msgspec.json.Encoder()


def make_event(i: int, pad: int = 0) -> Event:
    return Event(
        id=f"{i:032x}",
        type="impression" if i % 2 else "win",
        ts=1_700_000_000_000 + i,
        dims={"imp": f"imp-{i}", "pub": "p" * pad, "note": 'é\u2028"quoted"\n'},
        metrics={"price": i * 1_000_000, "t": i / 4},
        ctx=Context(ip="192.0.2.0", ua="Agent/1", device=Device(browser="Chrome", bot=i % 3 == 0)),
        meta=Meta(worker=2, config="abc123"),
    )


def config(**options: object) -> LogCollectorConfig:
    settings: dict[str, object] = {"flush_interval_ms": 20, "fsync": "none", **options}
    return msgspec.convert(settings, LogCollectorConfig)


def run_collector(
    data_dir: Path,
    options: LogCollectorConfig,
    body: Callable[[LogCollector], Awaitable[None]],
    worker: int = 2,
) -> LogCollector:
    """Starts a collector, runs `body` with it, closes it; all on a fresh event loop."""

    async def main() -> LogCollector:
        collector = LogCollector("log", options, CollectorContext(str(data_dir), worker))
        await collector.start()
        try:
            await body(collector)
        finally:
            await collector.close(10.0)
        return collector

    return asyncio.run(main())


def offer_in_batches(events: Sequence[Event], size: int) -> Callable[[LogCollector], Awaitable[None]]:
    async def body(collector: LogCollector) -> None:
        for start in range(0, len(events), size):
            for event in events[start : start + size]:
                collector.offer(event)
            await collector.flush()

    return body


def files(directory: Path, suffix: str = "") -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix))


def read_all(*paths: Path) -> tuple[list[Event], ReadStats]:
    stats = ReadStats()
    return list(read_events(paths, stats)), stats


def unzstd(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(blob)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# --- writing and reading back -------------------------------------------------------------------------------


def test_offered_events_are_written_as_json_lines_and_read_back_identically(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(40)]
    seen_active: list[Path] = []

    async def body(collector: LogCollector) -> None:
        for event in events:
            collector.offer(event)
        await collector.flush()
        seen_active.extend(files(collector.directory))

    collector = run_collector(tmp_path, config(), body)
    (active,) = seen_active
    assert NAME.fullmatch(active.name), active.name
    assert active.name.endswith(".jsonl")
    (rotated,) = files(tmp_path / "logs")
    assert rotated.name == active.name + ".zst"
    lines = unzstd(rotated.read_bytes()).splitlines()
    assert len(lines) == len(events)
    assert json.loads(lines[0]) == json.loads(ENCODER.encode(events[0]))
    assert set(json.loads(lines[0])) == {"id", "type", "ts", "dims", "metrics", "ctx", "meta"}
    read, stats = read_all(tmp_path / "logs")
    assert read == events
    assert (stats.events, stats.skipped) == (40, 0)
    snapshot = collector.snapshot()
    assert snapshot.last_success_s > 0  # it delivered
    assert msgspec.structs.replace(snapshot, last_success_s=0.0) == CollectorStats(
        received=40, sent=40, dropped=0, errors=0, pending=0, required=True
    )


def test_the_flush_loop_writes_without_an_explicit_flush(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(7)]
    written: list[Event] = []

    async def body(collector: LogCollector) -> None:
        for event in events:
            collector.offer(event)
        await wait_until(lambda: collector.snapshot().sent == len(events))
        written.extend(read_events([collector.directory]))

    run_collector(tmp_path, config(flush_interval_ms=10), body)
    assert written == events


def test_commit_writes_the_group_at_once_in_one_write(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(10)]
    seen: list[list[Event]] = []

    async def body(collector: LogCollector) -> None:
        for event in events:
            collector.offer(event)
        seen.append(list(read_events([collector.directory])))  # offered, not yet written
        assert collector.commit()
        seen.append(list(read_events([collector.directory])))  # in the page cache: readable at once, no await

    collector = run_collector(tmp_path, config(flush_interval_ms=60_000), body)
    assert seen == [[], events]
    stats = collector.snapshot()
    assert (stats.received, stats.sent) == (10, 10)


def test_a_failed_write_refuses_the_group_and_the_log_recovers(tmp_path: Path) -> None:
    """The disk is full (/dev/full answers every write with ENOSPC): commit says so, nothing is counted as written,
    the collector is unhealthy with the reason the edge answers, and the next write to a good file succeeds."""
    outcomes: list[tuple[bool, str, bool]] = []

    async def body(collector: LogCollector) -> None:
        good = collector._fd
        collector._fd = os.open("/dev/full", os.O_WRONLY)
        collector.offer(make_event(1))
        outcomes.append((collector.commit(), collector.failure_reason, collector.health().healthy))
        os.close(collector._fd)
        collector._fd = good
        collector.offer(make_event(2))
        outcomes.append((collector.commit(), collector.failure_reason, collector.health().healthy))

    collector = run_collector(tmp_path, config(), body)
    assert outcomes == [(False, "log_disk_full", False), (True, "log_disk_full", True)]
    assert read_all(tmp_path / "logs")[0] == [make_event(2)]
    stats = collector.snapshot()
    assert (stats.sent, stats.dropped, stats.errors) == (1, 1, 1)


def test_a_log_started_on_a_full_disk_refuses_its_events_until_there_is_room(
    small_disk: Callable[..., SmallDisk], tmp_path: Path
) -> None:
    """No block nor inode left under data_dir when the worker starts: the log directory could not be made, start()
    raised ENOSPC and the worker crash-looped (the tracker served nothing). Now it starts unwritable: every group is
    refused (the edge answers 503 log_disk_full), it is unhealthy with the reason, and once there is room it makes
    its directory and file by itself, without a request (a tracker out of the load balancer gets none), and writes."""
    disk = small_disk(tmp_path / "data")
    disk.fill()
    outcomes: list[tuple[bool, str]] = []

    async def body(collector: LogCollector) -> None:
        collector.offer(make_event(1))
        outcomes.append((collector.commit(), collector.failure_reason))
        health = collector.health()
        assert not health.healthy and health.detail.endswith("logs: No space left on device")
        disk.free()
        await wait_until(lambda: collector.health().healthy, timeout_s=10)
        collector.offer(make_event(2))
        outcomes.append((collector.commit(), collector.failure_reason))

    collector = run_collector(disk.directory, config(), body)
    assert outcomes == [(False, "log_disk_full"), (True, "log_disk_full")]
    assert read_all(disk.directory / "logs")[0] == [make_event(2)]
    stats = collector.snapshot()
    assert (stats.sent, stats.dropped) == (1, 1)


def test_data_dir_and_dir_option_place_the_files(tmp_path: Path) -> None:
    options = config(dir="nested/logs", compression="none")
    run_collector(tmp_path / "data", options, offer_in_batches([make_event(1)], 1), worker=7)
    directory = log_dir(str(tmp_path / "data"), options)
    assert directory == tmp_path / "data" / "nested" / "logs"
    (only,) = files(directory)
    match = NAME.fullmatch(only.name)
    assert match is not None
    assert match["worker"] == "07"


# --- rotation and compression -------------------------------------------------------------------------------


def test_rotation_by_size_makes_compressed_files_sorting_in_creation_order(tmp_path: Path) -> None:
    events = [make_event(i, pad=200) for i in range(100)]
    line_size = len(ENCODER.encode(events[0])) + 1
    assert 4 * line_size < 4096 < 100 * line_size
    run_collector(tmp_path, config(rotate_bytes=4096), offer_in_batches(events, 4))
    rotated = files(tmp_path / "logs")
    assert len(rotated) >= 5
    assert all(path.name.endswith(".jsonl.zst") for path in rotated)
    matches = [NAME.fullmatch(path.name) for path in rotated]
    assert all(match is not None for match in matches)
    sequence = [int(match["seq"]) for match in matches if match is not None]
    assert sequence == list(range(1, len(rotated) + 1))  # sorted by name = the order they were made
    for path in rotated:
        assert len(unzstd(path.read_bytes())) <= 4096
    read, stats = read_all(tmp_path / "logs")
    assert read == events
    assert stats.skipped == 0


def test_rotation_by_time(tmp_path: Path) -> None:
    async def body(collector: LogCollector) -> None:
        collector.offer(make_event(1))
        await collector.flush()
        await asyncio.sleep(0.06)
        collector.offer(make_event(2))
        await collector.flush()

    run_collector(tmp_path, config(rotate_interval_s=0.05), body)
    rotated = files(tmp_path / "logs")
    assert len(rotated) == 2
    assert [list(read_events([path])) for path in rotated] == [[make_event(1)], [make_event(2)]]


def test_close_rotates_and_compresses_the_last_file(tmp_path: Path) -> None:
    events = [make_event(i, pad=200) for i in range(30)]
    run_collector(tmp_path, config(rotate_bytes=4096), offer_in_batches(events, 5))
    directory = tmp_path / "logs"
    assert files(directory, ".jsonl") == []
    assert files(directory, ".tmp") == []
    last = files(directory)[-1]
    assert last.name.endswith(".jsonl.zst")
    assert list(read_events([last]))[-1] == events[-1]


def test_with_compression_none_files_stay_plain(tmp_path: Path) -> None:
    events = [make_event(i, pad=200) for i in range(30)]
    run_collector(tmp_path, config(rotate_bytes=4096, compression="none"), offer_in_batches(events, 5))
    plain = files(tmp_path / "logs")
    assert len(plain) >= 2
    assert all(path.name.endswith(".jsonl") for path in plain)
    assert read_all(tmp_path / "logs")[0] == events


def test_a_collector_that_wrote_nothing_leaves_no_file(tmp_path: Path) -> None:
    async def body(collector: LogCollector) -> None:
        await collector.flush()

    collector = run_collector(tmp_path, config(), body)
    assert files(tmp_path / "logs") == []
    assert collector.snapshot() == CollectorStats(required=True)


@pytest.mark.parametrize(("fsync", "durability"), [("none", "process"), ("interval", "process"), ("none", "power")])
def test_fsync_policies_write_every_event(tmp_path: Path, fsync: str, durability: str) -> None:
    events = [make_event(i) for i in range(12)]
    options = config(fsync=fsync, fsync_interval_s=0.01, durability=durability)
    run_collector(tmp_path, options, offer_in_batches(events, 3))
    read, stats = read_all(tmp_path / "logs")
    assert read == events
    assert stats.skipped == 0


def test_fsync_policy_decides_when_data_is_synced(tmp_path: Path) -> None:
    """none: never by the collector; interval: by the maintenance loop; power: sync() before the answer."""
    unsynced: dict[str, list[bool]] = {}

    def recorder(policy: str) -> Callable[[LogCollector], Awaitable[None]]:
        async def body(collector: LogCollector) -> None:
            collector.offer(make_event(1))
            collector.commit()
            unsynced.setdefault(policy, []).append(collector._unsynced)
            if policy == "power":
                await collector.sync()
            else:
                await asyncio.sleep(0.2)  # several maintenance passes: an interval policy syncs within them
            unsynced[policy].append(collector._unsynced)

        return body

    cases: dict[str, dict[str, object]] = {
        "none": {},
        "interval": {"fsync": "interval", "fsync_interval_s": 0.02},
        "power": {"durability": "power"},
    }
    for policy, options in cases.items():
        run_collector(tmp_path / policy, config(flush_interval_ms=10, **options), recorder(policy))
    assert unsynced == {"none": [True, True], "interval": [True, False], "power": [True, False]}


# --- the counters ---------------------------------------------------------------------------------------------


def test_stats_counters_are_exact_over_several_rounds(tmp_path: Path) -> None:
    async def body(collector: LogCollector) -> None:
        for round_ in range(3):
            for i in range(8):
                collector.offer(make_event(round_ * 100 + i))
            assert collector.snapshot().received == round_ * 8  # counted when written
            await collector.flush()
            stats = collector.snapshot()
            assert (stats.received, stats.sent) == ((round_ + 1) * 8, (round_ + 1) * 8)

    collector = run_collector(tmp_path, config(), body)
    snapshot = collector.snapshot()
    assert snapshot.last_success_s > 0  # it delivered
    assert msgspec.structs.replace(snapshot, last_success_s=0.0) == CollectorStats(
        received=24, sent=24, dropped=0, errors=0, pending=0, required=True
    )
    assert len(read_all(tmp_path / "logs")[0]) == 24


def test_build_collector_makes_a_log_collector(tmp_path: Path) -> None:
    async def main() -> None:
        collector = registry().build_collector("archive", config(), CollectorContext(str(tmp_path), 1))
        assert isinstance(collector, LogCollector)
        assert collector.name == "archive"
        assert collector.health().healthy
        await collector.start()
        collector.offer(make_event(5))
        await collector.close(5.0)

    asyncio.run(main())
    assert read_all(tmp_path / "logs")[0] == [make_event(5)]


# --- the reader ---------------------------------------------------------------------------------------------


def test_reader_skips_and_counts_a_torn_last_line(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(5)]
    whole = ENCODER.encode_lines(events)
    torn = ENCODER.encode(make_event(99))[:37]
    path = tmp_path / "events-20240101T000000000Z-w00-p1-0001.jsonl"
    path.write_bytes(whole + torn)
    read, stats = read_all(path)
    assert read == events
    assert stats.events == 5
    assert stats.skipped == 1
    assert stats.skipped_at == [f"{path}:6"]


def test_reader_skips_a_corrupt_line_and_reads_on(tmp_path: Path) -> None:
    path = tmp_path / "events-20240101T000000000Z-w00-p1-0001.jsonl"
    path.write_bytes(
        ENCODER.encode_lines([make_event(1)]) + b'{"id": "broken"\n' + b"\n" + ENCODER.encode_lines([make_event(2)])
    )
    read, stats = read_all(path)
    assert read == [make_event(1), make_event(2)]
    assert stats.skipped == 2
    assert stats.skipped_at == [f"{path}:2", f"{path}:3"]


def test_reader_keeps_what_decodes_of_a_truncated_gzip(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(500)]
    blob = gzip.compress(ENCODER.encode_lines(events))
    path = tmp_path / "events-20240101T000000000Z-w00-p1-0001.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])
    read, stats = read_all(path)
    assert 0 < len(read) < len(events)
    assert read == events[: len(read)]
    assert stats.events == len(read)
    assert stats.skipped == 1
    assert stats.skipped_at == [f"{path}:{len(read) + 1}"]
    path.write_bytes(blob[:-8])  # only the trailer (CRC and size) is missing: every line decodes
    read, stats = read_all(path)
    assert read == events
    assert stats.skipped == 1


def test_reader_reads_files_in_name_order_and_ignores_other_files(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    names = [
        "events-20240101T000000002Z-w01-p9-0001.jsonl",
        "events-20240101T000000001Z-w00-p8-0002.jsonl.gz",
        "events-20240101T000000000Z-w00-p8-0001.jsonl.gz",
    ]
    for index, name in enumerate(names):
        payload = ENCODER.encode_lines([make_event(index)])
        (directory / name).write_bytes(gzip.compress(payload) if name.endswith(".gz") else payload)
    (directory / "events-20240101T000000003Z-w00-p8-0003.jsonl.gz.tmp").write_bytes(b"partial")
    (directory / "notes.jsonl").write_bytes(ENCODER.encode_lines([make_event(50)]))
    assert [path.name for path in log_files([directory])] == sorted(names)
    read, stats = read_all(directory)
    assert read == [make_event(2), make_event(1), make_event(0)]
    assert stats.skipped == 0
    extra = tmp_path / "other.jsonl"
    extra.write_bytes(ENCODER.encode_lines([make_event(77)]))
    assert [event.id for event in read_events([directory, extra])][-1] == make_event(77).id


# --- orphans ------------------------------------------------------------------------------------------------


def orphan(directory: Path, pid: int, seq: int, events: Sequence[Event], tail: bytes = b"") -> Path:
    path = directory / f"events-20240101T00000000{seq}Z-w00-p{pid}-{seq:04d}.jsonl"
    path.write_bytes(ENCODER.encode_lines(events) + tail)
    return path


def test_finalize_orphans_of_one_pid(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    mine = orphan(directory, 111, 1, [make_event(1), make_event(2)])
    empty = orphan(directory, 111, 2, [])
    other = orphan(directory, 11, 3, [make_event(3)])
    done = finalize_orphans(directory, 111)
    assert done == [mine.with_name(mine.name + ".zst")]
    assert not mine.exists()
    assert not empty.exists()
    assert other.exists()
    assert list(read_events([done[0]])) == [make_event(1), make_event(2)]


def test_finalize_orphans_of_all_pids(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    first = orphan(directory, 111, 1, [make_event(1)])
    second = orphan(directory, 222, 2, [make_event(2)], tail=b'{"id": "torn')
    empty = orphan(directory, 333, 3, [])
    stale = directory / "events-20240101T000000009Z-w00-p444-0009.jsonl.gz.tmp"
    stale.write_bytes(b"half a gzip")
    done = finalize_orphans(directory)
    assert done == [first.with_name(first.name + ".zst"), second.with_name(second.name + ".zst")]
    assert sorted(path.name for path in directory.iterdir()) == sorted(path.name for path in done)
    assert not empty.exists()
    assert not stale.exists()
    read, stats = read_all(directory)
    assert read == [make_event(1), make_event(2)]
    assert stats.skipped == 1  # the torn tail survives compression and is skipped by readers


def test_finalize_orphans_of_one_pid_leaves_other_workers_compressions_alone(tmp_path: Path) -> None:
    # A live worker (pid 222) is compressing its rotated file while pid 111's orphans are finalized.
    directory = tmp_path / "logs"
    directory.mkdir()
    orphan(directory, 111, 1, [make_event(1)])
    in_progress = directory / "events-20240101T000000002Z-w01-p222-0002.jsonl.gz.tmp"
    in_progress.write_bytes(gzip.compress(ENCODER.encode_lines([make_event(2)])))
    finalize_orphans(directory, 111)
    assert in_progress.exists()


def test_finalize_orphans_without_a_directory(tmp_path: Path) -> None:
    assert finalize_orphans(tmp_path / "absent") == []


@pytest.mark.parametrize(("codec", "level"), [("zstd", None), ("zstd", 19), ("gzip", None), ("gzip", 1)])
def test_compress_replaces_the_file_with_its_compressed_copy(tmp_path: Path, codec: str, level: int | None) -> None:
    path = orphan(tmp_path, 5, 1, [make_event(i) for i in range(3)])
    original = path.read_bytes()
    target = compress(path, codec, level)  # type: ignore[arg-type]
    assert target == path.with_name(path.name + (".zst" if codec == "zstd" else ".gz"))
    assert not path.exists()
    blob = target.read_bytes()
    assert (unzstd(blob) if codec == "zstd" else gzip.decompress(blob)) == original
    assert files(tmp_path) == [target]
    if codec == "gzip":  # the header's XFL byte: 4 for the fastest level, 0 in between (6), 2 for the best
        assert blob[8] == (4 if level == 1 else 0)


def test_compress_with_none_leaves_the_file(tmp_path: Path) -> None:
    path = orphan(tmp_path, 5, 1, [make_event(1)])
    assert compress(path, "none") == path
    assert files(tmp_path) == [path]


def test_gzip_option_with_a_level_makes_gz_files(tmp_path: Path) -> None:
    events = [make_event(i, pad=200) for i in range(30)]
    run_collector(
        tmp_path, config(rotate_bytes=4096, compression="gzip", compression_level=1), offer_in_batches(events, 5)
    )
    rotated = files(tmp_path / "logs")
    assert len(rotated) >= 2
    assert all(path.name.endswith(".jsonl.gz") and path.read_bytes()[8] == 4 for path in rotated)
    assert read_all(tmp_path / "logs")[0] == events


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"compression_level": 20}, "compression_level of zstd must be within 1-19"),
        ({"compression": "gzip", "compression_level": 0}, "compression_level of gzip must be within 1-9"),
        ({"compression": "none", "compression_level": 3}, "compression_level needs a codec"),
        ({"rotate_bytes": 1 << 20, "max_disk_bytes": (2 << 20) - 1}, "at least twice rotate_bytes"),
        ({"max_disk_bytes": 1000}, ">= 1048576"),
        ({"disk_warn_ratio": 1.5}, "<= 1"),
        ({"compression": "lz4"}, "Invalid enum value 'lz4'"),
    ],
)
def test_invalid_compression_and_budget_options_are_refused(options: dict[str, object], problem: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(problem)):
        config(**options)


def test_finalize_orphans_with_gzip_and_a_level(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    mine = orphan(directory, 111, 1, [make_event(1)])
    stale = directory / "events-20240101T000000009Z-w00-p111-0009.jsonl.zst.tmp"
    stale.write_bytes(b"half a zstd frame")
    done = finalize_orphans(directory, 111, "gzip", 9)
    assert done == [mine.with_name(mine.name + ".gz")]
    assert done[0].read_bytes()[8] == 2  # XFL: the best compression
    assert not stale.exists()
    assert list(read_events(done)) == [make_event(1)]


def test_finalize_orphans_with_compression_none_only_clears_empty_files_and_temporaries(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    kept = orphan(directory, 111, 1, [make_event(1)])
    empty = orphan(directory, 111, 2, [])
    assert finalize_orphans(directory, None, "none") == []
    assert kept.exists()
    assert not empty.exists()


def test_reader_keeps_what_decodes_of_a_truncated_zstd(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(2000)]
    path = orphan(tmp_path, 1, 1, events)
    blob = compress(path).read_bytes()
    truncated = tmp_path / "events-20240101T000000002Z-w00-p1-0002.jsonl.zst"
    truncated.write_bytes(blob[: len(blob) // 2])
    read, stats = read_all(truncated)
    assert 0 < len(read) < len(events)
    assert read == events[: len(read)]
    assert stats.skipped == 1
    assert stats.skipped_at == [f"{truncated}:{len(read) + 1}"]
    truncated.write_bytes(blob[:-4])  # only the checksum is missing: every line decodes, the end is still noticed
    read, stats = read_all(truncated)
    assert read == events
    assert stats.skipped == 1


def test_reader_reads_concatenated_zstd_frames_whole(tmp_path: Path) -> None:
    first, second = [make_event(1), make_event(2)], [make_event(3)]
    compressor = zstandard.ZstdCompressor()
    path = tmp_path / "events-20240101T000000000Z-w00-p1-0001.jsonl.zst"
    path.write_bytes(
        compressor.compress(ENCODER.encode_lines(first)) + compressor.compress(ENCODER.encode_lines(second))
    )
    read, stats = read_all(path)
    assert read == first + second
    assert stats.skipped == 0


def test_reader_over_a_directory_mixing_plain_gzip_and_zstd(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    written = []
    for seq, codec in enumerate(["zstd", "none", "gzip", "zstd"], start=1):
        events = [make_event(seq * 10 + i) for i in range(seq)]
        written += events
        compress(orphan(directory, 7, seq, events), codec)  # type: ignore[arg-type]
    (directory / "events-20240101T000000005Z-w00-p7-0005.jsonl.zst.tmp").write_bytes(b"partial")
    assert [path.name.rsplit(".", 1)[-1] for path in log_files([directory])] == ["zst", "jsonl", "gz", "zst"]
    read, stats = read_all(directory)
    assert read == written
    assert (stats.events, stats.skipped) == (len(written), 0)


def test_compression_threads_run_below_serving_priority_but_above_nice_19() -> None:
    niceness: list[int] = []

    def probe() -> None:
        lower_priority()
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert niceness == [max(COMPRESSION_NICE, os.getpriority(os.PRIO_PROCESS, 0))]
    assert 0 < COMPRESSION_NICE < 19


@pytest.mark.e2e
def test_a_failed_compression_leaves_no_temporary_and_is_retried_once_there_is_room(tmp_path: Path) -> None:
    """ENOSPC on a small tmpfs mounted on the log directory (root only): the compression of a rotated file fails,
    its temporary is removed at once, and it succeeds by itself once space is freed."""
    logs = tmp_path / "logs"
    logs.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(logs)], capture_output=True, check=False
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mount.stderr.decode(errors='replace').strip()}")
    try:

        async def body(collector: LogCollector) -> None:
            for i in range(200):
                collector.offer(make_event(i))
            await collector.flush()
            filler = logs / "filler"
            fill = os.open(filler, os.O_WRONLY | os.O_CREAT)
            with contextlib.suppress(OSError):  # page by page until ENOSPC: not one page left
                while True:
                    os.write(fill, b"x" * 4096)
            os.close(fill)
            await wait_until(lambda: collector.stats.errors >= 1, timeout_s=10)  # rotated by age, not compressed
            plain = [p for p in files(logs, ".jsonl") if p.stat().st_size]
            assert len(plain) == 1 and not files(logs, ".zst")
            assert not files(logs, ".tmp")  # its temporary gone: the space it took is free again
            filler.unlink()  # space freed: the retry compresses it
            await wait_until(lambda: len(files(logs, ".jsonl.zst")) == 1 and not plain[0].exists(), timeout_s=10)

        run_collector(tmp_path, config(rotate_interval_s=0.3), body)
        events, stats = read_all(logs)
        assert [event.dims["imp"] for event in events] == [f"imp-{i}" for i in range(200)] and stats.skipped == 0
    finally:
        subprocess.run(["umount", str(logs)], check=True)
