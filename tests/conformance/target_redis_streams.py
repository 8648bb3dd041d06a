"""The redis_streams conformance target: a private redis-server on a free port, stopped and restarted in place.

The server keeps no snapshots while it runs but saves one when SIGTERM stops it (a save point that never fires
in a test's lifetime makes Redis save on shutdown), so entries and dedupe keys survive the restart, as they would
on a persistent production Redis.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, cast

from redis.asyncio import Redis

from .servers import PrivateServer, ServerTarget, binary


class RedisStreamsTarget(ServerTarget):
    name = "redis_streams"
    supports_restart = True
    dedupes_replays = True  # the collector's script appends an id at most once within dedupe_window_s

    def __init__(self) -> None:
        self.server = PrivateServer("redis", _command, self._pong)
        self.url = f"redis://127.0.0.1:{self.server.port}/0"
        self.stream = f"tpconf:{uuid.uuid4().hex[:12]}:events"

    def collector_config(self) -> dict[str, Any]:
        # One stream for every type: its entry order is the delivery order read_ids reports.
        return {
            "type": "redis_streams",
            "url": self.url,
            "stream": self.stream,
            "maxlen": 0,
            "dedupe_window_s": 3600,
            "timeout_s": 2.0,
            "connect_timeout_s": 1.0,
            "flush_interval_ms": 20,
        }

    async def read_ids(self) -> list[str]:
        client = Redis.from_url(self.url, decode_responses=True)
        ids: list[str] = []
        start = "-"
        try:
            while True:
                page = await client.xrange(self.stream, min=start, count=10_000)
                entries = cast(list[tuple[str, dict[str, str]]], page)  # decode_responses: str, not bytes
                if not entries:
                    return ids
                ids.extend(fields["id"] for _, fields in entries)
                start = "(" + entries[-1][0]
        finally:
            await client.aclose()

    async def _pong(self) -> bool:
        client = Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            return bool(await client.ping())
        finally:
            await client.aclose()


def _command(port: int, workdir: Path) -> list[str]:
    return [
        *(binary("redis-server", "redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)),
        *("--save", "3600 1", "--appendonly", "no", "--daemonize", "no", "--logfile", ""),
    ]


async def make_target() -> RedisStreamsTarget:
    target = RedisStreamsTarget()
    await target.start()
    return target
