"""redis_streams: events appended to Redis Streams, one round trip per batch, deduplicated by event id.

With a dedupe window, each stream's share of a batch is one EVALSHA of SCRIPT (remember the id, append only if it
was new); without, a non-transactional pipeline of XADDs. Connections are made on demand, so Redis being down never
stops the tracker: send() answers RETRY and the base class keeps (or spools) the batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
from collections.abc import Sequence
from typing import Any

import msgspec
from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.collectors.redis_streams.config import RedisStreamsCollectorConfig, seen_prefix, stream_key
from trackpoint.pipeline.event import Event

# KEYS[1]: the stream; KEYS[2..]: one dedupe key per event. ARGV: window (s), maxlen (0: no trim), event type, then
# id and JSON of each event. A script runs atomically, so two trackers appending the same id race on SET NX and
# exactly one of them appends. If an XADD fails (out of memory), its dedupe key is removed again and the error
# returned: a retry then appends that event instead of taking it for a duplicate.
SCRIPT = """
local window, maxlen = ARGV[1], tonumber(ARGV[2])
local appended = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', window) then
    local a = 3 * i - 3
    local reply
    if maxlen > 0 then
      reply = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',
        'id', ARGV[a], 'type', ARGV[a + 1], 'event', ARGV[a + 2])
    else
      reply = redis.pcall('XADD', KEYS[1], '*', 'id', ARGV[a], 'type', ARGV[a + 1], 'event', ARGV[a + 2])
    end
    if type(reply) == 'table' and reply.err then
      redis.call('DEL', KEYS[i])
      return reply
    end
    appended = appended + 1
  end
end
return appended
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
SCRIPT_MAX_EVENTS = 256  # events per script call: Redis runs one call while the client packs the next
SEND_CHUNK_BYTES = 64 << 10
PROBE_INTERVAL_S = 5.0  # an idle collector pings this often, so health() notices an outage without traffic

Command = tuple[Any, ...]


class RedisStreamsCollector(Collector):
    """Appends each batch in one round trip; `duplicates` counts events skipped as already appended."""

    def __init__(self, name: str, config: RedisStreamsCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        self._password = _secret(config.password_env) if config.password_env else None  # fails at start-up
        self._encoder = msgspec.json.Encoder()
        self._keys: dict[str, tuple[str, str]] = {}  # event type -> (stream, dedupe key prefix)
        self._client: Redis | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._last_contact = 0.0
        self._send_error = ""
        self._probe_error = "not connected yet"
        self.duplicates = 0

    async def start(self) -> None:
        config = self.config
        self._client = Redis.from_url(
            config.url,
            password=self._password,
            socket_timeout=config.timeout_s,
            socket_connect_timeout=config.connect_timeout_s,
            retry=Retry(NoBackoff(), 0),  # the base class retries batches, with backoff; the client must not
        )
        self._probe_task = asyncio.get_running_loop().create_task(self._probe(), name=f"probe-{self.name}")
        await super().start()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        client = self._client
        if client is None:
            return SendResult.RETRY
        dedupe = self.config.dedupe_window_s > 0
        commands = self._scripts(batch) if dedupe else self._appends(batch)
        self._last_contact = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.config.timeout_s + self.config.connect_timeout_s):
                try:
                    replies = await _round_trip(client, commands)
                except NoScriptError:  # a restarted or failed-over server has an empty script cache
                    await client.script_load(SCRIPT)
                    replies = await _round_trip(client, commands)
        except (RedisError, OSError, TimeoutError) as exc:
            self._send_error = f"{type(exc).__name__}: {exc}"
            return SendResult.RETRY
        if dedupe:
            self.duplicates += len(batch) - sum(replies)
        self._send_error = self._probe_error = ""
        return SendResult.DELIVERED

    def health(self) -> Health:
        # A failed batch keeps the collector unhealthy until a batch goes through, whatever a ping says.
        detail = self._send_error or self._probe_error
        return Health(healthy=not detail, detail=detail)

    async def close(self, drain_timeout_s: float) -> None:
        await super().close(drain_timeout_s)
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.aclose(), 1.0)

    # --- commands ------------------------------------------------------------------------------------------------

    def _scripts(self, batch: Sequence[Event]) -> list[Command]:
        """EVALSHAs of up to SCRIPT_MAX_EVENTS events of one stream (a script touches one cluster slot), each
        stream's events in batch order."""
        by_stream: dict[str, list[Event]] = {}
        for event in batch:
            by_stream.setdefault((self._keys.get(event.type) or self._keys_of(event.type))[0], []).append(event)
        encode = self._encoder.encode
        window, maxlen = self.config.dedupe_window_s, self.config.maxlen
        commands: list[Command] = []
        for stream, events in by_stream.items():
            seen = seen_prefix(stream)
            for start in range(0, len(events), SCRIPT_MAX_EVENTS):
                keys = [stream]
                arguments: list[Any] = [window, maxlen]
                for event in events[start : start + SCRIPT_MAX_EVENTS]:
                    keys.append(seen + event.id)
                    arguments += (event.id, event.type, encode(event))
                commands.append(("EVALSHA", SCRIPT_SHA, len(keys), *keys, *arguments))
        return commands

    def _appends(self, batch: Sequence[Event]) -> list[Command]:
        encode = self._encoder.encode
        maxlen = self.config.maxlen
        trim = ("MAXLEN", "~", maxlen) if maxlen > 0 else ()
        commands: list[Command] = []
        for event in batch:
            stream = (self._keys.get(event.type) or self._keys_of(event.type))[0]
            commands.append(("XADD", stream, *trim, "*", "id", event.id, "type", event.type, "event", encode(event)))
        return commands

    def _keys_of(self, event_type: str) -> tuple[str, str]:
        stream = stream_key(self.config.stream, event_type)
        keys = self._keys[event_type] = (stream, seen_prefix(stream))
        return keys

    # --- health --------------------------------------------------------------------------------------------------

    async def _probe(self) -> None:
        """Pings when no batch went out for a while, so an idle collector's health follows the server's."""
        loop = asyncio.get_running_loop()
        while True:
            if self._client is not None and loop.time() - self._last_contact >= PROBE_INTERVAL_S:
                self._last_contact = loop.time()
                try:
                    async with asyncio.timeout(self.config.timeout_s + self.config.connect_timeout_s):
                        await self._client.ping()
                    self._probe_error = ""
                except (RedisError, OSError, TimeoutError) as exc:
                    self._probe_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(PROBE_INTERVAL_S)


async def _round_trip(client: Redis, commands: list[Command]) -> list[Any]:
    """Writes every command (in chunks, so Redis starts on the first while later ones are packed), then reads every
    reply. An error reply raises, and the connection, holding unread replies, is closed rather than reused."""
    pool = client.connection_pool
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        chunk: list[bytes] = []
        size = 0
        for command in commands:
            packed = pack_command(command)
            chunk.append(packed)
            size += len(packed)
            if size >= SEND_CHUNK_BYTES:
                await connection.send_packed_command(chunk, check_health=False)
                chunk, size = [], 0
        if chunk:
            await connection.send_packed_command(chunk, check_health=False)
        # No per-reply timeout: the caller bounds the whole round trip.
        return [await connection.read_response(timeout=math.inf) for _ in commands]
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    finally:
        await pool.release(connection)


def _secret(variable: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ValueError(f"environment variable {variable} is not set")
    return value
