"""Unit tests of `trackpoint replay` as an operator reads it: counts that add up (sent, duplicates, filtered), the
JSON summary, progress by events and bytes, and files that are not tracker logs refused by name and line.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import re
from pathlib import Path

import msgspec
import pytest
import zstandard
from typer.testing import CliRunner

from trackpoint.cli import app
from trackpoint.collectors.log.reader import read_events
from trackpoint.event import Context, Event, Meta, derived_id
from trackpoint.replay import ReplayError, build_collectors, plan, replay

T0 = 1_795_821_700_000  # ms


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
    assert result.exit_code == 1
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
