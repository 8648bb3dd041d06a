"""The log directory's disk budget (collectors/log/budget.py) over real files in temporary directories: retention
order, deleting shipped files under pressure, the warning, refusing and allowing writes, and the /metrics gauges.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from conftest import load_config, make_event
from trackpoint.collectors.base import CollectorContext
from trackpoint.collectors.log.budget import DiskBudget, LogDiskMetrics, usage
from trackpoint.collectors.log.collector import LogCollector
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.collectors.log.shipping.shipper import MANIFEST_NAME, Manifest, Shipped

MiB = 1 << 20
DEAD_PID = 2**22 + 1  # above Linux's pid_max default: never a running process


def options(**settings: object) -> LogCollectorConfig:
    return msgspec.convert({"rotate_bytes": MiB, **settings}, LogCollectorConfig)


def log_file(
    directory: Path, seq: int, size: int, *, suffix: str = ".zst", age_s: float = 0.0, pid: int = DEAD_PID
) -> Path:
    """A finished (compressed) log file of `size` bytes whose last write was `age_s` ago."""
    path = directory / f"events-20240101T0000000{seq:02d}Z-w00-p{pid}-{seq:04d}.jsonl{suffix}"
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def ship(directory: Path, *paths: Path) -> None:
    """Records files as shipped, as the shipper does after a verified upload (delete_after_upload off)."""
    manifest = Manifest(directory / MANIFEST_NAME)
    for path in paths:
        size = path.stat().st_size
        manifest.append(Shipped(name=path.name, url="s3://b/" + path.name, node="n", bytes=size, md5="", sha256="",
                                verified_by="checksum", uploaded_at="2024-01-01T00:00:00Z"))  # fmt: skip


def names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("events-*"))


def test_retention_deletes_finished_files_older_than_it_oldest_first(tmp_path: Path) -> None:
    old = [log_file(tmp_path, seq, 1000, age_s=7200 - seq) for seq in range(3)]
    young = log_file(tmp_path, 3, 1000, age_s=60)
    waiting = log_file(tmp_path, 4, 1000, suffix="", age_s=7200)  # not compressed yet: compression comes first
    budget = DiskBudget("log", tmp_path, options(retention_s=3600))
    measured = budget.check()
    assert measured.deleted == old
    assert names(tmp_path) == [young.name, waiting.name]
    assert (measured.bytes, measured.waiting_bytes) == (2000, 1000)
    assert budget.allows(10**12)  # no max_disk_bytes: never refuses


def test_with_compression_none_retention_takes_plain_files_of_gone_workers(tmp_path: Path) -> None:
    old = log_file(tmp_path, 1, 1000, suffix="", age_s=7200)
    current = log_file(tmp_path, 2, 1000, suffix="", age_s=7200, pid=os.getpid())  # a live worker's latest file
    assert DiskBudget("log", tmp_path, options(retention_s=3600, compression="none")).check().deleted == [old]
    assert current.exists()


def test_with_shipping_retention_deletes_only_shipped_files(tmp_path: Path) -> None:
    shipped, unshipped = log_file(tmp_path, 1, 1000, age_s=7200), log_file(tmp_path, 2, 1000, age_s=7200)
    ship(tmp_path, shipped)
    config = options(retention_s=3600, ship={"url": "s3://bucket/logs", "delete_after_upload": False})
    assert DiskBudget("log", tmp_path, config).check().deleted == [shipped]
    assert unshipped.exists()


def test_above_the_warn_ratio_shipped_files_go_oldest_first_until_below_it(tmp_path: Path) -> None:
    files = [log_file(tmp_path, seq, MiB // 2) for seq in range(8)]  # 4 MiB in all
    ship(tmp_path, *files[:5])
    budget = DiskBudget("log", tmp_path, options(max_disk_bytes=4 * MiB, disk_warn_ratio=0.75))
    measured = budget.check()
    # 4 MiB + the manifest is above 3 MiB: the two oldest shipped files make it fit, the rest stay.
    assert measured.deleted == files[:3]
    assert names(tmp_path) == [path.name for path in files[3:]]
    assert measured.bytes < 3 * MiB
    assert (budget.warning, budget.full) == (False, False)


def test_warning_then_full_then_allowed_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "trackpoint.collectors.log")
    budget = DiskBudget("log", tmp_path, options(max_disk_bytes=4 * MiB, disk_warn_ratio=0.5))
    first = log_file(tmp_path, 1, 2 * MiB)
    budget.check()
    assert (budget.warning, budget.full) == (True, False)
    assert budget.allows(MiB)
    assert not budget.allows(2 * MiB)  # this worker's writes since the check would reach the budget
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert "50% of its budget" in caplog.records[0].getMessage()

    budget.check()  # still above the ratio: no second line within the minute
    assert len(caplog.records) == 1

    second = log_file(tmp_path, 2, 2 * MiB)  # unshipped: nothing may go
    budget.check()
    assert (budget.warning, budget.full) == (True, True)
    assert not budget.allows(0)
    assert second.exists() and first.exists()
    assert caplog.records[-1].levelname == "ERROR"
    assert "refusing new events (503 log_disk_full)" in caplog.records[-1].getMessage()

    ship(tmp_path, first)  # shipped meanwhile (delete_after_upload off): the next check makes room
    measured = budget.check()
    assert measured.deleted == [first]
    assert (budget.warning, budget.full) == (True, False)
    assert budget.allows(0)
    assert "back under its disk budget" in caplog.records[-1].getMessage()


def test_usage_counts_every_file_and_the_backlog_of_compression(tmp_path: Path) -> None:
    log_file(tmp_path, 1, 100)
    log_file(tmp_path, 2, 200, suffix="")  # a dead worker's file: waiting for compression
    log_file(tmp_path, 3, 400, suffix="", pid=os.getpid())  # this process's latest: being written
    (tmp_path / "events-20240101T000000004Z-w00-p1-0004.jsonl.zst.tmp").write_bytes(b"t" * 800)
    measured = usage(tmp_path, options())
    assert (measured.bytes, measured.waiting_bytes) == (1500, 200)
    assert usage(tmp_path, options(compression="none")).waiting_bytes == 0
    assert usage(tmp_path / "absent", options()).bytes == 0


def test_disk_metrics_show_each_log_collectors_directory(tmp_path: Path) -> None:
    settings = {"type": "log", "max_disk_bytes": 2 * MiB, "rotate_bytes": MiB}
    path = tmp_path / "trackpoint.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "collectors": {"log": settings}}))
    config = load_config(path).config
    (tmp_path / "logs").mkdir()
    log_file(tmp_path / "logs", 1, 1900 * 1024, suffix="")
    samples = {
        (metric.name, sample.labels["collector"]): sample.value
        for metric in LogDiskMetrics(lambda: config).collect()
        for sample in metric.samples
    }
    assert samples == {
        ("trackpoint_log_disk_bytes", "log"): 1900 * 1024,
        ("trackpoint_log_uncompressed_waiting_bytes", "log"): 1900 * 1024,
        ("trackpoint_log_disk_budget_bytes", "log"): 2 * MiB,
        ("trackpoint_log_disk_warning", "log"): 1,
    }


def test_the_collector_refuses_the_group_that_would_pass_the_budget(tmp_path: Path) -> None:
    """Groups of 100 lines until one would pass max_disk_bytes: that one is refused whole (nothing of it written),
    from this worker's own count before any check ran, and the directory stays within the budget."""
    config = options(max_disk_bytes=2 * MiB, fsync="none", compression="none")
    line = len(msgspec.json.encode(make_event(0))) + 1

    async def main() -> tuple[int, int, bool]:
        collector = LogCollector("log", config, CollectorContext(str(tmp_path), worker=1))
        await collector.start()
        try:
            written = 0
            for group in range(2 * MiB // (100 * line) + 2):
                for i in range(100):
                    collector.offer(make_event(group * 100 + i))
                if not collector.commit():
                    break
                written += 100
            return written, collector.stats.dropped, collector.disk_allows(100 * line)
        finally:
            await collector.close(5.0)

    written, dropped, allows = asyncio.run(main())
    assert (dropped, allows) == (100, False)
    used = usage(tmp_path / "logs", config).bytes
    assert used == sum(len(msgspec.json.encode(make_event(i))) + 1 for i in range(written))  # accepted lines only
    assert 2 * MiB - 100 * (line + 4) <= used < 2 * MiB  # the refused group would not have fitted


def test_a_tracker_at_its_budget_answers_503_log_disk_full_and_acknowledges_only_what_it_wrote(
    tracker_factory: Any,
) -> None:
    """End to end: impressions until the log directory reaches max_disk_bytes. Every 2xx has its line; the rest are
    503 `log_disk_full`, counted, and /readyz fails while the budget is full."""
    log = {"type": "log", "max_disk_bytes": MiB, "rotate_bytes": 256 << 10, "compression": "none", "fsync": "none"}
    tracker = tracker_factory({"collectors": {"log": log}})
    acknowledged: list[str] = []
    refused = 0
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=10) as sock:
        stream = sock.makefile("rb")
        for i in range(6000):
            imp = f"budget-{i:05d}-" + "x" * 48
            sock.sendall(f"GET /i?imp={imp}&cid=c&crid=cr&pub=p HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            status_line = stream.readline()
            headers = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            stream.read(int(headers.get("content-length", "0")))
            if status_line.startswith(b"HTTP/1.1 200"):
                acknowledged.append(imp)
                continue
            assert status_line.startswith(b"HTTP/1.1 503"), status_line
            assert headers["x-reject-reason"] == "log_disk_full"
            refused += 1
            break  # the answer said Connection: close
    assert refused == 1 and 1000 < len(acknowledged) < 6000
    deadline = time.monotonic() + 10  # workers report their collectors' health once a second
    while tracker.admin("GET", "/readyz")[0] != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.admin("GET", "/readyz")[0] == 503
    assert tracker.wait_metric("trackpoint_rejected_total", 'reason="log_disk_full"', 1) == 1
    logged = {event.dims["imp"] for event in tracker.events()}
    assert set(acknowledged) <= logged
    assert sum(path.stat().st_size for path in (tracker.data_dir / "logs").iterdir()) <= MiB
