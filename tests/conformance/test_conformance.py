"""One battery for every collector, against real servers: send, batch, outage and recovery, shutdown drain, a
worker's spool adopted by its successor, and replay idempotency.

Each target module (target_<name>.py) gives a server and a way to read back what reached it; see Target below.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import msgspec
import pytest

from conftest import until
from trackpoint.collectors.base import Collector, CollectorContext
from trackpoint.collectors.log.collector import LogCollector
from trackpoint.collectors.log.config import LogCollectorConfig
from trackpoint.event import Context, Event, Meta, random_id
from trackpoint.plugins import Registry, resolve
from trackpoint.plugins.builtin import plugin as builtin_plugin
from trackpoint.replay import ReplayPlan, replay

pytestmark = pytest.mark.e2e  # every collector against its real server

TARGETS = ["kafka", "nats", "redis_streams", "rollup", "sqlite"]


class Target(Protocol):
    name: str
    supports_restart: bool
    dedupes_replays: bool

    def collector_config(self) -> dict[str, Any]: ...
    async def read_ids(self) -> list[str]: ...
    async def stop(self) -> None: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


def registry_for(name: str) -> Registry:
    plugins = [builtin_plugin]
    if name == "sqlite":  # the example plugin package, as a third-party plugin
        importlib.import_module(f"{__package__}.target_sqlite")
        plugins.append(importlib.import_module("trackpoint_sqlite").plugin)
    return resolve(plugins)


@asynccontextmanager
async def target_for(name: str) -> AsyncIterator[Target]:
    module = importlib.import_module(f"{__package__}.target_{name}")
    make: Callable[[], Awaitable[Target]] = module.make_target
    target = await make()
    try:
        yield target
    finally:
        await target.close()


def build(target: Target, data_dir: Path, **options: Any) -> Collector:
    raw = target.collector_config() | {"retry_initial_ms": 50, "retry_max_ms": 400, "send_timeout_s": 5.0} | options
    kind = registry_for(target.name).collectors[raw["type"]]
    config = msgspec.convert(raw, kind.config)
    return kind.factory(f"conformance-{target.name}", config, CollectorContext(str(data_dir), worker=1))


def events(count: int, types: tuple[str, ...] = ("impression", "click")) -> list[Event]:
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
    async def done() -> bool:
        return ids <= set(await target.read_ids())

    await until(done, timeout_s, f"{len(ids)} events at {target.name}")


@pytest.fixture(params=TARGETS)
def target_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.mark.timeout(60)
def test_sends_batches_in_full(target_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with target_for(target_name) as target:
            collector = build(target, tmp_path, batch_max_events=500)
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

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_shutdown_drains_what_is_pending(target_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with target_for(target_name) as target:
            collector = build(target, tmp_path, flush_interval_ms=60_000)  # nothing leaves before close
            await collector.start()
            sent = events(1_500)
            for event in sent:
                collector.offer(event)
            await collector.close(20.0)
            assert collector.snapshot().sent == 1_500
            assert set(await target.read_ids()) == {e.id for e in sent}

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_outage_spools_retries_and_delivers_everything_in_order_after_restart(target_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with target_for(target_name) as target:
            if not target.supports_restart:
                pytest.skip(f"{target_name}: {type(target).__doc__}")
            collector = build(target, tmp_path)
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

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_a_workers_spool_is_delivered_by_its_successor(target_name: str, tmp_path: Path) -> None:
    """A worker drained during an outage leaves its backlog on disk; the next worker with the collector sends it."""

    async def main() -> None:
        async with target_for(target_name) as target:
            if not target.supports_restart:
                pytest.skip(f"{target_name}: {type(target).__doc__}")
            await target.stop()
            first = build(target, tmp_path)
            await first.start()
            stranded = events(1_200)
            for event in stranded:
                first.offer(event)
            await first.close(1.0)
            assert first.snapshot().dropped == 0
            await target.start()
            second = build(target, tmp_path)
            await second.start()
            await all_delivered(target, {e.id for e in stranded}, timeout_s=40)
            await second.close(10.0)
            assert not list((tmp_path / "spool").rglob("*.seg"))  # the adopted spool is gone once delivered

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_replaying_logs_twice_counts_nothing_twice(target_name: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with target_for(target_name) as target:
            logged = events(3_000)
            log = LogCollector("log", LogCollectorConfig(compression="none"), CollectorContext(str(tmp_path), worker=1))
            await log.start()
            for event in logged:
                log.offer(event)
            await log.close(10.0)
            name = f"conformance-{target.name}"
            replay_plan = ReplayPlan(collectors={name: ["impression", "click"]}, batch_events=700)
            for _ in range(2):
                report = await replay([tmp_path / "logs"], {name: build(target, tmp_path)}, replay_plan)
                assert report.read.events == 3_000 and report.collectors[name].sent == 3_000
            delivered = await target.read_ids()
            assert set(delivered) == {e.id for e in logged}
            if target.dedupes_replays:
                assert len(delivered) == 3_000  # the target itself dropped the second copies
            else:  # at-least-once: a consumer dedupes on the id each message carries
                assert max(Counter(delivered).values()) == 2

    asyncio.run(main())
