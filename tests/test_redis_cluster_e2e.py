"""The redis_streams collector against a real Redis Cluster (three primaries, tests/conformance/redis_cluster.py),
pointed, as an operator would, at the URL of one node: every stream lands on the primary that owns its slot, dedupe
still holds, and a slot moved while the tracker runs (ASK during the move, MOVED after) loses and duplicates nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import msgspec
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from conformance.redis_cluster import PrivateRedisCluster
from conftest import Tracker, make_event
from trackpoint.collectors.base import CollectorContext, SendResult
from trackpoint.collectors.redis_cluster import node_url
from trackpoint.collectors.redis_streams.collector import RedisStreamsCollector
from trackpoint.collectors.redis_streams.config import RedisStreamsCollectorConfig

pytestmark = pytest.mark.e2e  # trackers and a real Redis Cluster


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[PrivateRedisCluster]:
    cluster = PrivateRedisCluster()
    try:
        asyncio.run(cluster.start())
        yield cluster
    finally:
        asyncio.run(cluster.close())


def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def queue_config(url: str, stream: str, **options: Any) -> dict[str, Any]:
    queue = {
        "type": "redis_streams", "url": url, "stream": stream, "maxlen": 0, "dedupe_window_s": 3600,
        "timeout_s": 2.0, "connect_timeout_s": 1.0, "flush_interval_ms": 20,
        "retry_initial_ms": 100, "retry_max_ms": 500, **options,
    }  # fmt: skip
    types = {"impression": {"preset": "impression", "collectors": ["log", "queue"]},
             "click": {"preset": "click", "collectors": ["log", "queue"]}}  # fmt: skip
    return {"collectors": {"queue": queue}, "event_types": types}


def stream_ids(port: int, stream: str) -> list[str]:
    """The ids in `stream` as the node on `port` holds it (no redirect followed: what is really there)."""

    async def read() -> list[str]:
        client = Redis(port=port, decode_responses=True)
        try:
            entries = cast(list[tuple[str, dict[str, str]]], await client.xrange(stream))
            return [fields["id"] for _, fields in entries]
        finally:
            await client.aclose()

    return asyncio.run(read())


def send(tracker: Tracker, prefix: str, count: int) -> None:
    for i in range(count):
        assert tracker.get(f"/i?imp={prefix}-i{i}&cid=c1")[0] == 200
        assert tracker.get(f"/c?imp={prefix}-c{i}&url=https://example.com/")[0] == 302


def test_the_fixture_is_a_cluster_of_three_primaries(redis_cluster: PrivateRedisCluster) -> None:
    owners = {asyncio.run(redis_cluster.owner(key)) for key in ("a", "b", "c", "{tp}:x", "trackpoint:click")}
    assert owners == set(redis_cluster.ports)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("template", ["cl{n}:{type}", "{cl{n}}:{type}"], ids=["default-style", "hash-tagged"])
def test_streams_land_on_their_slot_owners_from_the_url_of_any_node(
    tracker_factory: Any, redis_cluster: PrivateRedisCluster, template: str
) -> None:
    n = time.monotonic_ns()
    stream = template.replace("{n}", str(n))
    impressions, clicks = stream.replace("{type}", "impression"), stream.replace("{type}", "click")
    owners = {asyncio.run(redis_cluster.owner(key)) for key in (impressions, clicks)}
    # The URL of a node that owns none of the streams: every append must be redirected to be delivered.
    seed = next(port for port in redis_cluster.ports if port not in owners)
    tracker: Tracker = tracker_factory(queue_config(f"redis://127.0.0.1:{seed}/0", stream))
    send(tracker, "a", 30)
    logged = {event.id: event.type for event in tracker.wait_events(60)}

    def delivered() -> bool:
        found = [
            *stream_ids(asyncio.run(redis_cluster.owner(impressions)), impressions),
            *stream_ids(asyncio.run(redis_cluster.owner(clicks)), clicks),
        ]
        return sorted(found) == sorted(logged)

    try:
        eventually(delivered, 20, "every event in the stream of its type, on the node owning its slot")
    finally:
        print(tracker.output()[-3000:])
    label = 'collector="queue"'
    assert tracker.metric("trackpoint_collector_dropped_total", label) == 0
    assert tracker.metric("trackpoint_collector_spooled_events", label) == 0
    eventually(lambda: b'"collector_problems":{}' in tracker.admin("GET", "/readyz")[2], 10, "a healthy collector")
    assert "MovedError" not in tracker.output()


def test_the_key_slots_used_for_routing_are_the_clusters(redis_cluster: PrivateRedisCluster) -> None:
    """CRC16 of the key, or of the text in its first non-empty `{...}`: what CLUSTER KEYSLOT answers."""
    keys = [
        "", "a", "trackpoint:impression", "{tp}:click", "{tp}:click:seen:x", "{trackpoint:click}:seen:1",
        "{}", "{}x", "x{}y{z}", "{a}{b}", "}{a}", "{a", "a}", "{{a}}", "é{ü}", "123456789", "x" * 300,
    ]  # fmt: skip
    for key in keys:
        assert key_slot(key.encode()) == asyncio.run(redis_cluster.keyslot(key)), key


def cluster_collector(url: str, stream: str, tmp_path: Any) -> RedisStreamsCollector:
    options = msgspec.convert(
        {"type": "redis_streams", "url": url, "stream": stream, "maxlen": 0, "dedupe_window_s": 600,
         "timeout_s": 2.0, "connect_timeout_s": 1.0},
        RedisStreamsCollectorConfig,
    )  # fmt: skip
    return RedisStreamsCollector("queue", options, CollectorContext(data_dir=str(tmp_path)))


@pytest.mark.timeout(60)
def test_a_slot_moved_while_sending_asks_then_moves_and_loses_and_duplicates_nothing(
    redis_cluster: PrivateRedisCluster, tmp_path: Any
) -> None:
    stream = f"mv{time.monotonic_ns()}:{{type}}"
    key = stream.replace("{type}", "click")
    slot = key_slot(key.encode())

    async def main() -> None:
        source = await redis_cluster.owner(key)
        seed, target = [port for port in redis_cluster.ports if port != source]
        sender = cluster_collector(f"redis://127.0.0.1:{seed}/0", stream, tmp_path)
        await sender.start()
        batches = [[make_event(i, "click") for i in range(n, n + 50)] for n in range(0, 200, 50)]
        try:
            assert await sender.send(batches[0]) is SendResult.DELIVERED  # to the slot's owner, from the map
            router = sender._router
            assert router is not None and (router.moved, router.asked) == (0, 0)
            await redis_cluster.begin_move(slot, source, target)  # the stream and its dedupe keys moved
            assert await sender.send(batches[1]) is SendResult.DELIVERED  # ASK from the source, sent after ASKING
            assert (router.moved, router.asked) == (0, 1)
            await redis_cluster.finish_move(slot, target)
            assert await sender.send(batches[2]) is SendResult.DELIVERED  # MOVED from the source: its map is stale
            assert (router.moved, router.asked) == (1, 1)
            assert await sender.send(batches[0] + batches[3]) is SendResult.DELIVERED  # a replay, after the move
            assert sender.duplicates == 50  # the dedupe keys moved with their stream
            assert sender.health().healthy
        finally:
            await sender.close(1.0)
            if await redis_cluster.owner(key) == target:  # back where the other tests expect it
                await redis_cluster.move_slot(slot, target, source)

    asyncio.run(main())
    source = asyncio.run(redis_cluster.owner(key))
    expected = [make_event(i, "click").id for i in range(200)]
    assert stream_ids(source, key) == expected
    others = [port for port in redis_cluster.ports if port != source]
    assert [asyncio.run(redis_cluster.keys_in_slot(port, slot)) for port in others] == [0, 0]  # nothing left behind


@pytest.mark.timeout(60)
def test_an_evicting_policy_on_any_primary_is_reported_not_only_on_the_seed(
    redis_cluster: PrivateRedisCluster, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every primary holds streams and dedupe buckets of its slots: each one's maxmemory-policy is read."""
    monkeypatch.setattr("trackpoint.collectors.redis_streams.collector.PROBE_INTERVAL_S", 0.05)
    monkeypatch.setattr("trackpoint.collectors.redis_streams.collector.EVICTION_CHECK_S", 0.05)
    seed, other = redis_cluster.ports[0], redis_cluster.ports[2]

    async def main() -> None:
        target = cluster_collector(f"redis://127.0.0.1:{seed}/0", "ev:{type}", tmp_path)
        client = redis_cluster.client(other)
        await target.start()
        try:
            await client.config_set("maxmemory", "64mb")
            await client.config_set("maxmemory-policy", "volatile-lru")
            deadline = time.monotonic() + 5
            while f":{other} may evict keys" not in target.health().detail:
                assert time.monotonic() < deadline, target.health().detail
                await asyncio.sleep(0.05)
            assert not target.health().healthy
        finally:
            await client.config_set("maxmemory", "0")
            await client.aclose()
            await target.close(1.0)

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_an_idle_collector_notices_any_primary_that_stops_answering(
    redis_cluster: PrivateRedisCluster, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe of an idle collector pinged the node of its URL only: a primary that holds other streams could hang
    with the collector healthy until its next batch timed out. It pings every primary now."""
    monkeypatch.setattr("trackpoint.collectors.redis_streams.collector.PROBE_INTERVAL_S", 0.05)
    seed, other = redis_cluster.ports[0], redis_cluster.ports[1]

    async def main() -> None:
        url = f"redis://127.0.0.1:{seed}/0"
        options = queue_config(url, "idle:{type}", timeout_s=0.3, connect_timeout_s=0.2)["collectors"]["queue"]
        config = msgspec.convert(options, RedisStreamsCollectorConfig)
        target = RedisStreamsCollector("queue", config, CollectorContext(data_dir=str(tmp_path)))
        client = redis_cluster.client(other)
        await target.start()
        try:
            deadline = time.monotonic() + 5
            while not target.health().healthy:
                assert time.monotonic() < deadline, target.health().detail
                await asyncio.sleep(0.05)
            await client.execute_command("CLIENT", "PAUSE", "3000", "ALL")  # type: ignore[no-untyped-call]
            while f"127.0.0.1:{other}: TimeoutError" not in target.health().detail:
                assert time.monotonic() < deadline + 3, target.health().detail
                await asyncio.sleep(0.05)
            await client.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
            while not target.health().healthy:
                assert time.monotonic() < deadline + 8, target.health().detail
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()
            await target.close(1.0)

    asyncio.run(main())


@pytest.mark.timeout(90)
def test_after_a_failover_the_promoted_replica_gets_the_stream_without_loss_or_duplicates(tmp_path: Any) -> None:
    stream = "fo:{type}"
    key = "fo:click"

    async def main() -> None:
        cluster = PrivateRedisCluster()  # a cluster of its own: the failover changes which node is a primary
        try:
            await cluster.start()
            primary = await cluster.owner(key)
            replica = await cluster.add_replica(primary)
            seed = next(port for port in cluster.ports if port != primary)
            sender = cluster_collector(f"redis://127.0.0.1:{seed}/0", stream, tmp_path)
            await sender.start()
            batches = [[make_event(i, "click") for i in range(n, n + 50)] for n in range(0, 100, 50)]
            try:
                assert await sender.send(batches[0]) is SendResult.DELIVERED
                while not await cluster.synced(primary, replica):
                    await asyncio.sleep(0.05)
                await cluster.failover(replica)
                assert await cluster.owner(key) == replica
                assert await sender.send(batches[1]) is SendResult.DELIVERED  # MOVED from the old primary
                assert await sender.send(batches[0]) is SendResult.DELIVERED  # a replay: the dedupe keys replicated
                assert sender.duplicates == 50
                router = sender._router
                assert router is not None and router.moved >= 1
            finally:
                await sender.close(1.0)
            client = Redis(port=replica, decode_responses=True)
            try:
                entries = cast(list[tuple[str, dict[str, str]]], await client.xrange(key))
            finally:
                await client.aclose()
            assert [fields["id"] for _, fields in entries] == [e.id for batch in batches for e in batch]
        finally:
            await cluster.close()

    asyncio.run(main())


def test_other_nodes_are_reached_with_the_seed_urls_scheme_user_and_options() -> None:
    assert node_url("redis://127.0.0.1:7000/0", "10.0.0.2", 7001) == "redis://10.0.0.2:7001/0"
    assert node_url("rediss://user:pw@a.example:7000/0?ssl_cert_reqs=none", "b.example", 7002) == (
        "rediss://user:pw@b.example:7002/0?ssl_cert_reqs=none"
    )
    assert node_url("unix:///run/redis.sock?db=0", "10.0.0.3", 7003) == "redis://10.0.0.3:7003/0"
    assert node_url("redis://[::1]:7000", "::2", 7004) == "redis://[::2]:7004/0"
