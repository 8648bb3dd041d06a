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
from trackpoint.collectors.redis_streams.collector import SCRIPT, RedisStreamsCollector
from trackpoint.collectors.redis_streams.config import RedisStreamsCollectorConfig, dedupe_prefix, seen_prefix
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
    assert defaults.dedupe_window_s == 3_600
    assert config(stream="{tp}:{type}").stream == "{tp}:{type}"
    for bad in ({"stream": "a{b:{type}"}, {"maxlen": -1}, {"dedupe_window_s": -1}, {"password": "x"}):
        with pytest.raises(msgspec.ValidationError):
            config(**bad)


def test_dedupe_keys_share_the_cluster_slot_of_their_stream() -> None:
    for stream in ("trackpoint:impression", "{tp}:impression", "a:{tag}:b"):
        for key in (seen_prefix(stream) + "0123456789abcdef0123456789abcdef", dedupe_prefix(stream) + "43200:1:7"):
            assert key_slot(key.encode()) == key_slot(stream.encode()), stream
    assert seen_prefix("trackpoint:impression") == "{trackpoint:impression}:seen:"
    assert dedupe_prefix("{tp}:impression") == "{tp}:impression:dedupe:"


def test_every_key_the_script_writes_is_in_the_slot_of_its_stream(tmp_path: Path) -> None:
    async def main() -> None:
        async with shared_redis() as (client, prefix):
            for template in (prefix + ":{type}", "{" + prefix + "}:{type}"):
                target = collector(config(url=REDIS_URL, stream=template), tmp_path)
                await target.start()
                assert await target.send([make_event(i, "click") for i in range(3000)]) is SendResult.DELIVERED
                await target.close(1.0)
                stream = template.replace("{type}", "click")
                keys = [key async for key in client.scan_iter(match=f"*{prefix}*", count=1000)]
                assert len(keys) > 10  # the stream and its dedupe state, split into shards
                assert {key_slot(key.encode()) for key in keys} == {key_slot(stream.encode())}
                await client.delete(*keys)

    asyncio.run(main())


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
            # Each dedupe key expires on its own: a bucket of half the window lives one window past its end.
            dedupe = [key async for key in client.scan_iter(match=f"{{{prefix}:win}}:dedupe:*")]
            assert dedupe
            for key in dedupe:
                assert 590 <= await client.ttl(key) <= 900 or key.endswith(":state"), key
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
            assert [key async for key in client.scan_iter(match=f"*{prefix}*")] == [f"{prefix}:click"]

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


# --- the dedupe state ---------------------------------------------------------------------------------------


def test_a_remembered_id_costs_a_few_dozen_bytes_of_redis_memory(tmp_path: Path) -> None:
    """One key per id cost 146 bytes of used_memory each here (165 at 200,000 ids; 120 by MEMORY USAGE); the time
    buckets, split into shards small enough to stay listpacks, cost under a quarter of that. Measured on a private
    server, nothing else in it, the collector disconnected (its connection's query buffer is as large as a batch)."""

    async def main() -> None:
        server = await make_target()
        client = Redis.from_url(server.url)
        try:
            await client.script_load(SCRIPT)
            before = int((await client.info("memory"))["used_memory"])
            target = collector(config(url=server.url, stream="s", maxlen=0), tmp_path)
            await target.start()
            events = [make_event(i) for i in range(40_000)]
            for start in range(0, len(events), 1024):
                assert await target.send(events[start : start + 1024]) is SendResult.DELIVERED
            await target.close(1.0)
            await client.delete("s")  # the dedupe state alone is left
            per_id = (int((await client.info("memory"))["used_memory"]) - before) / len(events)
            assert per_id < 36, per_id

            keys = [key async for key in client.scan_iter(count=1000)]
            encodings = [await client.object("encoding", key) for key in keys]
            assert encodings.count(b"hashtable") <= len(keys) // 100, encodings.count(b"hashtable")
            target = collector(config(url=server.url, stream="s", maxlen=0), tmp_path)
            await target.start()
            for start in range(0, len(events), 1024):  # every id is still known after all those splits
                assert await target.send(events[start : start + 1024]) is SendResult.DELIVERED
            assert target.duplicates == len(events)
            await target.close(1.0)
            assert await client.xlen("s") == 0
        finally:
            await client.aclose()
            await server.close()

    asyncio.run(main())


def test_a_repeat_is_skipped_across_bucket_boundaries_and_forgotten_after_the_window(tmp_path: Path) -> None:
    """Ids are remembered in time buckets of half the window (Redis's clock), each looked up for a whole window
    after its end: an id is skipped for at least the window and at most a bucket longer. Window 2 s, buckets 1 s."""

    async def main() -> None:
        async with shared_redis() as (client, prefix):

            async def bucket() -> int:
                return int((await client.time())[0])  # bucket_s = 1

            async def next_bucket() -> int:
                start = await bucket()

                async def changed() -> bool:
                    return await bucket() != start

                await until(changed, 5.0, "the next second of the Redis clock")
                return await bucket()

            target = collector(config(url=REDIS_URL, stream=prefix, dedupe_window_s=2), tmp_path)
            await target.start()
            first = [make_event(i) for i in range(100)]
            second = [make_event(i) for i in range(100, 150)]
            b = await next_bucket()
            assert await target.send(first) is SendResult.DELIVERED
            assert await bucket() == b, "the test machine stalled for a second"
            assert await next_bucket() == b + 1
            assert await target.send(first + second) is SendResult.DELIVERED  # first: in the previous bucket
            assert await next_bucket() == b + 2
            assert await target.send(second + first) is SendResult.DELIVERED  # first: two buckets back
            assert target.duplicates == 100 + 150
            assert await next_bucket() == b + 3  # bucket b expired: window + bucket after its start
            assert await target.send(first + second) is SendResult.DELIVERED
            await target.close(1.0)
            assert await stream_ids(client, prefix) == [e.id for e in first + second + first]
            assert target.duplicates == 100 + 150 + 50

    asyncio.run(main())


def test_a_new_id_is_never_taken_for_a_repeat(tmp_path: Path) -> None:
    """Ids that differ in one hex digit, in case, in length, or that are not hex at all, are all different events;
    batches with such ids take the script's own encoding of ids rather than the client's, and must agree with it."""
    canonical = [make_event(i) for i in range(5000)]
    base = canonical[0].id
    odd_ids = [
        base.upper(),  # the same 16 bytes if decoded as hex: a different id all the same
        base[:-1] + ("0" if base[-1] != "0" else "1"),
        base[:16],  # 16 characters: the length of a packed id
        base[:15],
        base[:17],
        base + "0",
        "not-hex-but-an-id",
        "é" * 8,  # 16 bytes of UTF-8
        "x",
    ]
    odd = [msgspec.structs.replace(make_event(10_000 + i), id=odd_id) for i, odd_id in enumerate(odd_ids)]

    async def main() -> None:
        async with shared_redis() as (client, prefix):
            target = collector(config(url=REDIS_URL, stream=prefix), tmp_path)
            await target.start()
            assert await target.send(canonical[:2500]) is SendResult.DELIVERED  # ids packed by the client
            assert await target.send(odd + canonical) is SendResult.DELIVERED  # by the script (odd ids in it)
            assert await target.send(canonical + odd) is SendResult.DELIVERED  # all repeats
            await target.close(1.0)
            assert await stream_ids(client, prefix) == [e.id for e in canonical[:2500] + odd + canonical[2500:]]
            assert target.duplicates == 2500 + len(canonical) + len(odd)

    asyncio.run(main())


def test_out_of_memory_appends_nothing_and_remembers_nothing(tmp_path: Path) -> None:
    """At maxmemory the script's first write fails: the batch is retried, and once Redis has room every event is
    appended, none taken for a repeat of itself. The same with dedupe off, where the XADD is the first write."""

    async def main() -> None:
        server = await make_target()
        client = Redis.from_url(server.url)
        try:
            for window in (600, 0):
                stream = f"s{window}"
                target = collector(config(url=server.url, stream=stream, dedupe_window_s=window), tmp_path)
                await target.start()
                events = [make_event(i) for i in range(300)]
                assert await target.send(events[:100]) is SendResult.DELIVERED
                await client.config_set("maxmemory", "1")
                assert await target.send(events) is SendResult.RETRY
                assert "OutOfMemoryError" in target.health().detail
                assert await client.xlen(stream) == 100
                await client.config_set("maxmemory", "0")
                assert await target.send(events) is SendResult.DELIVERED
                await target.close(1.0)
                stored = cast(list[tuple[bytes, dict[bytes, bytes]]], await client.xrange(stream))
                ids = [fields[b"id"].decode() for _, fields in stored]
                assert ids == [e.id for e in (events if window else events[:100] + events)]
        finally:
            await client.aclose()
            await server.close()

    asyncio.run(main())


def test_ids_remembered_by_the_previous_version_are_still_skipped(tmp_path: Path) -> None:
    """Earlier versions kept one key per id, `<stream's tag>:seen:<id>` with the window as its expiry. A tracker
    upgraded within the window must not append those events again: the script reads those keys for two windows
    after it first runs on a stream (the second one for trackers still on the old version during the rollout)."""

    async def main() -> None:
        async with shared_redis() as (client, prefix):
            stream = f"{prefix}:impression"
            old = [make_event(i) for i in range(200)]
            for event in old:  # what the previous script did for each appended event
                await client.set(seen_prefix(stream) + event.id, "1", nx=True, ex=600)
                await client.xadd(stream, {"id": event.id, "type": event.type, "event": "{}"})
            new = [make_event(i) for i in range(200, 300)]
            target = collector(config(url=REDIS_URL, stream=prefix + ":{type}", dedupe_window_s=600), tmp_path)
            await target.start()
            assert await target.send(old[100:] + new + old[:100]) is SendResult.DELIVERED
            assert await target.send(new) is SendResult.DELIVERED
            await target.close(1.0)
            assert await stream_ids(client, stream) == [e.id for e in old + new]
            assert target.duplicates == 200 + 100
            state = await client.hgetall(dedupe_prefix(stream) + "state")
            now = int((await client.time())[0])
            assert now + 1190 <= int(state["legacy_until"]) <= now + 1200

    asyncio.run(main())


def test_a_changed_window_still_skips_what_the_old_one_remembered(tmp_path: Path) -> None:
    """A new window means new bucket lengths: trackers with the old and the new window (a rolling reload) each
    read the other's buckets too, until the old ones have expired."""

    async def main() -> None:
        async with shared_redis() as (client, prefix):
            short = collector(config(url=REDIS_URL, stream=prefix, dedupe_window_s=600), tmp_path, "short")
            long = collector(config(url=REDIS_URL, stream=prefix, dedupe_window_s=7200), tmp_path, "long")
            await short.start()
            await long.start()
            events = [make_event(i) for i in range(400)]
            assert await short.send(events[:100]) is SendResult.DELIVERED
            assert await long.send(events[:200]) is SendResult.DELIVERED
            assert await short.send(events[:300]) is SendResult.DELIVERED
            assert await long.send(events) is SendResult.DELIVERED
            assert await short.send(events) is SendResult.DELIVERED
            await short.close(1.0)
            await long.close(1.0)
            assert await stream_ids(client, prefix) == [e.id for e in events]
            assert short.duplicates + long.duplicates == 100 + 200 + 300 + 400

    asyncio.run(main())


def test_worker_0_reports_how_many_ids_the_dedupe_state_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read now and then by a periodic query (never on the delivery path), by one worker for all: a level of the
    shared Redis, which /metrics sums over the workers."""
    monkeypatch.setattr("trackpoint.collectors.redis_streams.collector.PROBE_INTERVAL_S", 0.05)
    monkeypatch.setattr("trackpoint.collectors.redis_streams.collector.DEDUPE_COUNT_INTERVAL_S", 0.05)

    async def main() -> None:
        async with shared_redis() as (_, prefix):
            options = config(url=REDIS_URL, stream=prefix + ":{type}")
            first = RedisStreamsCollector("queue", options, CollectorContext(data_dir=str(tmp_path), worker=0))
            second = RedisStreamsCollector("queue", options, CollectorContext(data_dir=str(tmp_path), worker=1))
            await first.start()
            await second.start()
            assert await first.send([make_event(i, "win") for i in range(100)]) is SendResult.DELIVERED
            assert await second.send([make_event(i, "click") for i in range(200)]) is SendResult.DELIVERED
            assert await first.send([make_event(i, "click") for i in range(250)]) is SendResult.DELIVERED

            async def counted() -> bool:
                return first.snapshot().levels == {"dedupe_ids": 100 + 250}

            await until(counted, 5.0, "the dedupe count")
            assert second.snapshot().levels == {}
            await first.close(1.0)
            await second.close(1.0)

    asyncio.run(main())


@pytest.mark.parametrize("dedupe", [True, False])
def test_a_redis_that_may_evict_makes_the_collector_unhealthy_until_it_is_set_to_noeviction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dedupe: bool
) -> None:
    """A Redis at maxmemory with an evicting policy (ElastiCache's default parameter group says volatile-lru) drops
    the dedupe buckets first, the only keys with an expiry, and their repeats are appended again; allkeys-* drops
    streams too, with events already counted as delivered. Nothing said so. Read from INFO memory at start and every
    EVICTION_CHECK_S: a warning in health() and the log, batches still go. Without dedupe, volatile-* is safe."""
    monkeypatch.setattr("trackpoint.collectors.redis_streams.collector.PROBE_INTERVAL_S", 0.05)
    monkeypatch.setattr("trackpoint.collectors.redis_streams.collector.EVICTION_CHECK_S", 0.05)

    def healthy(target: RedisStreamsCollector, expected: bool, saying: str = "") -> Callable[[], Awaitable[bool]]:
        return lambda: asyncio.sleep(0, target.health().healthy is expected and saying in target.health().detail)

    async def main() -> None:
        server = await make_target()
        client = Redis.from_url(server.url, decode_responses=True)
        try:
            await client.config_set("maxmemory", "64mb")
            await client.config_set("maxmemory-policy", "volatile-lru")
            target = collector(config(url=server.url, stream="s", dedupe_window_s=3600 if dedupe else 0), tmp_path)
            await target.start()
            await until(healthy(target, not dedupe, "maxmemory" if dedupe else ""), 5.0, "the check at start")
            if dedupe:
                detail = target.health().detail
                assert "maxmemory-policy volatile-lru" in detail and "an evicted dedupe bucket" in detail, detail
                assert "set maxmemory-policy noeviction" in detail and f":{server.server.port} " in detail
            assert await target.send([make_event(1)]) is SendResult.DELIVERED  # a warning, not an outage
            await client.config_set("maxmemory-policy", "allkeys-lru")  # streams can go: unsafe even without dedupe
            await until(healthy(target, False, "allkeys-lru"), 5.0, "the allkeys policy")
            assert "an evicted stream loses the events appended to it" in target.health().detail
            await client.config_set("maxmemory", "0")  # no limit: nothing is evicted
            await until(healthy(target, True), 5.0, "no limit to be safe")
            await client.config_set("maxmemory", "64mb")
            await client.config_set("maxmemory-policy", "noeviction")
            await asyncio.sleep(0.3)
            assert target.health().healthy
            await target.close(1.0)
        finally:
            await client.aclose()
            await server.close()

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
