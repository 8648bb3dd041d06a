"""The rollups: what each role counts, each event id once (within a batch, across batches, across two writers on
one database), the dedupe window, the report's query, rows, CSV and JSON, and the DuckDB report over log files
agreeing with the rollups on the same events."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard

from conftest import make_event
from trackpoint.admin.server import AdminRequest
from trackpoint.collectors.base import CollectorContext, SendResult
from trackpoint.collectors.rollup.admin import get_hourly
from trackpoint.collectors.rollup.collector import RollupCollector
from trackpoint.collectors.rollup.config import RollupCollectorConfig
from trackpoint.collectors.rollup.logs import LogsReportError, logs_report
from trackpoint.collectors.rollup.model import COUNTERS, MS_PER_HOUR, Row, finish, hour_of
from trackpoint.collectors.rollup.report import ReportError, make_query, to_csv, to_table
from trackpoint.collectors.rollup.store import Query, RollupStore, read_rollups
from trackpoint.config.load import load
from trackpoint.config.model import Config
from trackpoint.event import Context, Device, Event, Meta, derived_id
from trackpoint.plugins import registry

NOW = int(time.time() * 1000)
HOUR = hour_of(NOW)


def rollup(**options: Any) -> RollupCollectorConfig:
    return msgspec.convert({"type": "rollup", **options}, RollupCollectorConfig)


def event(key: str, type_name: str, ts: int = NOW, metrics: dict[str, int | float] | None = None, **dims: str) -> Event:
    return Event(
        id=derived_id(type_name, [key]), type=type_name, ts=ts, dims={"imp": key, **dims}, metrics=metrics or {},
        ctx=Context(device=Device(browser="Chrome", bot=False)), meta=Meta(worker=0, config="test"),
    )  # fmt: skip


def stream(distinct: int, repeat_share: float, seed: int) -> tuple[list[Event], list[Event]]:
    """Impressions, clicks, wins, conversions and VAST events over 4 campaigns and two hours, with repeats (the
    same event again, or a retry of it an hour later), shuffled; and the distinct events (first of each id)."""
    rng = random.Random(seed)
    distinct_events = []
    for i in range(distinct):
        cid, crid, ts = f"c{i % 4}", f"cr{i % 3}", NOW - rng.choice((0, MS_PER_HOUR))
        kind = i % 5
        if kind == 0:
            made = event(f"i{i}", "impression", ts, cid=cid, crid=crid, pub="p1")
        elif kind == 1:
            made = event(f"i{i - 1}", "click", ts, cid=cid, crid=crid, pub="p1")
        elif kind == 2:
            made = event(f"w{i}", "win", ts, {"price": rng.randrange(10_000, 20_000_000)}, cid=cid, crid=crid)
        elif kind == 3:
            made = event(f"o{i}", "conversion", ts, {"value": rng.randrange(0, 99_000_000)}, cid=cid)
        else:
            name = rng.choice(("start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "pause"))
            made = event(f"v{i}-{name}", "video", ts, {"watch_ms": rng.randrange(0, 30_000)}, cid=cid, ev=name)
        distinct_events.append(made)
    repeats = []
    for original in rng.choices(distinct_events, k=int(distinct * repeat_share)):
        again = msgspec.structs.replace(original, dims=dict(original.dims), metrics=dict(original.metrics))
        if rng.random() < 0.3:
            again.ts = original.ts + 1000  # a retry: a later request, the same id
        repeats.append(again)
    events = distinct_events + repeats
    rng.shuffle(events)
    seen: dict[str, Event] = {}
    for each in sorted(events, key=lambda e: e.ts):
        seen.setdefault(each.id, each)
    return events, list(seen.values())


def expected_rows(events: list[Event], config: RollupCollectorConfig, by: tuple[str, ...]) -> list[Row]:
    """The rows worked out here, in plain Python, from the distinct events (not through the store)."""
    from trackpoint.collectors.rollup.model import counters, dim_reader

    sums: dict[tuple[int, str, tuple[str | None, ...]], list[int]] = {}
    readers = [dim_reader(dim) for dim in by]
    for each in events:
        key = (hour_of(each.ts), each.type, tuple(read(each) for read in readers))
        added = counters(each, config.roles.get(each.type))
        sums[key] = [a + b for a, b in zip(sums.get(key, [0] * len(added)), added, strict=True)]
    return finish([(*key, value) for key, value in sums.items()], by, config.roles)


def over_hours(rows: list[Row]) -> dict[tuple[str, tuple[str | None, ...]], dict[str, int]]:
    """Events and metrics (but CTR) summed over the hours, per type and dims."""
    summed: dict[tuple[str, tuple[str | None, ...]], dict[str, int]] = {}
    for row in rows:
        into = summed.setdefault((row.type, tuple(row.dims.values())), {"events": 0})
        into["events"] += row.events
        for name, value in row.metrics.items():
            if name != "ctr" and isinstance(value, int):
                into[name] = into.get(name, 0) + value
    return summed


def count(store: RollupStore, events: list[Event], batch: int = 256) -> None:
    for start in range(0, len(events), batch):
        asyncio.run(store.count(events[start : start + batch], NOW))


def report(store: RollupStore, by: tuple[str, ...], **query: Any) -> list[Row]:
    chosen = Query(HOUR - 2 * MS_PER_HOUR, HOUR + 2 * MS_PER_HOUR, by=by, **query)  # a retry may be next hour
    return finish(read_rollups(store.path, chosen), by, store.config.roles)


# --- what is counted -----------------------------------------------------------------------------------------------


def test_each_role_counts_its_metrics(tmp_path: Path) -> None:
    store = RollupStore(rollup(), str(tmp_path))
    events = [
        event("a", "impression", cid="c1"), event("b", "impression", cid="c1"), event("c", "impression", cid="c2"),
        event("a", "click", cid="c1"),
        event("w1", "win", metrics={"price": 2_500_500}, cid="c1"),  # CPM 2.5005: 2500.5 micros, half up
        event("w2", "win", metrics={"price": 1_000_400}, cid="c1"),  # 1000.4 micros, down
        event("w3", "win", metrics={"price": 1.5}, cid="c1"),  # not an integer of micros: no spend
        event("o1", "conversion", metrics={"value": 12_340_000}, cid="c1"),
        event("v1", "video", metrics={"watch_ms": 0}, cid="c1", ev="start"),
        event("v2", "video", metrics={"watch_ms": 7_500}, cid="c1", ev="firstQuartile"),
        event("v3", "video", metrics={"watch_ms": 15_000}, cid="c1", ev="midpoint"),
        event("v4", "video", metrics={"watch_ms": 22_500}, cid="c1", ev="thirdQuartile"),
        event("v5", "video", metrics={"watch_ms": 30_000}, cid="c1", ev="complete"),
        event("v6", "video", metrics={"watch_ms": 9_000}, cid="c1", ev="pause"),
        event("x1", "pageview", cid="c1"),
    ]  # fmt: skip
    count(store, events)
    rows = {(r.type, r.dims["cid"]): r for r in report(store, ("cid",))}
    assert rows["impression", "c1"].metrics == {"impressions": 2}
    assert rows["impression", "c2"].events == 1
    assert rows["click", "c1"].metrics == {"clicks": 1, "ctr": 0.5}
    assert rows["win", "c1"].metrics == {"wins": 3, "spend_micros": 2501 + 1000}
    assert rows["conversion", "c1"].metrics == {"conversions": 1, "conversion_value_micros": 12_340_000}
    assert rows["video", "c1"].events == 6
    assert rows["video", "c1"].metrics == {
        "starts": 1, "first_quartiles": 1, "midpoints": 1, "third_quartiles": 1, "completes": 1,
        "watch_time_ms": 7_500 * 4,  # each quartile proves a quarter of the 30 s ad
    }  # fmt: skip
    assert rows["pageview", "c1"].metrics == {} and rows["pageview", "c1"].events == 1
    assert {r.hour for r in rows.values()} == {time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(NOW // 1000))}


def test_context_dims_and_missing_dims(tmp_path: Path) -> None:
    store = RollupStore(rollup(dims=["cid", "device.browser", "device.bot"]), str(tmp_path))
    count(store, [event("a", "impression", cid="c1"), event("b", "impression")])
    rows = report(store, ("cid", "device.browser", "device.bot"))
    assert [r.dims for r in rows] == [
        {"cid": "c1", "device.browser": "Chrome", "device.bot": "false"},
        {"cid": None, "device.browser": "Chrome", "device.bot": "false"},
    ]
    assert [r.dims for r in report(store, ("device.browser",))] == [{"device.browser": "Chrome"}]
    assert report(store, ("device.browser",))[0].events == 2
    assert report(store, (), where={"cid": "c1"})[0].events == 1


def test_repeats_and_retries_count_once_and_two_writers_agree(tmp_path: Path) -> None:
    """The 30%-repeats stream, split at random between two stores on one database (two workers), written at the
    same time from two threads: every id counted once, in the hour of its first line."""
    config = rollup(busy_timeout_s=30)
    events, distinct = stream(6000, 0.3, seed=7)
    rng = random.Random(8)
    shares: list[list[Event]] = [[], []]
    for each in events:
        shares[rng.randrange(2)].append(each)
    stores = [RollupStore(config, str(tmp_path)), RollupStore(config, str(tmp_path))]
    threads = [threading.Thread(target=count, args=(s, share, 200)) for s, share in zip(stores, shares, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    by = ("cid", "crid")
    expected = expected_rows(distinct, config, by)
    # Which line of an id is counted first depends on the race (a retry is a second later, maybe in the next
    # hour): compare over the hours, per type and dims, and the number of events.
    got = report(stores[0], by)
    assert sum(r.events for r in got) == len(distinct)
    assert over_hours(got) == over_hours(expected)
    # Replaying everything again (a `trackpoint replay`) changes nothing.
    count(stores[1], events)
    assert report(stores[0], by) == got


def test_one_writer_matches_plain_python_row_for_row(tmp_path: Path) -> None:
    events, distinct = stream(3000, 0.3, seed=11)
    store = RollupStore(rollup(), str(tmp_path))
    count(store, sorted(events, key=lambda e: e.ts))  # in time order, as one worker sees them
    for by in (("cid", "crid", "pub"), ("cid",), ()):
        assert report(store, by) == expected_rows(distinct, store.config, by)


def test_the_dedupe_window(tmp_path: Path) -> None:
    store = RollupStore(rollup(dedupe_window_h=2), str(tmp_path))
    old = event("a", "impression", NOW - 3 * MS_PER_HOUR, cid="c1")
    recent = event("b", "impression", NOW - MS_PER_HOUR, cid="c1")
    first = asyncio.run(store.count([old, recent], NOW))
    assert (first.counted, first.duplicates, first.too_late) == (1, 0, 1)
    again = asyncio.run(store.count([old, recent], NOW))
    assert (again.counted, again.duplicates, again.too_late) == (0, 1, 1)
    # A retry of `recent` keeps its id remembered for a window from the retry's own time.
    retry = msgspec.structs.replace(recent, ts=NOW)
    assert asyncio.run(store.count([retry], NOW)).duplicates == 1
    later = NOW + int(1.5 * MS_PER_HOUR)  # beyond recent's window, within the retry's
    assert asyncio.run(store.count([recent, retry], later)).counted == 0
    # Past every window, the id is forgotten and the events are too late: still never counted twice.
    final = asyncio.run(store.count([recent, retry], NOW + 3 * MS_PER_HOUR))
    assert (final.counted, final.too_late) == (0, 2)


def test_no_clock_step_counts_a_replayed_log_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tester's case: a replay under a clock 72 hours ahead counts nothing (too late) and forgets nothing live
    traffic needs, and the replay after it, on the right clock, counts nothing again. Then a worker's clock that
    steps ahead and back: what it forgot stays too late."""
    from typer.testing import CliRunner

    from trackpoint.cli import app

    logs = tmp_path / "logs"
    logs.mkdir()
    wins = [event(f"w{i}", "win", NOW - MS_PER_HOUR + i, {"price": 2_350_000}, cid="c1") for i in range(300)]
    (logs / "events-20261205T000000-w0.jsonl").write_bytes(b"".join(msgspec.json.encode(w) + b"\n" for w in wins))
    config = tmp_path / "trackpoint.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\ncollectors:\n  rollup: {{type: rollup}}\n"
        "event_types:\n  win: {preset: win, collectors: [log, rollup]}\n",
        encoding="utf-8",
    )
    database = tmp_path / "data" / "rollup" / "rollup.db"
    query = Query(HOUR - 2 * MS_PER_HOUR, HOUR + 2 * MS_PER_HOUR, types=("win",))
    real_time = time.time

    def replay_then_spend(shift_s: float) -> tuple[int, int]:
        with monkeypatch.context() as patched:
            patched.setattr(time, "time", lambda: real_time() + shift_s)
            result = CliRunner().invoke(app, ["replay", "-c", str(config), "--collector", "rollup", str(logs)])
        assert result.exit_code == 0, result.output
        ((_, _, _, sums),) = read_rollups(database, query)
        return sums[0], sums[COUNTERS.index("spend_micros") + 1]

    assert replay_then_spend(0) == (300, 300 * 2350)
    assert replay_then_spend(72 * 3600) == (300, 300 * 2350)
    assert replay_then_spend(0) == (300, 300 * 2350)  # was 600: the clock step had forgotten every id

    # A worker whose clock ran 72 hours ahead forgot its ids up to 24 hours ahead of the real time: once its clock
    # is back, those events are too late (counted so), never counted again.
    store = RollupStore(rollup(), str(tmp_path / "worker"))
    early = [event(f"e{i}", "impression", NOW - MS_PER_HOUR, cid="c1") for i in range(5)]
    assert asyncio.run(store.count(early, NOW)).counted == 5
    ahead = NOW + 72 * MS_PER_HOUR
    assert asyncio.run(store.count([event("x", "impression", ahead, cid="c1")], ahead)).counted == 1
    back = asyncio.run(store.count(early, NOW))
    assert (back.counted, back.too_late) == (0, 5)


def test_the_collector_counts_outcomes(tmp_path: Path) -> None:
    async def scenario() -> dict[str, int]:
        collector = RollupCollector("rollup", rollup(flush_interval_ms=10), CollectorContext(str(tmp_path)))
        await collector.start()
        for each in (event("a", "impression"), event("a", "impression"), event("b", "impression", ts=1)):
            collector.offer(each)
        deadline = time.monotonic() + 5
        while collector.stats.sent < 3:
            assert time.monotonic() < deadline, "the batch was not delivered"
            await asyncio.sleep(0.02)
        await collector.close(5)
        return collector.outcomes()

    assert asyncio.run(scenario()) == {"counted": 1, "duplicates": 1, "too_late": 1}


# --- options and queries -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dims", "message"),
    [(["ip"], "identifies a person"), (["ua.x"], "identifies a person"), (["a'b"], "not a dims name"),
     (["cid", "cid"], "listed twice")],
)  # fmt: skip
def test_bad_dims_are_config_errors(dims: list[str], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        rollup(dims=dims)


def test_queries() -> None:
    query = make_query(None, None, types=["win", ""], by=None, where=["cid=c1"], default_by=["cid", "crid"], now_ms=NOW)
    assert query.from_ms == NOW - NOW % (24 * MS_PER_HOUR) and query.to_ms == HOUR + MS_PER_HOUR
    assert (query.types, query.by, dict(query.where)) == (("win",), ("cid", "crid"), {"cid": "c1"})
    spelled = make_query("2026-12-05T06:30", "1796457600", types=[], by=["cid", ""], where=[], default_by=[])
    assert (spelled.from_ms, spelled.to_ms, spelled.by) == (1_796_452_200_000, 1_796_457_600_000, ("cid",))
    assert make_query(None, None, types=[], by=[""], where=[], default_by=["cid"]).by == ()
    bad: list[tuple[str | None, str | None, list[str] | None, list[str]]] = [
        ("yesterday", None, None, []),
        ("2026-12-05T07:00", "2026-12-05T06:00", None, []),
        (None, None, ["x'"], []),
        (None, None, None, ["cid"]),
    ]
    for since, until, by, where in bad:
        with pytest.raises(ReportError):
            make_query(since, until, types=[], by=by, where=where, default_by=[])


def test_csv_has_a_column_per_dim_and_metric() -> None:
    rows = [
        Row(hour="2026-12-05T06:00:00Z", type="click", dims={"cid": "c1"}, events=2,
            metrics={"clicks": 2, "ctr": 0.5}),
        Row(hour="2026-12-05T06:00:00Z", type="impression", dims={"cid": None}, events=4,
            metrics={"impressions": 4}),
    ]  # fmt: skip
    assert to_csv(rows, ("cid",)).splitlines() == [
        "hour,type,cid,events,impressions,clicks,ctr",
        "2026-12-05T06:00:00Z,click,c1,2,,2,0.5",
        "2026-12-05T06:00:00Z,impression,,4,4,,",
    ]


# --- the report over the logs --------------------------------------------------------------------------------------


def write_logs(directory: Path, events: list[Event]) -> None:
    """The events as log files of the three kinds (zstd, gzip, plain), with a torn last line in the plain one."""
    directory.mkdir()
    thirds = [events[i::3] for i in range(3)]
    encode = msgspec.json.Encoder().encode_lines
    (directory / "events-20261205T060000-w00-p1-0001.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(encode(thirds[0]))
    )
    (directory / "events-20261205T060000-w00-p1-0002.jsonl.gz").write_bytes(gzip.compress(encode(thirds[1])))
    (directory / "events-20261205T060000-w00-p1-0003.jsonl").write_bytes(encode(thirds[2]) + b'{"id":"torn","ty')


def test_the_logs_report_agrees_with_the_rollups(tmp_path: Path) -> None:
    events, distinct = stream(3000, 0.3, seed=5)
    store = RollupStore(rollup(), str(tmp_path))
    count(store, sorted(events, key=lambda e: e.ts))
    write_logs(tmp_path / "logs", events)
    files = sorted((tmp_path / "logs").iterdir())
    for by in (("cid", "crid", "pub"), ("cid",), ()):
        query = Query(HOUR - 2 * MS_PER_HOUR, HOUR + 2 * MS_PER_HOUR, by=by)
        result = logs_report(files, query, store.config.roles)
        assert result.rows == report(store, by)
        assert (result.events, result.distinct, result.skipped) == (len(events), len(distinct), 1)
    clicks = Query(HOUR - 2 * MS_PER_HOUR, HOUR + 2 * MS_PER_HOUR, types=("click",), by=("cid",))
    click_rows = logs_report(files, clicks, store.config.roles).rows
    assert click_rows == [r for r in report(store, ("cid",)) if r.type == "click"]
    assert {r.type for r in click_rows} == {"click"} and all(r.metrics["ctr"] is not None for r in click_rows)
    filtered = Query(HOUR, HOUR + MS_PER_HOUR, types=("win",), by=("cid",), where={"cid": "c1"})
    result = logs_report(files, filtered, store.config.roles)
    this_hour = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(HOUR // 1000))
    assert [r.hour for r in result.rows] == [this_hour]
    assert result.rows == [
        r for r in report(store, ("cid",), types=("win",), where={"cid": "c1"}) if r.hour == this_hour
    ]
    assert json.loads(msgspec.json.encode(result.rows))[0]["metrics"]["wins"] > 0


# --- the admin route and the CLI's edges ---------------------------------------------------------------------------


def loaded_config(tmp_path: Path, rollup_fed: bool) -> Config:
    document = {
        "data_dir": str(tmp_path / "data"),
        "event_types": {
            "impression": {"preset": "impression", "collectors": ["log", "rollup"] if rollup_fed else ["log"]}
        },
    }
    path = tmp_path / "trackpoint.yaml"
    path.write_text(json.dumps(document))
    return load(path, registry=registry()).config


def hourly(config: Config, query: str) -> tuple[int, dict[str, Any]]:
    request = AdminRequest(method="GET", path="/reports/hourly", query=query)
    response = asyncio.run(get_hourly(request, config))
    answer: dict[str, Any] = json.loads(response.body)
    return response.status, answer


def test_the_admin_route_answers_the_report_and_its_errors(tmp_path: Path) -> None:
    config = loaded_config(tmp_path, rollup_fed=True)
    store = RollupStore(rollup(), config.data_dir)
    count(store, [event("a", "impression", cid="c1", crid="k1"), event("b", "impression", cid="c1", crid="k2")])
    status, answer = hourly(config, "by=cid")
    assert status == 200
    assert [(r["dims"], r["events"], r["metrics"]) for r in answer["rows"]] == [({"cid": "c1"}, 2, {"impressions": 2})]
    assert answer["by"] == ["cid"] and answer["source"] == "rollups:rollup" and answer["truncated"] is False
    assert hourly(config, "by=")[1]["rows"][0]["dims"] == {}
    assert hourly(config, "where=crid%3Dk2&by=crid")[1]["rows"][0]["dims"] == {"crid": "k2"}
    assert hourly(config, "type=click")[1]["rows"] == []
    count(store, [event("a", "click", cid="c1", crid="k1")])
    clicks = hourly(config, "type=click&by=cid")[1]["rows"]  # the impressions are read for the CTR, not shown
    assert [(r["type"], r["metrics"]) for r in clicks] == [("click", {"clicks": 1, "ctr": 0.5})]
    for bad in ("by=geo.country", "from=soon", "from=2026-12-05T08:00&to=2026-12-05T07:00", "where=cid", "from=nan",
                "to=inf", "from=1e400"):  # fmt: skip
        status, answer = hourly(config, bad)
        assert (status, answer["error"]) == (400, "invalid_query"), bad
    status, answer = hourly(loaded_config(tmp_path, rollup_fed=False), "")
    assert (status, answer["error"]) == (404, "rollup_not_configured")


def test_without_duckdb_the_logs_report_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)  # import duckdb raises ImportError
    with pytest.raises(LogsReportError, match=r"pip install 'trackpoint\[reports\]'"):
        logs_report([], Query(0, MS_PER_HOUR), {})


def test_geo_country_is_a_dim_in_the_rollups_and_over_the_logs(tmp_path: Path) -> None:
    """`geo.country` as the geo preprocessor sets it (a dotted dims name), and a dotted path into the context
    (`device.browser`), read from events and from log lines alike."""
    config = rollup(dims=["cid", "geo.country", "device.browser"])
    geo = [("a", "DE", "Chrome"), ("b", "DE", "Firefox"), ("c", "FR", "Chrome"), ("d", None, None)]
    events = []
    for key, country, browser in geo:
        made = event(key, "impression", cid="c1")
        if country:
            made.dims["geo.country"] = country  # as the geo preprocessor adds it
        made.ctx = Context(device=Device(browser=browser) if browser else None)
        events.append(made)
    store = RollupStore(config, str(tmp_path))
    count(store, events)
    by_country = ("geo.country",)
    expected = [({"geo.country": "DE"}, 2), ({"geo.country": "FR"}, 1), ({"geo.country": None}, 1)]
    assert [(r.dims, r.events) for r in report(store, by_country)] == expected
    by_browser = ("device.browser",)
    expected = [({"device.browser": "Chrome"}, 2), ({"device.browser": "Firefox"}, 1), ({"device.browser": None}, 1)]
    assert [(r.dims, r.events) for r in report(store, by_browser)] == expected
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "events-1.jsonl").write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in events))
    for by in (by_country, by_browser):
        query = Query(HOUR - 2 * MS_PER_HOUR, HOUR + 2 * MS_PER_HOUR, by=by)
        assert logs_report(sorted(logs.iterdir()), query, config.roles).rows == report(store, by)


def test_the_cli_refuses_bad_times_for_report_and_replay(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trackpoint.cli import app

    runner = CliRunner()
    (tmp_path / "events-1.jsonl").write_text("")
    config = tmp_path / "trackpoint.yaml"
    config.write_text(json.dumps({"data_dir": str(tmp_path / "data")}))
    report_run = runner.invoke(app, ["report", "--config", str(config), "--logs", "--from", "soon", str(tmp_path)])
    assert report_run.exit_code == 2 and "from: not a time: 'soon'" in report_run.output
    replay_run = runner.invoke(app, ["replay", "--config", str(config), "--since", "soon", str(tmp_path)])
    assert replay_run.exit_code == 2 and "not a time: 'soon'" in replay_run.output
    for bad in ("nan", "inf", "1e400"):  # numbers that are no moment: a message, not a traceback
        replay_run = runner.invoke(app, ["replay", "--config", str(config), "--since", bad, str(tmp_path)])
        assert replay_run.exit_code == 2 and f"not a time: '{bad}'" in replay_run.output, replay_run.output
    # An error's text is printed as it is: `[log, rollup]` was taken for console markup and vanished.
    without = runner.invoke(app, ["report", "--config", str(config)])
    assert without.exit_code == 2 and "(collectors: [log, rollup])" in " ".join(without.output.split())


def test_a_report_from_rollups_no_tracker_wrote_says_where_it_looked(tmp_path: Path) -> None:
    """A data_dir other than the tracker's gave an empty table as if no event had come: it says so now."""
    from typer.testing import CliRunner

    from trackpoint.cli import app

    config = tmp_path / "trackpoint.yaml"
    config.write_text(
        json.dumps({"data_dir": str(tmp_path / "data"), "collectors": {"rollup": {"type": "rollup"}},
                    "event_types": {"impression": {"preset": "impression", "collectors": ["log", "rollup"]}}})
    )  # fmt: skip
    database = tmp_path / "data" / "rollup" / "rollup.db"
    result = CliRunner().invoke(app, ["report", "--config", str(config)])
    assert result.exit_code == 0 and "no rows in this period" in result.stdout
    assert f"no rollups at {database} (yet): no tracker has written one there" in " ".join(result.stderr.split())
    assert not database.exists()
    (tmp_path / "events-1.jsonl").write_bytes(msgspec.json.encode(make_event(1)) + b"\n")
    replayed = CliRunner().invoke(app, ["replay", "--config", str(config), str(tmp_path / "events-1.jsonl")])
    assert replayed.exit_code == 0 and database.exists(), replayed.output
    result = CliRunner().invoke(app, ["report", "--config", str(config)])
    assert result.exit_code == 0 and "no rollups" not in result.stderr


def test_the_table_shows_money_in_units_and_time_in_seconds() -> None:
    from rich.console import Console

    rows = [
        Row(hour="2026-12-05T06:00:00Z", type="win", dims={"cid": "c1"}, events=40,
            metrics={"wins": 40, "spend_micros": 94_000}),
        Row(hour="2026-12-05T06:00:00Z", type="click", dims={"cid": None}, events=3,
            metrics={"clicks": 3, "ctr": 0.075}),
        Row(hour="2026-12-05T07:00:00Z", type="video", dims={"cid": "c1"}, events=9,
            metrics={"completes": 4, "watch_time_ms": 322_500}),
        Row(hour="2026-12-05T07:00:00Z", type="conversion", dims={"cid": "c1"}, events=2,
            metrics={"conversion_value_micros": 99_800_000}),
    ]  # fmt: skip
    console = Console(record=True, width=160)
    console.print(to_table(rows, ("cid",), "rollups:rollup"))
    text = console.export_text()
    for shown in ("2026-12-05 06:00", "spend 0.094", "ctr 7.50%", "watched 322.5 s", "value 99.80", "│ —"):
        assert shown in text, shown


def test_a_damaged_rollup_file_is_store_unavailable_and_the_collector_unhealthy(tmp_path: Path) -> None:
    async def scenario() -> None:
        first = RollupStore(rollup(), str(tmp_path))
        await first.count([event("a", "impression")], NOW)
        await first.close()
        database = tmp_path / rollup().sqlite_path
        os.truncate(database, 4096)  # its first page, as a torn copy leaves it: SQLITE_CORRUPT
        collector = RollupCollector("rollup", rollup(), CollectorContext(str(tmp_path)))
        assert await collector.send([event("b", "impression")]) is SendResult.RETRY  # spooled, as in any outage
        health = collector.health()
        assert not health.healthy and str(database) in health.detail and "malformed" in health.detail
        await collector.store.close()

    asyncio.run(scenario())
