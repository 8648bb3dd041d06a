"""Tests of `trackpoint replay` as an operator reads it: counts that add up (sent, duplicates, filtered), the
JSON summary, progress by events and bytes, and files that are not tracker logs refused by name and line; a live
tracker's directory (files compressed and removed while they are read), one id logged with two prices (replay,
reconcile and report --logs count the same line), and a collector that gives up.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import zstandard
from typer.testing import CliRunner

from conftest import Tracker, free_port
from trackpoint.cli import app
from trackpoint.collectors.log.compression import compress
from trackpoint.collectors.log.reader import log_files, read_events
from trackpoint.event import Context, Event, Meta, derived_id
from trackpoint.replay import ReplayError, build_collectors, plan, replay

T0 = 1_795_821_700_000  # ms
REDIS_URL = os.environ.get("TRACKPOINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def event(type_name: str, imp: str, ts: int) -> Event:
    return Event(
        id=derived_id(type_name, [imp]),
        type=type_name,
        ts=ts,
        dims={"imp": imp, "cid": "summer-sale"},
        metrics={},
        ctx=Context(ip="127.0.0.0"),
        meta=Meta(worker=0, config="test"),
    )


def lines(events: list[Event]) -> bytes:
    return b"".join(msgspec.json.encode(e) + b"\n" for e in events)


def config(tmp_path: Path) -> Path:
    """Impressions and clicks logged, and a second log collector (`copy`) to replay into and read back."""
    path = tmp_path / "trackpoint.yaml"
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "collectors:\n  copy: {type: log, dir: copy}\n"
        "event_types:\n"
        "  impression: {preset: impression, collectors: [log, copy]}\n"
        "  click: {preset: click, collectors: [log]}\n",
        encoding="utf-8",
    )
    return path


def logs(tmp_path: Path) -> tuple[Path, list[Event], int]:
    """Two files, plain and zstd: 300 distinct impressions, 90 of them repeated (as retries are), 50 clicks, 10 of
    them repeated; and the number of repeated impressions."""
    rng = random.Random(17)
    impressions = [event("impression", f"imp-{i}", T0 + i) for i in range(300)]
    repeats = rng.sample(impressions, 90)
    clicks = [event("click", f"imp-{i}", T0 + i) for i in range(50)]
    stream = impressions + repeats + clicks + clicks[:10]
    rng.shuffle(stream)
    directory = tmp_path / "logs"
    directory.mkdir()
    (directory / "events-20261205T000000-w0.jsonl").write_bytes(lines(stream[:200]))
    compressed = zstandard.ZstdCompressor().compress(lines(stream[200:]))
    (directory / "events-20261205T010000-w0.jsonl.zst").write_bytes(compressed)
    return directory, stream, len(repeats)


def test_replay_counts_add_up_and_each_id_is_sent_once(tmp_path: Path) -> None:
    directory, stream, repeats = logs(tmp_path)
    result = CliRunner().invoke(app, ["replay", "--config", str(config(tmp_path)), "--collector", "copy",
                                      "--json", str(directory)])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["read"] == len(stream) == 450
    assert summary["duplicates"] == repeats  # a repeated click is no duplicate of this replay: it sends no click
    assert summary["filtered"] == 60  # the clicks, repeats too: `copy` does not take them
    assert summary["replayed"] == 300
    assert summary["read"] == summary["replayed"] + summary["duplicates"] + summary["filtered"]
    copy = summary["collectors"]["copy"]
    assert copy == {"events": 300, "sent": 300, "refused": 0, "retries": 0}
    assert summary["files"] == 2
    assert summary["bytes"] == sum(path.stat().st_size for path in directory.iterdir())
    written = list(read_events([tmp_path / "data" / "copy"]))
    assert sorted(e.id for e in written) == sorted({e.id for e in stream if e.type == "impression"})


def test_a_time_window_and_a_type_are_counted_as_filtered(tmp_path: Path) -> None:
    directory, stream, _ = logs(tmp_path)
    args = ["replay", "-c", str(config(tmp_path)), "--collector", "copy", "--json", "--type", "impression",
            "--since", str((T0 + 100) / 1000), "--until", str((T0 + 200) / 1000), str(directory)]  # fmt: skip
    summary = json.loads(CliRunner().invoke(app, args).stdout)
    inside = [e for e in stream if e.type == "impression" and T0 + 100 <= e.ts < T0 + 200]
    assert summary["replayed"] == len({e.id for e in inside}) == 100
    assert summary["duplicates"] == len(inside) - 100
    assert summary["filtered"] == len(stream) - len(inside)
    assert summary["collectors"]["copy"]["sent"] == 100


def test_the_table_says_how_the_counts_add_up(tmp_path: Path) -> None:
    directory, _, repeats = logs(tmp_path)
    result = CliRunner().invoke(app, ["replay", "-c", str(config(tmp_path)), "--collector", "copy", str(directory)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stderr.split())
    assert f"read 450 events = 300 replayed + {repeats} duplicates (sent once) + 60 filtered out" in text
    assert "replay ━" not in result.stderr  # no progress bar when nobody watches a terminal


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("events-x.jsonl", b"time,campaign\n1,a\n", ":1: not a trackpoint log"),
        ("access.log", b'127.0.0.1 - - [05/Dec/2026] "GET /i HTTP/1.1" 200\n', ":1: not a trackpoint log"),
        ("events-y.jsonl", b'{"id": "x", "type": "impression"}\n', ":1: not a trackpoint log"),
        ("events-z.jsonl.zst", b"this is not zstd at all\n", ": not a trackpoint log: cannot be read as zstd"),
        ("events-z.jsonl.gz", b"this is not gzip at all\n", ": not a trackpoint log: cannot be read as gzip"),
    ],
)
def test_a_file_that_is_not_a_tracker_log_is_refused_by_name_before_anything_is_sent(
    tmp_path: Path, name: str, content: bytes, where: str
) -> None:
    directory, _, _ = logs(tmp_path)
    stranger = tmp_path / name
    stranger.write_bytes(content)
    args = ["replay", "-c", str(config(tmp_path)), "--collector", "copy", str(directory), str(stranger)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2  # nothing could start (cli reference): nothing was sent
    assert f"{stranger}{where}" in result.stderr
    assert not (tmp_path / "data" / "copy").exists() or not list(read_events([tmp_path / "data" / "copy"]))


def test_a_torn_last_line_is_a_log_still(tmp_path: Path) -> None:
    directory, _, _ = logs(tmp_path)
    torn = directory / "events-20261205T020000-w0.jsonl"
    torn.write_bytes(lines([event("impression", "late", T0 + 999)]) + b'{"id":"abc","ty')
    result = CliRunner().invoke(app, ["replay", "-c", str(config(tmp_path)), "--collector", "copy", "--json",
                                      str(directory)])  # fmt: skip
    summary = json.loads(result.stdout)
    assert summary["replayed"] == 301
    assert summary["torn_lines"] == 1
    assert summary["torn_at"] == [f"{torn}:2"]


def test_a_compressed_log_cut_short_is_replayed_as_far_as_it_decodes_and_named(tmp_path: Path) -> None:
    """Two zstd files compressed as the tracker does, each cut to half its size: the small one decodes to nothing,
    the large one to its first part. Replay sends what decoded, goes on with the other files and names both."""
    from trackpoint.collectors.log.compression import compress

    directory, _, _ = logs(tmp_path)
    cut = []
    for name, count in (("events-20261205T020000-w0.jsonl", 3), ("events-20261205T030000-w0.jsonl", 20_000)):
        plain = directory / name
        plain.write_bytes(lines([event("impression", f"{name}-{i}", T0 + 1000 + i) for i in range(count)]))
        compressed = compress(plain)
        whole = compressed.read_bytes()
        compressed.write_bytes(whole[: len(whole) // 2])
        cut.append(str(compressed))
    decoded = len(list(read_events([Path(cut[1])])))
    assert 0 < decoded < 20_000
    args = ["replay", "-c", str(config(tmp_path)), "--collector", "copy", str(directory)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["replayed"] == 300 + decoded
    assert summary["collectors"]["copy"]["sent"] == 300 + decoded
    assert summary["torn_lines"] == 2
    assert summary["truncated_files"] == cut
    assert len(list(read_events([tmp_path / "data" / "copy"]))) == 300 + decoded
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    text = " ".join(table.stderr.split())
    assert f"cut short: {cut[0]}" in text and f"cut short: {cut[1]}" in text


def test_progress_is_told_events_and_bytes_up_to_the_whole(tmp_path: Path) -> None:
    from trackpoint.config import load
    from trackpoint.plugins import registry

    directory = tmp_path / "logs"
    directory.mkdir()
    many = [event("impression", f"imp-{i}", T0 + i) for i in range(10_000)]
    (directory / "events-a.jsonl").write_bytes(lines(many[:5000]))
    (directory / "events-b.jsonl.gz").write_bytes(gzip.compress(lines(many[5000:])))
    loaded = load(config(tmp_path), registry=registry())
    replay_plan = plan(loaded.config, collectors=["copy"])
    told: list[tuple[int, int]] = []
    report = asyncio.run(replay([directory], build_collectors(loaded.config, replay_plan, registry()), replay_plan,
                                lambda events, size: told.append((events, size))))  # fmt: skip
    total = sum(path.stat().st_size for path in directory.iterdir())
    assert len(told) >= 3
    assert told == sorted(told)
    assert told[-1] == (10_000, total) == (report.read.events, report.bytes)
    assert 0 < told[0][1] < total


def test_the_library_refuses_a_file_that_is_not_a_log(tmp_path: Path) -> None:
    from trackpoint.config import load
    from trackpoint.plugins import registry

    stranger = tmp_path / "notes.txt"
    stranger.write_text("hello\n")
    loaded = load(config(tmp_path), registry=registry())
    replay_plan = plan(loaded.config, collectors=["copy"])
    with pytest.raises(ReplayError, match=r"notes\.txt:1: not a trackpoint log"):
        asyncio.run(replay([stranger], build_collectors(loaded.config, replay_plan, registry()), replay_plan))


def test_on_a_terminal_a_progress_bar_shows_bytes_events_rate_and_time_left(tmp_path: Path) -> None:
    directory, _, _ = logs(tmp_path)
    args = ["replay", "-c", str(config(tmp_path)), "--collector", "copy", str(directory)]
    result = CliRunner().invoke(app, args, env={"TTY_COMPATIBLE": "1", "COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    total = sum(path.stat().st_size for path in directory.iterdir())
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "\n", result.stderr)
    bar = " ".join(" ".join(plain.split()).split())
    bar = bar[bar.rindex(f"{total / 1000:.1f}/") :]  # the last state of the bar
    assert bar.startswith(f"{total / 1000:.1f}/{total / 1000:.1f} kB")
    assert re.match(r"[\d.]+/[\d.]+ kB [\d.]+ [kM]?B/s · 450 events, [\d,]+/s · 0:00:00", bar), bar


# --- a live tracker's directory ------------------------------------------------------------------------------------


def test_a_file_compressed_after_it_was_listed_is_read_under_its_new_name(tmp_path: Path) -> None:
    from trackpoint.config import load
    from trackpoint.plugins import registry

    directory, stream, _ = logs(tmp_path)
    files = log_files([directory])
    plain = directory / "events-20261205T000000-w0.jsonl"
    assert plain in files
    compressed = compress(plain, "gzip")  # as a live tracker's compression does between listing and reading
    loaded = load(config(tmp_path), registry=registry())
    replay_plan = plan(loaded.config, collectors=["copy"])
    report = asyncio.run(replay(files, build_collectors(loaded.config, replay_plan, registry()), replay_plan))
    assert (report.read.events, report.read.missing, report.replayed) == (len(stream), [], 300)
    assert (
        report.bytes == compressed.stat().st_size + (directory / "events-20261205T010000-w0.jsonl.zst").stat().st_size
    )


def test_a_file_listed_under_both_names_is_read_once(tmp_path: Path) -> None:
    directory, _, _ = logs(tmp_path)
    plain = directory / "events-20261205T000000-w0.jsonl"
    # The moment between compress()'s rename of the compressed file and its removal of the plain one.
    (directory / (plain.name + ".zst")).write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    assert [path.name for path in log_files([directory])] == [
        plain.name + ".zst",
        "events-20261205T010000-w0.jsonl.zst",
    ]


def test_a_file_gone_is_named_and_skipped(tmp_path: Path) -> None:
    directory, stream, _ = logs(tmp_path)
    (directory / "events-20261205T020000-w0.jsonl").symlink_to(tmp_path / "shipped-and-deleted.jsonl")
    args = ["replay", "-c", str(config(tmp_path)), "--collector", "copy", "--json", str(directory)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["missing_files"] == [str(directory / "events-20261205T020000-w0.jsonl")]
    assert (summary["read"], summary["replayed"], summary["files"]) == (len(stream), 300, 3)
    table = CliRunner().invoke(app, [*args[:-2], str(directory)])
    assert table.exit_code == 0 and "gone: " in table.stderr and "Traceback" not in table.output


def test_a_report_over_logs_reads_a_file_compressed_after_it_was_listed(tmp_path: Path) -> None:
    from trackpoint.collectors.rollup.config import RollupCollectorConfig
    from trackpoint.collectors.rollup.logs import logs_report
    from trackpoint.collectors.rollup.report import make_query

    directory, stream, _ = logs(tmp_path)
    (directory / "events-20261205T020000-w0.jsonl").symlink_to(tmp_path / "shipped-and-deleted.jsonl")
    files = log_files([directory])
    compress(directory / "events-20261205T000000-w0.jsonl", "gzip")
    rollup = RollupCollectorConfig()
    query = make_query(str(T0 // 1000 - 3600), str(T0 // 1000 + 3600), types=(), by=None, where=(),
                       default_by=rollup.dims)  # fmt: skip
    result = logs_report(files, query, rollup.roles)
    assert result.events == len(stream)
    assert result.missing == [str(directory / "events-20261205T020000-w0.jsonl")]


@pytest.mark.e2e
def test_replay_reconcile_and_report_read_a_live_trackers_directory(tracker_factory: Any) -> None:
    """A live directory: files rotated every 0.5 s, gzip-compressed (renamed, then removed) while the tools read."""
    stream = f"tp-live-{os.getpid()}-{time.monotonic_ns()}"
    tracker: Tracker = tracker_factory(
        {
            "collectors": {
                "log": {"type": "log", "rotate_bytes": 4096, "rotate_interval_s": 0.5, "compression": "gzip"},
                "rs": {"type": "redis_streams", "url": "redis://127.0.0.1:6379/0", "stream": stream},
            },
            "event_types": {"impression": {"preset": "impression", "collectors": ["log", "rs"]}},
        },
        workers=2,
    )
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            for _ in range(20):
                urllib.request.urlopen(f"http://127.0.0.1:{tracker.port}/i?imp=live-{i}&cid=c1", timeout=5).read()
                i += 1
            time.sleep(0.01)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    logs_dir = str(tracker.data_dir / "logs")
    try:
        time.sleep(2)  # some files rotated and compressed already
        for _ in range(4):
            replayed = cli("replay", "-c", str(tracker.config_path), "--collector", "rs", "--json", logs_dir)
            assert replayed.returncode == 0, replayed.stderr
            summary = json.loads(replayed.stdout)
            assert summary["read"] == summary["replayed"] + summary["duplicates"] + summary["filtered"] > 0
            assert summary["missing_files"] == [] and "not a trackpoint log" not in replayed.stderr
            report = cli("report", "--logs", logs_dir, "-c", str(tracker.config_path), "--format", "json",
                         "--from", str(int(time.time()) - 3600), "--to", str(int(time.time()) + 3600))  # fmt: skip
            assert report.returncode == 0, report.stderr
            assert "Traceback" not in replayed.stderr + report.stderr
    finally:
        stop.set()
        sender.join()
    assert tracker.stop() == 0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trackpoint", *args], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


# --- one id logged with two prices ---------------------------------------------------------------------------------


def win(imp: str, ts: int, price_micros: int) -> Event:
    return Event(
        id=derived_id("win", [imp]),
        type="win",
        ts=ts,
        dims={"imp": imp, "cid": "c1"},
        metrics={"price": price_micros},
        ctx=Context(ip="127.0.0.0"),
        meta=Meta(worker=0, config="test"),
    )


def banker_setup(tmp_path: Path) -> Path:
    path = tmp_path / "banker.yaml"
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "collectors:\n  banker: {type: banker, unknown_campaigns: create}\n"
        "event_types:\n  win: {preset: win, collectors: [log, banker]}\n",
        encoding="utf-8",
    )
    return path


def test_replay_reconcile_and_report_count_the_earliest_line_of_an_id(tmp_path: Path) -> None:
    """Two trackers sharing the banker's Redis each logged the same win with another price: the banker debited the
    first to arrive, the earliest. The first file by name holds the later line of `a`, and a tie in time for `b`
    (the first line in file-name order counts)."""
    directory = tmp_path / "logs"
    directory.mkdir()
    (directory / "events-20261205T000000000Z-w00-p1-0001.jsonl").write_bytes(
        lines([win("a", T0 + 5, 9_000_000), win("b", T0 + 1, 1_000_000), win("c", T0 + 2, 2_000_000)])
    )
    (directory / "events-20261205T000000000Z-w00-p2-0001.jsonl").write_bytes(
        lines([win("a", T0, 6_000_000), win("b", T0 + 1, 4_000_000), win("a", T0 + 9, 7_000_000)])
    )
    earliest = 6_000 + 1_000 + 2_000  # micros: a at 6 CPM, b at 1 CPM (tie: first file), c at 2 CPM
    conf = str(banker_setup(tmp_path))
    replayed = CliRunner().invoke(app, ["replay", "-c", conf, "--collector", "banker", "--json", str(directory)])
    assert replayed.exit_code == 0, replayed.output
    summary = json.loads(replayed.stdout)
    assert (summary["read"], summary["replayed"], summary["duplicates"]) == (6, 3, 3)
    reconciled = CliRunner().invoke(app, ["banker", "reconcile", "-c", conf, "--json", str(directory)])
    assert reconciled.exit_code == 0, reconciled.output
    [campaign] = json.loads(reconciled.stdout)["campaigns"]
    assert (campaign["log_micros"], campaign["store_micros"], campaign["log_debits"]) == (earliest, earliest, 3)
    report = CliRunner().invoke(app, ["report", "--logs", str(directory), "-c", conf, "--format", "json", "--by", "",
                                      "--from", str(T0 // 1000 - 3600), "--to", str(T0 // 1000 + 3600)])  # fmt: skip
    assert report.exit_code == 0, report.output
    [row] = [row for row in json.loads(report.stdout)["rows"] if row["type"] == "win"]
    assert row["metrics"]["spend_micros"] == earliest and row["metrics"]["wins"] == 3


def test_tables_print_ids_and_dims_from_requests_as_text(tmp_path: Path) -> None:
    """A campaign or a publisher is whatever a request said: `[/x]` (a closing tag of rich's markup) crashed
    reconcile and report with a MarkupError traceback, and `[bold]` vanished from the table."""
    directory = tmp_path / "logs[old]"  # a path with brackets, printed as it is too
    directory.mkdir()
    tagged = msgspec.structs.replace(win("a", T0, 1_000_000), dims={"imp": "a", "cid": "[/x]", "pub": "[bold]p"})
    (directory / "events-20261205T000000000Z-w00-p1-0001.jsonl").write_bytes(lines([tagged]))
    cut = directory / "events-20261205T000000000Z-w00-p1-0002.jsonl.zst"
    cut.write_bytes(zstandard.ZstdCompressor().compress(lines([win(f"w{i}", T0, 1_000) for i in range(9)]))[:-9])
    conf = str(banker_setup(tmp_path))
    replayed = CliRunner().invoke(app, ["replay", "-c", conf, "--collector", "banker", str(directory)])
    assert replayed.exit_code == 0 and f"cut short: {cut}" in " ".join(replayed.stderr.split()), replayed.output
    reconciled = CliRunner().invoke(app, ["banker", "reconcile", "-c", conf, str(directory)])
    assert reconciled.exception is None or isinstance(reconciled.exception, SystemExit), reconciled.exception
    assert "│ [/x] " in reconciled.stdout and f"cut short: {cut}" in " ".join(reconciled.stdout.split())
    report = CliRunner().invoke(app, ["report", "--logs", str(directory), "-c", conf, "--by", "cid,pub",
                                      "--from", str(T0 // 1000 - 3600), "--to", str(T0 // 1000 + 3600)])  # fmt: skip
    assert report.exit_code == 0, report.exception
    assert "│ [/x] " in report.stdout and "│ [bold]p " in report.stdout


# --- logs in subdirectories ----------------------------------------------------------------------------------------


def copied_back(tmp_path: Path) -> tuple[Path, list[Event]]:
    """Logs as copied back from object storage (`<node>/<YYYY>/<MM>/<DD>/<file>`, as the shipper keys them), with
    one file at the top too: 60 wins at 1 CPM (1,000 micros each)."""
    wins = [win(f"w{i}", T0 + i, 1_000_000) for i in range(60)]
    copied = tmp_path / "copied"
    placed = {
        "events-20261204T230000000Z-w00-p7-0001.jsonl": wins[:10],
        "node-a/2026/12/04/events-20261204T235900000Z-w00-p7-0002.jsonl.zst": wins[10:25],
        "node-a/2026/12/05/events-20261205T000000000Z-w00-p7-0003.jsonl.gz": wins[25:40],
        "node-b/2026/12/05/events-20261205T000000000Z-w01-p9-0001.jsonl": wins[40:],
    }
    for name, events in placed.items():
        path = copied / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = lines(events)
        if name.endswith(".zst"):
            data = zstandard.ZstdCompressor().compress(data)
        elif name.endswith(".gz"):
            data = gzip.compress(data)
        path.write_bytes(data)
    return copied, wins


def test_replay_reconcile_and_report_read_the_logs_in_subdirectories(tmp_path: Path) -> None:
    """Logs kept one directory per host and day were left out with no word: a replay of such a copy sent what lay
    at its top (or `no log files`), and reconcile and report --logs counted that part as the whole."""
    copied, wins = copied_back(tmp_path)
    conf = str(banker_setup(tmp_path))
    replayed = CliRunner().invoke(app, ["replay", "-c", conf, "--collector", "banker", "--json", str(copied)])
    assert replayed.exit_code == 0, replayed.output
    summary = json.loads(replayed.stdout)
    assert (summary["files"], summary["read"], summary["replayed"]) == (4, 60, 60)
    assert summary["bytes"] == sum(path.stat().st_size for path in copied.rglob("events-*"))
    reconciled = CliRunner().invoke(app, ["banker", "reconcile", "-c", conf, "--json", str(copied)])
    assert reconciled.exit_code == 0, reconciled.output
    [campaign] = json.loads(reconciled.stdout)["campaigns"]
    assert (campaign["log_debits"], campaign["log_micros"], campaign["store_micros"]) == (60, 60_000, 60_000)
    report = CliRunner().invoke(app, ["report", "--logs", str(copied), "-c", conf, "--format", "json", "--by", "",
                                      "--from", str(T0 // 1000 - 3600), "--to", str(T0 // 1000 + 3600)])  # fmt: skip
    assert report.exit_code == 0, report.output
    [row] = [row for row in json.loads(report.stdout)["rows"] if row["type"] == "win"]
    assert (row["metrics"]["wins"], row["metrics"]["spend_micros"]) == (len(wins), 60_000)
    assert "from 4 files" in report.stderr


def test_a_file_found_twice_is_read_once_and_a_link_loop_ends(tmp_path: Path) -> None:
    """A directory given with one of its subdirectories, a link to a directory elsewhere (followed), a link back up
    the tree (searched once): each file is read once, in name (time) order across directories."""
    copied, _ = copied_back(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "node-c"
    elsewhere.mkdir(parents=True)
    (elsewhere / "events-20261205T010000000Z-w00-p3-0001.jsonl").write_bytes(lines([win("c", T0 + 99, 1_000_000)]))
    (copied / "node-c").symlink_to(elsewhere)
    (copied / "node-b" / "up").symlink_to(copied)
    files = log_files([copied, copied / "node-a", elsewhere])
    assert [path.name for path in files] == [
        "events-20261204T230000000Z-w00-p7-0001.jsonl",
        "events-20261204T235900000Z-w00-p7-0002.jsonl.zst",
        "events-20261205T000000000Z-w00-p7-0003.jsonl.gz",
        "events-20261205T000000000Z-w01-p9-0001.jsonl",
        "events-20261205T010000000Z-w00-p3-0001.jsonl",
    ]
    conf = str(banker_setup(tmp_path))
    args = ["replay", "-c", conf, "--collector", "banker", "--json", str(copied), str(copied / "node-a")]
    summary = json.loads(CliRunner().invoke(app, args).stdout)
    assert (summary["files"], summary["read"], summary["duplicates"]) == (5, 61, 0)


def test_a_data_dir_gives_its_log_files_and_nothing_else(tmp_path: Path) -> None:
    """A whole data_dir: the files of every log collector; not a spool, a dead letter, the shipping manifest or a
    compression temporary."""
    data = tmp_path / "data"
    logged = [data / "logs" / "events-20261205T000000000Z-w00-p1-0001.jsonl.zst",
              data / "copy" / "events-20261205T000000000Z-w00-p1-0001.jsonl"]  # fmt: skip
    others = [data / "logs" / ".shipped.jsonl", data / "logs" / "events-20261205T000000000Z-w00-p1-0002.jsonl.zst.tmp",
              data / "spool" / "kafka" / "w00" / "1.seg", data / "deadletter" / "kafka" / "w00-p1.jsonl"]  # fmt: skip
    for path in [*logged, *others]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert sorted(log_files([data])) == sorted(logged)


def test_a_directory_that_cannot_be_listed_stops_each_reader_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its files would be missing from the replay, the sums and the report with no word: each says which directory
    it cannot read and exits 2, nothing sent. (os.scandir refuses it here as it refuses a user without access: the
    tests may run as root, whom no mode keeps out.)"""
    copied, _ = copied_back(tmp_path)
    locked = copied / "node-b" / "2026"
    listing = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    monkeypatch.setattr(os, "scandir", scandir)
    conf = str(banker_setup(tmp_path))
    window = ["--from", str(T0 // 1000 - 3600), "--to", str(T0 // 1000 + 3600)]
    for args in (["replay", "-c", conf, "--collector", "banker", str(copied)],
                 ["banker", "reconcile", "-c", conf, str(copied)],
                 ["report", "--logs", str(copied), "-c", conf, *window]):  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert f"{locked}: cannot be read (Permission denied)" in " ".join(result.stderr.split()), result.stderr
    assert not (tmp_path / "data" / "banker" / "banker.db").exists()  # the banker was not even opened: nothing sent


# --- reconcile over logs it cannot read whole ----------------------------------------------------------------------


def test_reconcile_names_a_file_cut_short_and_does_not_say_ok(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    wins = [win(f"w{i}", T0 + i, 2_500_000 + i) for i in range(2000)]
    (directory / "events-20261205T000000000Z-w00-p1-0001.jsonl").write_bytes(lines(wins[:1000]))
    cut = directory / "events-20261205T000000000Z-w00-p1-0002.jsonl.zst"
    whole = zstandard.ZstdCompressor(write_checksum=True).compress(lines(wins[1000:]))
    cut.write_bytes(whole[:-20])
    conf = str(banker_setup(tmp_path))
    # The store got what the cut logs hold (a replay of them), not the debits of the lost tail.
    assert CliRunner().invoke(app, ["replay", "-c", conf, "--collector", "banker", str(directory)]).exit_code == 0
    reconciled = CliRunner().invoke(app, ["banker", "reconcile", "-c", conf, "--json", str(directory)])
    assert reconciled.exit_code == 1, reconciled.output
    document = json.loads(reconciled.stdout)
    assert document["matches"] is False and document["truncated_files"] == [str(cut)]
    table = CliRunner().invoke(app, ["banker", "reconcile", "-c", conf, str(directory)])
    assert table.exit_code == 1 and f"cut short: {cut}" in " ".join(table.stdout.split())
    assert " ok" not in table.stdout


def test_report_over_logs_names_a_file_cut_short_and_counts_what_replay_reads(tmp_path: Path) -> None:
    """DuckDB reads a zstd file cut short as far as it decodes and says nothing: the report's counts were short of
    the logs' with no word of it, where replay and reconcile name the file."""
    directory = tmp_path / "logs"
    directory.mkdir()
    wins = [win(f"w{i}", T0 + i, 2_500_000) for i in range(3000)]
    (directory / "events-20261205T000000000Z-w00-p1-0001.jsonl").write_bytes(lines(wins[:1000]))
    cut = directory / "events-20261205T000000000Z-w00-p1-0002.jsonl.zst"
    frames = [zstandard.ZstdCompressor().compress(lines(wins[start : start + 500])) for start in range(1000, 3000, 500)]
    cut.write_bytes(b"".join(frames)[:-100])  # three whole frames, the fourth cut
    conf = str(banker_setup(tmp_path))
    replayed = CliRunner().invoke(app, ["replay", "-c", conf, "--collector", "banker", "--json", str(directory)])
    assert json.loads(replayed.stdout)["read"] == 2500
    report = CliRunner().invoke(app, ["report", "--logs", str(directory), "-c", conf, "--format", "json", "--by", "",
                                      "--from", str(T0 // 1000 - 3600), "--to", str(T0 // 1000 + 3600)])  # fmt: skip
    assert report.exit_code == 0, report.output
    [row] = [row for row in json.loads(report.stdout)["rows"] if row["type"] == "win"]
    assert row["metrics"]["wins"] == 2500
    assert f"cut short: {cut} (a compressed file that ends early: what decoded is counted)" in report.stderr


def test_reconcile_refuses_what_is_not_a_log_as_replay_does(tmp_path: Path) -> None:
    """A file that is not a log was read as torn lines and matched (exit 0, a silent wrong answer); one that cannot
    be opened (no permission) was a PermissionError traceback, and is the same check's `cannot be read`."""
    directory = tmp_path / "logs"
    directory.mkdir()
    (directory / "events-20261205T000000000Z-w00-p1-0001.jsonl").write_bytes(lines([win("a", T0, 1_000_000)]))
    conf = str(banker_setup(tmp_path))
    assert CliRunner().invoke(app, ["replay", "-c", conf, "--collector", "banker", str(directory)]).exit_code == 0
    notes = tmp_path / "spend.csv"
    notes.write_text("campaign,micros\nc1,1000\n")
    reconciled = CliRunner().invoke(app, ["banker", "reconcile", "-c", conf, str(directory), str(notes)])
    assert reconciled.exit_code == 2, reconciled.output
    assert f"{notes}:1: not a trackpoint log: the line is not an event" in reconciled.stderr


def test_reconcile_names_a_file_gone(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    (directory / "events-20261205T000000000Z-w00-p1-0001.jsonl").write_bytes(lines([win("a", T0, 1_000_000)]))
    gone = directory / "events-20261205T000000000Z-w00-p1-0002.jsonl"
    gone.symlink_to(tmp_path / "shipped-and-deleted.jsonl")
    conf = str(banker_setup(tmp_path))
    assert CliRunner().invoke(app, ["replay", "-c", conf, "--collector", "banker", str(directory)]).exit_code == 0
    reconciled = CliRunner().invoke(app, ["banker", "reconcile", "-c", conf, "--json", str(directory)])
    assert reconciled.exit_code == 1, reconciled.output
    assert json.loads(reconciled.stdout)["missing_files"] == [str(gone)]


def test_reconcile_against_a_sqlite_store_that_is_not_there_says_so_and_creates_nothing(tmp_path: Path) -> None:
    """A wrong data_dir (or sqlite_path) made reconcile create an empty store there, directories included, and report
    every logged debit missing, with the advice to replay them all into it."""
    directory = tmp_path / "logs"
    directory.mkdir()
    (directory / "events-20261205T000000000Z-w00-p1-0001.jsonl").write_bytes(lines([win("a", T0, 1_000_000)]))
    conf = str(banker_setup(tmp_path))  # data_dir: tmp_path/data, which no tracker has run in
    reconciled = CliRunner().invoke(app, ["banker", "reconcile", "-c", conf, str(directory)])
    store = tmp_path / "data" / "banker" / "banker.db"
    assert reconciled.exit_code == 2, reconciled.output
    assert f"no banker store at {store}: the tracker creates it on its first start" in reconciled.stderr
    assert not (tmp_path / "data").exists()
    # Where a tracker (here: a replay, which starts the banker as a tracker does) made it, reconcile reads it.
    assert CliRunner().invoke(app, ["replay", "-c", conf, "--collector", "banker", str(directory)]).exit_code == 0
    assert CliRunner().invoke(app, ["banker", "reconcile", "-c", conf, str(directory)]).exit_code == 0


# --- a collector that gives up -------------------------------------------------------------------------------------


def dead_redis_config(tmp_path: Path) -> Path:
    """A configuration whose redis_streams collector `rs` points at a port nothing listens on."""
    conf = tmp_path / "dead.yaml"
    conf.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        f"collectors:\n  rs: {{type: redis_streams, url: 'redis://127.0.0.1:{free_port()}/0', stream: s}}\n"
        "event_types:\n  impression: {preset: impression, collectors: [log, rs]}\n",
        encoding="utf-8",
    )
    return conf


@pytest.mark.e2e
def test_a_collector_gives_up_at_its_deadline_and_the_summary_says_so(tmp_path: Path) -> None:
    directory, _, _ = logs(tmp_path)
    conf = dead_redis_config(tmp_path)
    started = time.monotonic()
    result = cli("replay", "-c", str(conf), "--collector", "rs", "--json", "--give-up-after", "3", str(directory))
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "not delivered after 3 s of retries" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["gave_up"].startswith("collector rs: not delivered after 3 s")
    assert summary["collectors"]["rs"]["sent"] == 0 and summary["collectors"]["rs"]["retries"] >= 1
    assert elapsed >= 3  # retried up to the deadline, not given up at the first backoff step that would pass it


@pytest.mark.e2e
def test_an_interrupted_replay_says_so_and_how_to_finish(tmp_path: Path) -> None:
    """Ctrl-C ended a replay with exit code 130 and not a word: was anything sent, is a rerun safe?"""
    directory, _, _ = logs(tmp_path)
    conf = dead_redis_config(tmp_path)
    # As at a terminal, where Ctrl-C finds SIGINT's default disposition. A suite started in the background by a shell
    # without job control (`scripts/test &`) ignores SIGINT, and an ignored signal stays ignored across exec; a
    # handler of this process's own is reset to the default by exec.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        replaying = subprocess.Popen(
            [sys.executable, "-m", "trackpoint", "replay", "-c", str(conf), str(directory)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, before)
    assert replaying.stderr is not None
    assert "target unavailable, retrying" in replaying.stderr.readline()  # mid-replay: its first batch is retried
    replaying.send_signal(signal.SIGINT)
    _, stderr = replaying.communicate(timeout=60)
    assert replaying.returncode == 130
    assert "interrupted: run the same replay again to finish it (what was sent counts once)" in stderr
    assert "Traceback" not in stderr


# --- a replay that ends as soon as it starts -----------------------------------------------------------------------


@pytest.mark.e2e
def test_a_short_replay_into_redis_closes_its_collectors_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replay of no events (or a few) closes its collectors while their first call to Redis connects; the
    cancellation of the redis_streams probe and the banker's status report was lost there (asyncio.wait_for on
    3.11), each went on for ever and the replay waited out the drain timeout and its grace (12 s) to log
    `close() has not returned`."""
    directory = tmp_path / "logs"
    directory.mkdir()
    (directory / "events-20261205T000000000Z-w00-p1-0001.jsonl").write_bytes(b"")  # a tracker just started
    prefix = f"tptest-{os.getpid()}-{random.randrange(1 << 30)}"
    conf = tmp_path / "redis.yaml"
    conf.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "collectors:\n"
        f"  rs: {{type: redis_streams, url: '{REDIS_URL}', stream: '{prefix}:{{type}}'}}\n"
        f"  banker: {{type: banker, store: redis, redis_url: '{REDIS_URL}', key_prefix: '{prefix}',"
        " unknown_campaigns: create}\n"
        "event_types:\n  win: {preset: win, collectors: [log, rs, banker]}\n",
        encoding="utf-8",
    )
    try:
        for _ in range(4):  # the race is lost most times, not every time
            result = CliRunner().invoke(app, ["replay", "-c", str(conf), "--json", str(directory)])
            assert result.exit_code == 0, result.output
            abandoned = [record.getMessage() for record in caplog.records if "has not returned" in record.getMessage()]
            assert abandoned == []
        assert json.loads(result.stdout)["collectors"].keys() == {"rs", "banker"}
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        stale = list(client.scan_iter(match=f"*{prefix}*"))
        if stale:
            client.delete(*stale)
        client.close()
