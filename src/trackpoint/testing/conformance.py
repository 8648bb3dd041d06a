"""The conformance battery every collector passes against its real server: send, batch, outage and recovery,
shutdown drain, a worker's spool adopted by its successor, and replay idempotency.

A plugin runs it from its own repository: a test module subclasses `CollectorConformance` under a name pytest
collects, lists the plugin in `plugins` and makes a `Target` (the collector's server, and a way to read back what
reached it); pytest then runs every test of the battery against it. trackpoint's own collectors run the same class
(tests/conformance/test_conformance.py).

    import trackpoint_sqlite
    from trackpoint.testing.conformance import CollectorConformance, Target

    class TestSqliteConformance(CollectorConformance):
        plugins = (trackpoint_sqlite.plugin,)

        async def make_target(self) -> Target:
            return SqliteTarget(...)
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import msgspec
import pytest

from trackpoint.collectors.base import Collector, CollectorContext
from trackpoint.collectors.log.collector import LogCollector
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.event import Context, Event, Meta, random_id
from trackpoint.plugins import Plugin, Registry, resolve
from trackpoint.plugins.builtin import plugin as builtin_plugin
from trackpoint.replay import ReplayPlan, replay
from trackpoint.testing import until


class Target(Protocol):
    """A collector's real server for the battery, made anew for each test (`CollectorConformance.make_target`)
    and closed at its end. `name` names the collector built for it (`conformance-<name>`) and the tests' messages.
    `supports_restart` says whether `stop` and `start` make an outage and its recovery: the outage and successor
    tests need one, and are skipped with the target class's docstring as the reason without it. `dedupes_replays`
    says whether the server itself keeps one copy of an event sent twice (its id a key): if not, each replayed
    event arrives twice (at least once; a consumer dedupes on the id)."""

    name: str
    supports_restart: bool
    dedupes_replays: bool

    def collector_config(self) -> dict[str, Any]:
        """The collector's options, as a configuration file's `collectors.<name>` holds them, with its `type`: the
        battery adds short retry and send timeouts and each test's batching options."""
        ...

    async def read_ids(self) -> list[str]:
        """The ids of every event that reached the server, a copy for each copy stored, in delivery order."""
        ...

    async def stop(self) -> None:
        """An outage: the collector's sends fail (a stopped server, refused connections, a lock held) from now on,
        while what was delivered is kept."""
        ...

    async def start(self) -> None:
        """The end of the outage: sends go through again, to the same address."""
        ...

    async def close(self) -> None:
        """Releases the server and everything the target made (processes, files)."""
        ...


class CollectorConformance:
    """The battery, as pytest test methods. Subclass it under a name pytest collects (`TestSqliteConformance`; this
    class is not collected itself), list your plugin in `plugins` and implement `make_target`. Each test runs in
    its own event loop (`asyncio.run`) within a deadline, builds the collector from the target's
    `collector_config` through the registry of the built-in plugin and `plugins`, as the tracker builds it, with a
    data directory in pytest's `tmp_path`, and closes the target at its end. It needs no pytest plugin or marker.
    `plugins`: the plugins besides the built-in one, among them the one providing the target's collector type."""

    plugins: ClassVar[Sequence[Plugin]] = ()

    async def make_target(self) -> Target:
        """A new target, its server ready: called once per test, inside the test's event loop."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_target")

    def registry(self) -> Registry:
        """The registry the collector is built from: the built-in plugin and `plugins`. A plugin that is not loaded
        (its names clash with another's) fails the test with the reason."""
        registry = resolve([builtin_plugin, *self.plugins])
        if registry.failures:
            pytest.fail(f"plugins not loaded: {dict(registry.failures)}", pytrace=False)
        return registry

    def build(self, target: Target, data_dir: Path, **options: Any) -> Collector:
        """The collector `conformance-<target name>` of worker 1, from the target's options and `options`."""
        raw = target.collector_config() | {"retry_initial_ms": 50, "retry_max_ms": 400, "send_timeout_s": 5.0}
        raw |= options
        kind = self.registry().collectors.get(raw["type"])
        if kind is None:
            pytest.fail(f"no collector type {raw['type']!r}: list the plugin providing it in `plugins`", pytrace=False)
        config = msgspec.convert(raw, kind.config)
        return kind.factory(f"conformance-{target.name}", config, CollectorContext(str(data_dir), worker=1))

    @asynccontextmanager
    async def _target(self) -> AsyncIterator[Target]:
        target = await self.make_target()
        try:
            yield target
        finally:
            await target.close()

    def test_sends_batches_in_full(self, tmp_path: Path) -> None:
        """2,300 events offered in batches of up to 500 all arrive, each once, and are counted sent."""

        async def main() -> None:
            async with self._target() as target:
                collector = self.build(target, tmp_path, batch_max_events=500)
                await collector.start()
                sent = events(2_300)
                for event in sent:
                    collector.offer(event)
                await all_delivered(target, {e.id for e in sent})
                await collector.close(10.0)
                stats = collector.snapshot()
                assert (stats.received, stats.sent, stats.dropped) == (2_300, 2_300, 0)
                delivered = await target.read_ids()
                assert Counter(delivered) == Counter(e.id for e in sent)  # each once, nothing else

        run(main, 60)

    def test_shutdown_drains_what_is_pending(self, tmp_path: Path) -> None:
        """Events still pending when the collector closes (no flush before) are delivered by close()."""

        async def main() -> None:
            async with self._target() as target:
                collector = self.build(target, tmp_path, flush_interval_ms=60_000)  # nothing leaves before close
                await collector.start()
                sent = events(1_500)
                for event in sent:
                    collector.offer(event)
                await collector.close(20.0)
                assert collector.snapshot().sent == 1_500
                assert set(await target.read_ids()) == {e.id for e in sent}

        run(main, 60)

    def test_outage_spools_retries_and_delivers_everything_in_order_after_restart(self, tmp_path: Path) -> None:
        """During an outage the backlog moves to the disk spool and is retried; after it, everything arrives, in the
        order it was offered, and nothing is dropped."""

        async def main() -> None:
            async with self._target() as target:
                if not target.supports_restart:
                    pytest.skip(f"{target.name}: {type(target).__doc__}")
                collector = self.build(target, tmp_path)
                await collector.start()
                before = events(200)
                for event in before:
                    collector.offer(event)
                await all_delivered(target, {e.id for e in before})
                await target.stop()
                during = events(3_000)
                for event in during:
                    collector.offer(event)
                    if len(during) % 500 == 0:
                        await asyncio.sleep(0)

                async def spooled() -> bool:  # memory is kept small: the backlog goes to disk
                    stats = collector.snapshot()
                    return stats.retried > 0 and stats.pending == 0 and stats.spooled_events == len(during)

                await until(spooled, 20, "the backlog to move to the spool")
                await target.start()
                await all_delivered(target, {e.id for e in before + during}, timeout_s=40)
                await collector.close(10.0)
                stats = collector.snapshot()
                assert stats.dropped == 0 and stats.spooled_events == 0
                first_seen = list(dict.fromkeys(await target.read_ids()))
                position = {event_id: i for i, event_id in enumerate(first_seen)}
                assert [position[e.id] for e in during] == sorted(position[e.id] for e in during)  # order kept

        run(main, 90)

    def test_a_workers_spool_is_delivered_by_its_successor(self, tmp_path: Path) -> None:
        """A worker drained during an outage leaves its backlog on disk; the next worker with the collector sends it."""

        async def main() -> None:
            async with self._target() as target:
                if not target.supports_restart:
                    pytest.skip(f"{target.name}: {type(target).__doc__}")
                await target.stop()
                first = self.build(target, tmp_path)
                await first.start()
                stranded = events(1_200)
                for event in stranded:
                    first.offer(event)
                await first.close(1.0)
                assert first.snapshot().dropped == 0
                await target.start()
                second = self.build(target, tmp_path)
                await second.start()
                await all_delivered(target, {e.id for e in stranded}, timeout_s=40)
                await second.close(10.0)
                assert not list((tmp_path / "spool").rglob("*.seg"))  # the adopted spool is gone once delivered

        run(main, 90)

    def test_replaying_logs_twice_counts_nothing_twice(self, tmp_path: Path) -> None:
        """Replaying the same logs twice (`trackpoint replay`) delivers every event; a target that dedupes keeps one
        copy of each, another gets exactly two."""

        async def main() -> None:
            async with self._target() as target:
                logged = events(3_000)
                log = LogCollector(
                    "log", LogCollectorConfig(compression="none"), CollectorContext(str(tmp_path), worker=1)
                )
                await log.start()
                for event in logged:
                    log.offer(event)
                await log.close(10.0)
                name = f"conformance-{target.name}"
                replay_plan = ReplayPlan(collectors={name: ["impression", "click"]}, batch_events=700)
                for _ in range(2):
                    report = await replay([tmp_path / "logs"], {name: self.build(target, tmp_path)}, replay_plan)
                    assert report.read.events == 3_000 and report.collectors[name].sent == 3_000
                delivered = await target.read_ids()
                assert set(delivered) == {e.id for e in logged}
                if target.dedupes_replays:
                    assert len(delivered) == 3_000  # the target itself dropped the second copies
                else:  # at-least-once: a consumer dedupes on the id each message carries
                    assert max(Counter(delivered).values()) == 2

        run(main, 90)


class SqliteFileTarget:
    """A base for the target of a collector that writes one SQLite database file, in a directory of its own that
    `close` removes. An outage is another connection holding the database's write lock (`BEGIN EXCLUSIVE`), as a long
    transaction of another writer would: give the collector a short busy timeout in `collector_config`, so that its
    locked batches fail fast and are retried until the lock is released. A subclass sets `name` and
    `dedupes_replays`, and defines `collector_config` and `ids_in`."""

    supports_restart = True
    lock_wait_s = 10.0  # how long reads and the outage's lock wait for a writer in the middle of a batch

    def __init__(self, path: Path) -> None:
        self.path = path
        self.directory = path.parent
        self._lock: sqlite3.Connection | None = None

    def ids_in(self, connection: sqlite3.Connection) -> list[str]:
        """What `read_ids` returns, read through a read-only connection to the database, which exists."""
        raise NotImplementedError

    async def read_ids(self) -> list[str]:
        """`ids_in` of the database, off the event loop; none before the collector made the file."""
        return await asyncio.to_thread(self._read_ids)

    def _read_ids(self) -> list[str]:
        if not self.path.exists():
            return []
        connection = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=self.lock_wait_s)
        try:
            return self.ids_in(connection)
        finally:
            connection.close()

    async def stop(self) -> None:
        """Takes the database's write lock on a connection of its own and keeps it until `start`."""
        await asyncio.to_thread(self._take_lock)

    def _take_lock(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: the lock is taken and released on different threads of the default executor.
        lock = sqlite3.connect(self.path, timeout=self.lock_wait_s, isolation_level=None, check_same_thread=False)
        lock.execute("BEGIN EXCLUSIVE")
        self._lock = lock

    async def start(self) -> None:
        """Releases the write lock: the collector's retried batches go through."""
        await asyncio.to_thread(self._release_lock)

    def _release_lock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.execute("ROLLBACK")
            lock.close()

    async def close(self) -> None:
        """Releases the lock and removes the database's directory."""
        await asyncio.to_thread(self._release_lock)
        shutil.rmtree(self.directory, ignore_errors=True)


def events(count: int, types: tuple[str, ...] = ("impression", "click")) -> list[Event]:
    """`count` events of worker 1 with fresh ids, alternating `types`, a millisecond apart."""
    meta = Meta(worker=1, config="conformance")
    now = int(time.time() * 1000)
    return [
        Event(
            id=random_id(now + i),
            type=types[i % len(types)],
            ts=now + i,
            dims={"n": str(i)},
            metrics={},
            ctx=Context(),
            meta=meta,
        )
        for i in range(count)
    ]


async def all_delivered(target: Target, ids: set[str], timeout_s: float = 30.0) -> None:
    """Waits until every id in `ids` reached the target; fails the test after `timeout_s`."""

    async def done() -> bool:
        return ids <= set(await target.read_ids())

    await until(done, timeout_s, f"{len(ids)} events at {target.name}")


def run(main: Callable[[], Awaitable[None]], timeout_s: float) -> None:
    """Runs a test's coroutine in an event loop of its own; fails the test when it is not done in `timeout_s` (a
    deadline of the battery's own: it needs no pytest-timeout)."""

    async def bounded() -> None:
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                await main()
        except TimeoutError:
            if deadline.expired():
                pytest.fail(f"not done in {timeout_s} s", pytrace=False)
            raise

    asyncio.run(bounded())


__all__ = ["CollectorConformance", "SqliteFileTarget", "Target", "all_delivered", "events", "run"]
