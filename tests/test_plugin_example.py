"""The example plugin package (examples/plugins/trackpoint-sqlite), installed as a user would install it: found through
its entry point, its example config valid, and working inside a real tracker; then unit tests of its parts.

The package is pip-installed once per session into a private directory (never into the project's environment).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from conftest import Tracker
from trackpoint.admin.server import AdminRequest
from trackpoint.collectors.base import CollectorContext, SendResult
from trackpoint.config import ConfigError, load
from trackpoint.config.model import Config
from trackpoint.event import Context, Event, Meta, derived_id, random_id
from trackpoint.plugins import discover, resolve
from trackpoint.plugins.builtin import plugin as builtin_plugin
from trackpoint.testing.conformance import CollectorConformance

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins" / "trackpoint-sqlite"
if importlib.util.find_spec("trackpoint_sqlite") is None:  # not installed: the unit tests use the checkout
    sys.path.append(str(EXAMPLE / "src"))

from trackpoint_sqlite.collector import SqliteCollector  # noqa: E402
from trackpoint_sqlite.config import SqliteCollectorConfig, TagDimsConfig  # noqa: E402
from trackpoint_sqlite.stats import sqlite_stats  # noqa: E402
from trackpoint_sqlite.tag_dims import TagDims  # noqa: E402

pytestmark = pytest.mark.e2e  # installs the example plugin package

PIP_TIMEOUT_S = 300


# --- the package, installed ---------------------------------------------------------------------------------------


def _pip_install(source: Path, site: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check"]
    return subprocess.run(
        [*command, *options, "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
    )


def copy_example(destination: Path) -> Path:
    """The example package's directory copied to `destination`, as a plugin's own repository would be checked out."""
    shutil.copytree(EXAMPLE, destination, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    return destination


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the installed package (module and dist-info with the entry point), as `pip install
    --target` leaves it. The source is copied first: building in place would leave build/ and egg-info in the repo."""
    root = tmp_path_factory.mktemp("plugin")
    source = copy_example(root / "source")
    site = root / "site"
    result = _pip_install(source, site)  # build isolation: pip fetches setuptools as a user's pip would
    if result.returncode != 0:  # no registry at hand: build with this environment's setuptools (needs wheel)
        shutil.rmtree(site, ignore_errors=True)
        offline = _pip_install(source, site, "--no-build-isolation")
        if offline.returncode != 0:
            pytest.fail(f"pip install failed:\n{result.stdout}{result.stderr}\n{offline.stdout}{offline.stderr}")
    assert (site / "trackpoint_sqlite" / "__init__.py").is_file()
    return site


def _plugin_modules() -> dict[str, Any]:
    return {n: m for n, m in sys.modules.items() if n == "trackpoint_sqlite" or n.startswith("trackpoint_sqlite.")}


@pytest.fixture
def installed_plugin(plugin_site: Path) -> Iterator[Path]:
    """The installed package first on sys.path, and no copy of it imported yet (the unit tests import the
    checkout's): what the entry point loads is the installed package. All undone afterwards."""
    imported = _plugin_modules()
    for name in imported:
        del sys.modules[name]
    sys.path.insert(0, str(plugin_site))
    importlib.invalidate_caches()
    try:
        yield plugin_site
    finally:
        sys.path.remove(str(plugin_site))
        for name in _plugin_modules():
            del sys.modules[name]
        sys.modules.update(imported)
        importlib.invalidate_caches()


def test_the_entry_point_brings_every_extension_point(installed_plugin: Path) -> None:
    plugins, failures = discover()
    assert failures == {}
    registry = resolve(plugins, failures)
    assert registry.plugins == ("builtin", "sqlite")
    module = sys.modules["trackpoint_sqlite"]
    assert module.__file__ is not None and Path(module.__file__).is_relative_to(installed_plugin)

    collector = registry.collectors["sqlite"]
    assert collector.config.__module__ == "trackpoint_sqlite.config" and not collector.implicit
    assert registry.preprocessors["tag_dims"].config.__module__ == "trackpoint_sqlite.config"
    pageview = registry.event_types["pageview"]
    assert pageview.paths == ["/pv"] and pageview.response.kind == "gif"
    assert pageview.fields["url"].required and pageview.fields["url"].max_len == 2048
    assert pageview.fields["uid"].source == "cookie"
    assert "impression" in registry.event_types  # the built-in presets are still there
    routes = [(route.method, route.path) for route in registry.admin_routes]
    assert ("GET", "/sqlite/stats") in routes and ("GET", "/banker/campaigns/{id}") in routes  # theirs and ours


def _entry_points(site: Path, distribution: str, lines: str) -> None:
    """A second distribution's metadata on the path: what a stale dist-info or a second install leaves."""
    info = site / f"{distribution}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[trackpoint.plugins]\n{lines}\n")


def test_a_plugin_named_by_two_entry_points_is_loaded_once_and_another_of_its_name_is_refused(
    installed_plugin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = tmp_path / "site"
    extra.mkdir()
    _entry_points(extra, "sqlite_again", "sqlite_again = trackpoint_sqlite:plugin")
    _entry_points(extra, "impostor", "zz_impostor = impostor_plugin:plugin")
    (extra / "impostor_plugin.py").write_text("from trackpoint.plugins import Plugin\nplugin = Plugin(name='sqlite')\n")
    sys.path.append(str(extra))
    importlib.invalidate_caches()
    try:
        plugins, failures = discover()
    finally:
        sys.path.remove(str(extra))
        sys.modules.pop("impostor_plugin", None)
        importlib.invalidate_caches()
    assert [plugin.name for plugin in plugins] == ["builtin", "sqlite"]
    # The second entry point of the same plugin is a warning, not a failure: the plugin is loaded.
    assert "plugin sqlite is named by two entry points, sqlite and sqlite_again: loaded once" in caplog.text
    # Another plugin of the same name is refused, under its own entry point's name: "plugin sqlite is not loaded"
    # would say the wrong thing.
    assert failures == {"zz_impostor": "impostor_plugin:plugin: the plugin name 'sqlite' is taken by sqlite"}
    registry = resolve(plugins, failures)
    assert registry.plugins == ("builtin", "sqlite") and "sqlite" in registry.collectors


def test_the_example_config_is_valid_with_the_plugin_and_only_with_it(installed_plugin: Path) -> None:
    registry = resolve(*discover())
    config = load(EXAMPLE / "example.yaml", registry=registry).config

    sqlite_config = config.collectors["sqlite"]
    assert type(sqlite_config).__name__ == "SqliteCollectorConfig"
    assert msgspec.to_builtins(sqlite_config)["path"] == "trackpoint.sqlite"
    assert msgspec.to_builtins(config.preprocessors["tag_region"])["dims"]["region"] == "eu-west-1"
    assert config.event_types["impression"].paths == ["/i"]  # from the built-in preset
    assert config.event_types["impression"].dedupe_key == ["imp"]
    assert config.event_types["pageview"].paths == ["/pv"]  # from the plugin's preset
    for event_type in config.event_types.values():
        assert event_type.collectors == ["log", "sqlite"]
        assert event_type.preprocessors[-1] == "tag_region"

    with pytest.raises(ConfigError) as refused:
        load(EXAMPLE / "example.yaml", registry=resolve([builtin_plugin]))
    assert "unknown preset 'pageview'" in str(refused.value)


def _with_site(site: Path) -> str:
    """PYTHONPATH with the installed package first: a process finds the plugin through it alone."""
    return os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))


@pytest.mark.timeout(180)
def test_the_plugins_own_tests_run_the_conformance_battery_from_its_repository(
    plugin_site: Path, tmp_path: Path
) -> None:
    """What the plugin guide tells an integrator to do, outside trackpoint's repository: the plugin's own
    tests/test_conformance.py subclasses the shipped battery, and pytest, run in the plugin's directory with the
    plugin installed, passes every test of it against the sqlite collector (none skipped)."""
    repository = copy_example(tmp_path / "trackpoint-sqlite")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA"],
        cwd=repository,
        env=os.environ | {"PYTHONPATH": _with_site(plugin_site)},
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    battery = sorted(name for name in dir(CollectorConformance) if name.startswith("test_"))
    assert len(battery) >= 5
    passed = re.findall(r"^PASSED tests/test_conformance\.py::TestSqliteConformance::(\w+)$", output, re.MULTILINE)
    assert sorted(passed) == battery, output
    assert f"{len(battery)} passed in" in output, output  # and nothing skipped


# --- a real tracker with the plugin -------------------------------------------------------------------------------


def stored_rows(path: Path) -> list[tuple[str, str, int, str]]:
    """The rows of the events table (none while the file or table does not exist yet), read-only."""
    if not path.exists():
        return []
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'events'").fetchone() is None:
            return []
        return connection.execute("SELECT id, type, ts, event FROM events ORDER BY rowid").fetchall()
    finally:
        connection.close()


def wait_rows(path: Path, count: int, timeout_s: float = 10.0) -> list[tuple[str, str, int, str]]:
    deadline = time.monotonic() + timeout_s
    rows = stored_rows(path)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = stored_rows(path)
    return rows


@pytest.mark.timeout(90)
def test_a_tracker_with_the_plugin_stores_events_in_sqlite(
    plugin_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = yaml.safe_load((EXAMPLE / "example.yaml").read_text())
    del document["data_dir"]  # the Tracker helper puts the data under tmp_path
    tracker = Tracker(tmp_path, document)
    database = tracker.data_dir / "trackpoint.sqlite"
    # The tracker and its workers inherit the environment: the plugin is found through PYTHONPATH alone.
    monkeypatch.setenv("PYTHONPATH", _with_site(plugin_site))
    tracker.start()
    try:
        status, _, _ = tracker.get("/i?imp=imp-e2e-1&cid=c1&pub=news")
        assert status == 200
        status, _, body = tracker.get(
            "/pv?url=https%3A%2F%2Fexample.com%2Fa&ref=https%3A%2F%2Fsearch.example%2F",
            headers={"Cookie": "uid=u-42"},
        )
        assert (status, body[:6]) == (200, b"GIF89a")

        rows = wait_rows(database, 2)
        by_type = {event_type: msgspec.json.decode(event, type=Event) for _, event_type, _, event in rows}
        assert sorted(by_type) == ["impression", "pageview"], tracker.output()
        impression, pageview = by_type["impression"], by_type["pageview"]
        assert impression.id == derived_id("impression", ["imp-e2e-1"])
        tagged = {"region": "eu-west-1", "tracker": "edge-1"}  # by tag_dims
        assert impression.dims == {"imp": "imp-e2e-1", "cid": "c1", "pub": "news", **tagged}
        assert pageview.dims["url"] == "https://example.com/a" and pageview.dims["uid"] == "u-42"
        assert pageview.dims["region"] == "eu-west-1"
        assert [(row[0], row[2]) for row in rows if row[1] == "impression"] == [(impression.id, impression.ts)]

        # The same impression again: same id, so the row is not added twice (the log, by design, has both).
        assert tracker.get("/i?imp=imp-e2e-1&cid=c1&pub=news")[0] == 200
        assert tracker.wait_metric("trackpoint_collector_sent_total", 'collector="sqlite"', 3, timeout_s=10) == 3
        assert [row[1] for row in stored_rows(database)] == ["impression", "pageview"]
        assert len(tracker.wait_events(3)) == 3

        # The route finds the database from the running configuration: the sqlite collector's path under data_dir.
        status, _, body = tracker.admin("GET", "/sqlite/stats")
        assert status == 200, body
        assert json.loads(body) == {
            "collectors": {
                "sqlite": {"database": str(database), "rows": {"impression": 1, "pageview": 1}, "total": 2},
            }
        }
    finally:
        code = tracker.stop()
    assert code == 0, tracker.output()
    assert "is not loaded" not in tracker.output()


# --- unit tests ---------------------------------------------------------------------------------------------------


def make_events(count: int, event_type: str = "impression") -> list[Event]:
    now = int(time.time() * 1000)
    meta = Meta(worker=0, config="test")
    return [
        Event(
            id=random_id(now + i),
            type=event_type,
            ts=now + i,
            dims={"n": str(i)},
            metrics={"price": i},
            ctx=Context(ip="192.0.2.0"),
            meta=meta,
        )
        for i in range(count)
    ]


def make_collector(directory: Path, **options: Any) -> SqliteCollector:
    config = msgspec.convert({"type": "sqlite", "flush_interval_ms": 10, **options}, SqliteCollectorConfig)
    return SqliteCollector("sqlite", config, CollectorContext(str(directory)))


def hold_lock(path: Path) -> sqlite3.Connection:
    """Another writer's long transaction: the database's write lock, held until released."""
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    return lock


def release(lock: sqlite3.Connection) -> None:
    lock.execute("ROLLBACK")
    lock.close()


def test_a_locked_database_is_a_retry_and_the_batch_lands_after_release(tmp_path: Path) -> None:
    database = tmp_path / "trackpoint.sqlite"
    batch = make_events(5)

    async def main() -> None:
        collector = make_collector(tmp_path, busy_timeout_ms=100)
        await collector.start()
        try:
            lock = hold_lock(database)
            try:
                assert await collector.send(batch) is SendResult.RETRY
                health = collector.health()
                assert not health.healthy and "database is locked" in health.detail
                assert stored_rows(database) == []  # the transaction of the failed batch left nothing
            finally:
                release(lock)
            assert await collector.send(batch) is SendResult.DELIVERED
            assert collector.health().healthy
        finally:
            await collector.close(5.0)

    asyncio.run(main())
    rows = stored_rows(database)
    assert [(row[0], row[1], row[2]) for row in rows] == [(e.id, e.type, e.ts) for e in batch]
    assert [msgspec.json.decode(row[3], type=Event) for row in rows] == batch


def test_a_database_locked_at_start_does_not_stop_the_collector(tmp_path: Path) -> None:
    database = tmp_path / "nested" / "events.sqlite"
    database.parent.mkdir()
    batch = make_events(3)

    async def main() -> None:
        lock = hold_lock(database)
        collector = make_collector(tmp_path, path="nested/events.sqlite", busy_timeout_ms=50)
        try:
            await collector.start()  # must not raise: sends retry until the database is back
            assert not collector.health().healthy
            assert await collector.send(batch) is SendResult.RETRY
        finally:
            release(lock)
        try:
            assert await collector.send(batch) is SendResult.DELIVERED
            assert collector.health().healthy
        finally:
            await collector.close(5.0)

    asyncio.run(main())
    assert [row[0] for row in stored_rows(database)] == [e.id for e in batch]


def test_insert_or_ignore_makes_retries_and_replays_idempotent(tmp_path: Path) -> None:
    database = tmp_path / "trackpoint.sqlite"
    first, second = make_events(4), make_events(3, "click")

    async def main() -> None:
        collector = make_collector(tmp_path)
        await collector.start()
        try:
            assert await collector.send(first) is SendResult.DELIVERED
            assert await collector.send(first) is SendResult.DELIVERED  # a retry of a batch that had landed
            assert await collector.send([*first[2:], *second]) is SendResult.DELIVERED  # overlapping replay
        finally:
            await collector.close(5.0)

    asyncio.run(main())
    assert [row[0] for row in stored_rows(database)] == [e.id for e in [*first, *second]]


def test_events_offered_flow_through_batching_into_the_database(tmp_path: Path) -> None:
    database = tmp_path / "trackpoint.sqlite"
    sent = make_events(250)

    async def main() -> None:
        collector = make_collector(tmp_path, batch_max_events=100)
        await collector.start()
        for event in sent:
            collector.offer(event)
        await collector.close(5.0)
        stats = collector.snapshot()
        assert (stats.received, stats.sent, stats.dropped, stats.errors) == (250, 250, 0, 0)

    asyncio.run(main())
    assert [row[0] for row in stored_rows(database)] == [e.id for e in sent]


def test_tag_dims_adds_dimensions_and_never_overwrites_the_requests() -> None:
    tag = TagDims("tag_region", TagDimsConfig(dims={"region": "eu-west-1", "tracker": "edge-1"}))
    event = make_events(1)[0]
    event.dims["region"] = "us-east-1"  # set by the request
    result = tag(event)
    assert result is event
    assert event.dims == {"n": "0", "region": "us-east-1", "tracker": "edge-1"}


def test_stats_counts_rows_per_sqlite_collector_of_the_config_read_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    database, other = data_dir / "trackpoint.sqlite", data_dir / "nested" / "other.sqlite"
    config = Config(
        data_dir=str(data_dir),
        collectors={
            "main": msgspec.convert({"type": "sqlite"}, SqliteCollectorConfig),
            "other": msgspec.convert({"type": "sqlite", "path": "nested/other.sqlite"}, SqliteCollectorConfig),
        },
    )
    request = AdminRequest(method="GET", path="/sqlite/stats", query="")

    missing = asyncio.run(sqlite_stats(request, config))
    assert missing.status == 200
    assert json.loads(missing.body) == {
        "collectors": {
            "main": {"database": str(database), "error": "no_database"},
            "other": {"database": str(other), "error": "no_database"},
        }
    }
    assert not data_dir.exists()  # read-only: the route never creates a file

    async def fill() -> None:
        collector = make_collector(data_dir)  # the default path, as the "main" collector has it
        await collector.start()
        await collector.send([*make_events(3), *make_events(2, "click")])
        await collector.close(5.0)

    asyncio.run(fill())
    response = asyncio.run(sqlite_stats(request, config))
    assert response.status == 200
    assert json.loads(response.body) == {
        "collectors": {
            "main": {"database": str(database), "rows": {"click": 2, "impression": 3}, "total": 5},
            "other": {"database": str(other), "error": "no_database"},
        }
    }
    assert not other.exists()

    none = asyncio.run(sqlite_stats(request, Config(data_dir=str(data_dir))))  # no sqlite collector configured
    assert (none.status, json.loads(none.body)) == (404, {"error": "no_sqlite_collector"})
