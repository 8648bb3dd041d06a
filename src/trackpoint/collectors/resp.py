"""Redis commands packed by hand (RESP) and sent in one round trip: for the collectors' batch writes, where
redis-py's per-argument packing and a copy of a large batch would cost more than the command itself."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis


def eviction(info: dict[str, Any]) -> tuple[int, str] | None:
    """(maxmemory, maxmemory-policy) of a Redis that may evict keys when it is full, from its INFO memory (which
    managed services answer where CONFIG GET is disabled: ElastiCache, Memorystore, Azure Cache); None when it never
    evicts (no maxmemory, or noeviction)."""
    maxmemory, policy = int(info.get("maxmemory", 0)), str(info.get("maxmemory_policy", "noeviction"))
    return (maxmemory, policy) if maxmemory > 0 and policy != "noeviction" else None


def bulk(text: str) -> bytes:
    """One RESP bulk string."""
    return bulk_bytes(text.encode())


def bulk_bytes(data: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(data), data)


async def round_trip(client: Redis, writes: Iterable[list[bytes]], replies: int) -> list[Any]:
    """Writes the packed commands, each item of `writes` as it comes (a generator packs the next while Redis runs
    the last), then reads `replies` replies. An error reply raises, and the connection, holding unread replies, is
    closed rather than reused."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        for chunks in writes:
            await connection.send_packed_command(chunks, check_health=False)
        # No per-reply timeout: the caller bounds the whole round trip.
        return [await connection.read_response(timeout=math.inf) for _ in range(replies)]
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    finally:
        await pool.release(connection)
