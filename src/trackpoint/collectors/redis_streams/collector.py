"""redis_streams: events appended to Redis Streams, one round trip per batch, deduplicated by event id.

Each stream's share of a batch is one EVALSHA of SCRIPT with the events as JSON lines; with a dedupe window the
script remembers each id and appends only the new ones. Connections are made on demand, so Redis being down never
stops the tracker: send() answers RETRY and the base class keeps (or spools) the batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from collections.abc import Sequence

import msgspec
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.collectors.redis_cluster import Router
from trackpoint.collectors.redis_streams.config import RedisStreamsCollectorConfig, seen_prefix, stream_key
from trackpoint.collectors.resp import bulk
from trackpoint.event import Event
from trackpoint.security.secrets import env_secret

# KEYS[1]: the stream. ARGV: dedupe window (s; "0": off), maxlen (0: no trim), the dedupe key prefix, and the
# events as JSON lines (the same bytes the log collector writes: one encode per batch on the client, no per-event
# arguments to pack). Each line starts with {"id":"...","type":"..."}: msgspec writes fields in declaration order,
# and ids and type names are plain ASCII. A script runs atomically, so two trackers appending the same id race on
# SET NX and exactly one of them appends. The dedupe keys are not in KEYS, but they share the stream's hash tag, so
# on Redis Cluster they live in the stream's slot. If an XADD fails (out of memory), its dedupe key is removed again
# and the error returned: a retry then appends that event instead of taking it for a duplicate.
SCRIPT = """
local window, maxlen, seen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local dedupe = window ~= '0'
local appended = 0
for line in string.gmatch(ARGV[4], '[^\\n]+') do
  local id, event_type = string.match(line, '^{"id":"([^"]+)","type":"([^"]+)"')
  if id == nil then
    return redis.error_reply('ERR trackpoint: not an event: ' .. string.sub(line, 1, 80))
  end
  if not dedupe or redis.call('SET', seen .. id, '1', 'NX', 'EX', window) then
    local reply
    if maxlen > 0 then
      reply = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'id', id, 'type', event_type, 'event', line)
    else
      reply = redis.pcall('XADD', KEYS[1], '*', 'id', id, 'type', event_type, 'event', line)
    end
    if type(reply) == 'table' and reply.err then
      if dedupe then
        redis.call('DEL', seen .. id)
      end
      return reply
    end
    appended = appended + 1
  end
end
return appended
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
PROBE_INTERVAL_S = 5.0  # an idle collector pings this often, so health() notices an outage without traffic


class RedisStreamsCollector(Collector):
    """Appends each batch in one round trip; `duplicates` counts events skipped as already appended."""

    def __init__(self, name: str, config: RedisStreamsCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        # A missing password fails here, at start-up.
        self._password = env_secret(config.password_env, "password_env") if config.password_env else None
        self._encoder = msgspec.json.Encoder()
        self._keys: dict[str, tuple[str, str]] = {}  # event type -> (stream, dedupe key prefix)
        # A template without {type} names one stream for every event: no grouping needed.
        self._single_stream = config.stream if "{type}" not in config.stream else None
        # EVALSHA sha 1 <stream> <window> <maxlen> <seen prefix> <events>: all but the last three are fixed.
        self._command_head = b"*8\r\n" + b"".join(bulk(part) for part in ("EVALSHA", SCRIPT_SHA, "1"))
        self._window_maxlen = bulk(str(config.dedupe_window_s)) + bulk(str(config.maxlen))
        self._router: Router | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._last_contact = 0.0
        self._send_error = ""
        self._probe_error = "not connected yet"
        self.duplicates = 0

    async def start(self) -> None:
        config = self.config
        options = {
            "password": self._password,
            "socket_timeout": config.timeout_s,
            "socket_connect_timeout": config.connect_timeout_s,
            "retry": Retry(NoBackoff(), 0),  # the base class retries batches, with backoff; the client must not
        }
        # A plain server or a Redis Cluster (any node's URL): each stream's command goes to the node of its slot.
        self._router = Router(config.url, options, SCRIPT)
        self._probe_task = asyncio.get_running_loop().create_task(self._probe(), name=f"probe-{self.name}")
        await super().start()

    async def send(self, batch: Sequence[Event]) -> SendResult:
        router = self._router
        if router is None:
            return SendResult.RETRY
        commands = self._commands(batch)
        self._last_contact = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.config.timeout_s + self.config.connect_timeout_s):
                # NOSCRIPT (a restarted or failed-over server's empty script cache) loads the script and resends.
                replies = await router.send(commands)
        except (RedisError, OSError, TimeoutError) as exc:
            self._send_error = f"{type(exc).__name__}: {exc}"
            return SendResult.RETRY
        self.duplicates += len(batch) - sum(replies)
        self._send_error = self._probe_error = ""
        return SendResult.DELIVERED

    def outcomes(self) -> dict[str, int]:
        return {"duplicates": self.duplicates}

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
        if self._router is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._router.aclose(), 1.0)

    # --- commands ------------------------------------------------------------------------------------------------

    def _commands(self, batch: Sequence[Event]) -> list[tuple[str, tuple[bytes, bytes, bytes]]]:
        """One EVALSHA per stream (a script touches one cluster slot), each with that stream's events in order,
        packed as RESP by hand: the events are one argument, written as they were encoded (a copy of a few hundred
        kilobytes per batch would cost the worker page faults, not just the copy). Each comes with its stream, the
        key that routes it to its node on a Redis Cluster."""
        if self._single_stream is not None:
            groups: list[tuple[str, Sequence[Event]]] = [(self._single_stream, batch)]
        else:  # one stream per type; a stable sort keeps each type's order
            groups = [
                ((self._keys.get(event_type) or self._keys_of(event_type))[0], list(events))
                for event_type, events in itertools.groupby(sorted(batch, key=_type_of), key=_type_of)
            ]
        encode_lines = self._encoder.encode_lines
        commands: list[tuple[str, tuple[bytes, bytes, bytes]]] = []
        for stream, events in groups:
            lines = encode_lines(events)
            head = b"%b%b%b%b$%d\r\n" % (
                self._command_head,
                bulk(stream),
                self._window_maxlen,
                bulk(seen_prefix(stream)),
                len(lines),
            )
            commands.append((stream, (head, lines, b"\r\n")))
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
            if self._router is not None and loop.time() - self._last_contact >= PROBE_INTERVAL_S:
                self._last_contact = loop.time()
                try:
                    async with asyncio.timeout(self.config.timeout_s + self.config.connect_timeout_s):
                        await self._router.seed.ping()
                    self._probe_error = ""
                except (RedisError, OSError, TimeoutError) as exc:
                    self._probe_error = f"{type(exc).__name__}: {exc}"
            if not await self.idle(PROBE_INTERVAL_S):  # closing, even if close()'s cancellation was lost
                return


def _type_of(event: Event) -> str:
    return event.type
