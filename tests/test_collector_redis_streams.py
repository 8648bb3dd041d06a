"""Tests of the redis_streams collector against real Redis servers: the shared one (TRACKPOINT_TEST_REDIS_URL) with
unique keys per test, and private redis-server processes for outages, restarts and passwords.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from conformance.target_redis_streams import RedisStreamsTarget, make_target
from conftest import assert_limited_per_kind, make_event, until
from trackpoint.collectors.base import CollectorContext, SendResult
from trackpoint.collectors.redis_streams.collector import RedisStreamsCollector
from trackpoint.collectors.redis_streams.config import RedisStreamsCollectorConfig, seen_prefix
from trackpoint.event import Event
from trackpoint.plugins import registry

pytestmark = pytest.mark.e2e  # a real Redis

REDIS_URL = os.environ.get("TRACKPOINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DECODER = msgspec.json.Decoder(Event)


def config(**options: Any) -> RedisStreamsCollectorConfig:
    return msgspec.convert({"type": "redis_streams", "flush_interval_ms": 20, **options}, RedisStreamsCollectorConfig)


def collector(options: RedisStreamsCollectorConfig, tmp_path: Path, name: str = "queue") -> RedisStreamsCollector:
    return RedisStreamsCollector(name, options, CollectorContext(data_dir=str(tmp_path)))


@asynccontextmanager
async def shared_redis() -> AsyncIterator[tuple[Redis, str]]:
    """A client of the shared server and a unique key prefix; every key under the prefix is deleted afterwards."""
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = f"tptest:{uuid.uuid4().hex[:12]}"
    try:
        yield client, prefix
    finally:
        stale = [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
        for start in range(0, len(stale), 1000):
            await client.delete(*stale[start : start + 1000])
        await client.aclose()


async def entries(client: Redis, stream: str) -> list[tuple[str, dict[str, str]]]:
    return cast(list[tuple[str, dict[str, str]]], await client.xrange(stream))  # decode_responses: str, not bytes


async def stream_ids(client: Redis, stream: str) -> list[str]:
    return [fields["id"] for _, fields in await entries(client, stream)]


# --- configuration -------------------------------------------------------------------------------------------


def test_defaults_and_validation() -> None:
    defaults = config()
    assert defaults.url == "redis://127.0.0.1:6379/0"
    assert defaults.stream == "trackpoint:{type}"
    assert defaults.dedupe_window_s == 86_400
    assert config(stream="{tp}:{type}").stream == "{tp}:{type}"
    for bad in ({"stream": "a{b:{type}"}, {"maxlen": -1}, {"dedupe_window_s": -1}, {"password": "x"}):
        with pytest.raises(msgspec.ValidationError):
            config(**bad)


def test_dedupe_keys_share_the_cluster_slot_of_their_stream() -> None:
    for stream in ("trackpoint:impression", "{tp}:impression", "a:{tag}:b"):
        key = seen_prefix(stream) + "0123456789abcdef0123456789abcdef"
        assert key_slot(key.encode()) == key_slot(stream.encode()), stream
    assert seen_prefix("trackpoint:impression") == "{trackpoint:impression}:seen:"


def test_a_missing_password_variable_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TP_TEST_UNSET_PASSWORD"):
        collector(config(password_env="TP_TEST_UNSET_PASSWORD"), tmp_path)


def test_the_registry_builds_it_from_a_raw_config(tmp_path: Path) -> None:
    kind = registry().collectors["redis_streams"]
    built = kind.factory("queue", msgspec.convert({"type": "redis_streams"}, kind.config), CollectorContext("/tmp"))
    assert isinstance(built, RedisStreamsCollector)


# --- delivery ------------------------------------------------------------------------------------------------


def test_delivers_entries_per_type_with_id_type_and_json(tmp_path: Path) -> None:
    async def main() -> None:
        async with shared_redis() as (client, prefix):
            target = collector(config(url=REDIS_URL, stream=prefix + ":{type}", dedupe_window_s=600), tmp_path)
            await target.start()
            batch = [make_event(i, "impression" if i % 3 else "win") for i in range(300)]
            assert await target.send(batch) is SendResult.DELIVERED
            await target.close(1.0)

            for event_type in ("impression", "win"):
                stored = await entries(client, f"{prefix}:{event_type}")
                expected = [e for e in batch if e.type == event_type]
                assert [fields["id"] for _, fields in stored] == [e.id for e in expected]  # order kept
                assert {fields["type"] for _, fields in stored} == {event_type}
                assert [DECODER.decode(fields["event"]) for _, fields in stored] == expected
            seen = f"{{{prefix}:win}}:seen:{batch[0].id}"
            assert 590 <= await client.ttl(seen) <= 600
            assert target.health().healthy

    asyncio.run(main())


def test_a_repeated_batch_is_appended_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with shared_redis() as (client, prefix):
            target = collector(config(url=REDIS_URL, stream=prefix), tmp_path)
            await target.start()
            batch = [make_event(i) for i in range(2000)]  # over the events of one script call
            assert await target.send(batch[:1500]) is SendResult.DELIVERED
            assert await target.send(batch) is SendResult.DELIVERED  # a retry overlapping a delivered batch
            assert await target.send(batch) is SendResult.DELIVERED  # a replay
            await target.close(1.0)
            assert await stream_ids(client, prefix) == [e.id for e in batch]
            assert target.duplicates == 1500 + 2000

    asyncio.run(main())


def test_without_dedupe_a_pipeline_appends_every_copy(tmp_path: Path) -> None:
    async def main() -> None:
        async with shared_redis() as (client, prefix):
            target = collector(config(url=REDIS_URL, stream=prefix + ":{type}", dedupe_window_s=0), tmp_path)
            await target.start()
            batch = [make_event(i, "click") for i in range(50)]
            assert await target.send(batch) is SendResult.DELIVERED
            assert await target.send(batch) is SendResult.DELIVERED
            await target.close(1.0)
            assert await stream_ids(client, f"{prefix}:click") == [e.id for e in batch] * 2
            assert [key async for key in client.scan_iter(match=f"*{prefix}*:seen:*")] == []

    asyncio.run(main())


def test_maxlen_trims_approximately(tmp_path: Path) -> None:
    async def main() -> None:
        async with shared_redis() as (client, prefix):
            for dedupe_window_s in (0, 600):
                stream = f"{prefix}:{dedupe_window_s}"
                target = collector(
                    config(url=REDIS_URL, stream=stream, maxlen=100, dedupe_window_s=dedupe_window_s), tmp_path
                )
                await target.start()
                for start in range(0, 3000, 500):
                    batch = [make_event(i) for i in range(start, start + 500)]
                    assert await target.send(batch) is SendResult.DELIVERED
                await target.close(1.0)
                length = await client.xlen(stream)
                assert 100 <= length < 500, length  # `~`: whole nodes are trimmed, so a little more is kept
                assert (await stream_ids(client, stream))[-1] == make_event(2999).id

    asyncio.run(main())


def test_a_failed_append_forgets_its_id_so_the_retry_appends_it(tmp_path: Path) -> None:
    """An XADD that fails inside the script (here: the key is not a stream) must not leave its id marked as seen."""

    async def main() -> None:
        async with shared_redis() as (client, prefix):
            await client.set(f"{prefix}:win", "not a stream")
            target = collector(config(url=REDIS_URL, stream=prefix + ":{type}"), tmp_path)
            await target.start()
            batch = [make_event(i, "win" if i % 2 else "impression") for i in range(40)]
            assert await target.send(batch) is SendResult.RETRY
            health = target.health()
            assert not health.healthy
            assert "WRONGTYPE" in health.detail
            await client.delete(f"{prefix}:win")
            assert await target.send(batch) is SendResult.DELIVERED
            assert target.health().healthy
            await target.close(1.0)
            assert await stream_ids(client, f"{prefix}:win") == [e.id for e in batch if e.type == "win"]
            assert await stream_ids(client, f"{prefix}:impression") == [e.id for e in batch if e.type == "impression"]

    asyncio.run(main())


# --- outages -------------------------------------------------------------------------------------------------


def test_starts_and_retries_quickly_while_redis_is_down(tmp_path: Path) -> None:
    async def main() -> None:
        target = collector(config(url="redis://127.0.0.1:1/0", connect_timeout_s=1.0), tmp_path)
        began = time.monotonic()
        await target.start()
        assert await target.send([make_event(1)]) is SendResult.RETRY
        assert time.monotonic() - began < 2.0
        assert not target.health().healthy
        assert "ConnectionError" in target.health().detail
        await target.close(0.5)

    asyncio.run(main())


def test_outage_and_restart_lose_nothing_and_duplicate_nothing(tmp_path: Path) -> None:
    """Through the public path (offer, flush loop, spool): Redis stops, comes back at the same address with an empty
    script cache (NOSCRIPT is handled), and a replay of everything appends nothing new."""

    async def main() -> None:
        server = await make_target()
        try:
            options = msgspec.convert(server.collector_config(), RedisStreamsCollectorConfig)
            target = collector(options, tmp_path)
            await target.start()
            events = [make_event(i) for i in range(300)]
            for event in events[:100]:
                target.offer(event)
            await until(lambda: _equals(server.read_ids, [e.id for e in events[:100]]))

            await server.stop()
            for event in events[100:]:
                target.offer(event)
            await until(_truthy(lambda: not target.health().healthy))
            await server.start()
            await until(lambda: _equals(server.read_ids, [e.id for e in events]))
            assert target.health().healthy

            for event in events:  # `trackpoint replay` of the same log
                target.offer(event)
            await target.close(5.0)
            assert await server.read_ids() == [e.id for e in events]
            assert target.duplicates >= 300
        finally:
            await server.close()

    asyncio.run(main())


def test_an_outage_is_logged_at_once_then_once_per_interval_with_the_count_of_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each failed send is counted, not written: the outage's first line at once, then one per interval that counts
    those suppressed, then the recovery."""
    interval_s = 1.0
    monkeypatch.setattr("trackpoint.collectors.base.ERROR_LOG_INTERVAL_S", interval_s)
    caplog.set_level(logging.INFO, logger="trackpoint.collectors")

    async def main() -> None:
        server = await make_target()
        try:
            settings = server.collector_config() | {"retry_initial_ms": 50, "retry_max_ms": 100}
            target = collector(msgspec.convert(settings, RedisStreamsCollectorConfig), tmp_path)
            await target.start()
            events = [make_event(i) for i in range(400)]
            target.offer(events[0])
            await until(lambda: _equals(server.read_ids, [events[0].id]))
            await server.stop()
            for event in events[1:]:  # traffic through the outage, until some 40 sends failed (over seconds)
                target.offer(event)
                await asyncio.sleep(0.02)
                if target.stats.errors >= 40:
                    break
            await server.start()
            await until(_truthy(lambda: target.health().healthy and not target.retrying), 20.0)
            await target.close(5.0)
            assert target.stats.errors >= 40
        finally:
            await server.close()

    asyncio.run(main())
    messages = [record.getMessage() for record in caplog.records]
    failed = [record for record in caplog.records if "target unavailable" in record.getMessage()]
    assert "ConnectionError" in failed[0].getMessage()  # the first line of the outage is kept
    assert len(failed) < 20
    assert_limited_per_kind(failed, interval_s)
    assert any("delivering again after" in message for message in messages), messages


def test_password_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_TEST_REDIS_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("TP_TEST_REDIS_WRONG", "wrong")

    async def main() -> None:
        server = RedisStreamsTarget()
        binary = shutil.which("redis-server") or "redis-server"
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(server.server.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--requirepass",
                "s3cret-pw",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            probe = Redis.from_url(server.url, password="s3cret-pw")
            await until(_pings(probe))
            good = collector(config(url=server.url, stream="s", password_env="TP_TEST_REDIS_PASSWORD"), tmp_path)
            bad = collector(config(url=server.url, stream="s", password_env="TP_TEST_REDIS_WRONG"), tmp_path, "other")
            await good.start()
            await bad.start()
            assert await good.send([make_event(1)]) is SendResult.DELIVERED
            assert await bad.send([make_event(2)]) is SendResult.RETRY
            assert not bad.health().healthy
            await good.close(0.5)
            await bad.close(0.5)
            assert await probe.xlen("s") == 1
            await probe.aclose()
        finally:
            process.terminate()
            process.wait(10)
            await server.close()

    asyncio.run(main())


async def _equals(read: Callable[[], Awaitable[list[str]]], expected: list[str]) -> bool:
    return await read() == expected


def _truthy(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        return check()

    return condition


def _pings(client: Redis) -> Callable[[], Awaitable[bool]]:
    async def condition() -> bool:
        try:
            return bool(await client.ping())
        except Exception:
            return False

    return condition


def test_a_stalled_server_makes_the_batch_retry_within_the_timeout(tmp_path: Path) -> None:
    """A frozen server bounds the send; when it resumes it runs the abandoned script, and the retry adds nothing."""

    async def main() -> None:
        server = await make_target()
        try:
            raw = {**server.collector_config(), "timeout_s": 0.5, "connect_timeout_s": 0.5}
            target = collector(msgspec.convert(raw, RedisStreamsCollectorConfig), tmp_path)
            await target.start()
            batch = [make_event(i) for i in range(50)]
            assert await target.send(batch[:10]) is SendResult.DELIVERED  # connected, script loaded
            assert server.server.pid is not None
            os.kill(server.server.pid, signal.SIGSTOP)
            try:
                began = time.monotonic()
                assert await target.send(batch) is SendResult.RETRY
                assert 0.4 < time.monotonic() - began < 1.5
                assert not target.health().healthy
            finally:
                os.kill(server.server.pid, signal.SIGCONT)
            assert await target.send(batch) is SendResult.DELIVERED
            await target.close(1.0)
            assert await server.read_ids() == [e.id for e in batch]
        finally:
            await server.close()

    asyncio.run(main())
