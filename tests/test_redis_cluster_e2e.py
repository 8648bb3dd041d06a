"""A real Redis Cluster (three primaries, tests/conformance/redis_cluster.py) and the key slots computed for it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.crc import key_slot

from conformance.redis_cluster import PrivateRedisCluster

pytestmark = pytest.mark.e2e  # trackers and a real Redis Cluster


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[PrivateRedisCluster]:
    cluster = PrivateRedisCluster()
    try:
        asyncio.run(cluster.start())
        yield cluster
    finally:
        asyncio.run(cluster.close())


def test_the_fixture_is_a_cluster_of_three_primaries(redis_cluster: PrivateRedisCluster) -> None:
    owners = {asyncio.run(redis_cluster.owner(key)) for key in ("a", "b", "c", "{tp}:x", "trackpoint:click")}
    assert owners == set(redis_cluster.ports)


def test_the_key_slots_used_for_routing_are_the_clusters(redis_cluster: PrivateRedisCluster) -> None:
    """CRC16 of the key, or of the text in its first non-empty `{...}`: what CLUSTER KEYSLOT answers."""
    keys = [
        "", "a", "trackpoint:impression", "{tp}:click", "{tp}:click:seen:x", "{trackpoint:click}:seen:1",
        "{}", "{}x", "x{}y{z}", "{a}{b}", "}{a}", "{a", "a}", "{{a}}", "é{ü}", "123456789", "x" * 300,
    ]  # fmt: skip
    for key in keys:
        assert key_slot(key.encode()) == asyncio.run(redis_cluster.keyslot(key)), key
