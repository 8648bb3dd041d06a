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
import logging
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from trackpoint.collectors.base import Collector, CollectorContext, Health, SendResult
from trackpoint.collectors.redis_cluster import Router
from trackpoint.collectors.redis_streams.config import (
    RedisStreamsCollectorConfig,
    dedupe_prefix,
    seen_prefix,
    stream_key,
)
from trackpoint.collectors.resp import bulk, bulk_bytes, eviction
from trackpoint.event import Event
from trackpoint.security.secrets import env_secret

# How the dedupe state is laid out (its cost is measured by bench/redis_dedupe.py, its rules tested in
# tests/test_collector_redis_streams.py):
#
# * Time buckets. An id is remembered in the bucket of the moment it was appended (Redis's clock, so every tracker
#   agrees): buckets of window / BUCKETS_PER_WINDOW seconds, each looked up for a whole window after its end and
#   then expired as a whole. An id is thus skipped for at least the window and at most one bucket longer, and the
#   memory held is that of (window + at most one bucket) of appends.
# * Shards small enough to stay listpacks. A bucket is a set of hashes, `<prefix><bucket_s>:<bucket>:<shard>`,
#   field = the id, value empty. A hash of up to hash-max-listpack-entries (128 by default) fields is one compact
#   array, about 20 bytes per 16-byte id; a larger one is a hash table, about 90. A bucket starts as one shard and
#   grows by linear hashing: whenever it holds SHARD_FILL ids per shard, the next shard in turn is split in two (half
#   of its ids move), so shards hold SHARD_FILL ids on average and twice that at most, whatever the event rate. A
#   bucket's `level`, `split` and `count` are in the hash `<prefix><bucket_s>:<bucket>`; every shard holds a
#   placeholder field '' (no id is empty) so that it and its expiry exist while it has no ids.
# * Ids as 16 bytes. The client packs the ids (bytes.fromhex) when all of a batch's ids are 32 lowercase hex
#   digits, as trackpoint's own ids are; otherwise the script derives each id's field itself: the same 16 bytes
#   for such ids, the id itself for any other (its length made other than 16, so no other id shares its field).
# * The stream's state, `<prefix>state`: `legacy_until`, until when the one-key-per-id marks of earlier versions are
#   still read (two windows after this script first ran on the stream: one for the marks, one for the trackers of
#   a rolling upgrade still writing them); `bucket_s`, and while a bucket length used before a window change may
#   still hold ids, `previous_bucket_s` and `previous_until`, whose buckets are read as well.
BUCKETS_PER_WINDOW = 2
SHARD_FILL = 48

# KEYS[1]: the stream. ARGV: dedupe window (s; "0": off), maxlen (0: no trim), the prefix of the old per-id marks,
# the dedupe state's prefix, the ids packed (16 bytes each, in line order; empty: the script derives them), and the
# events as JSON lines (the same bytes the log collector writes: one encode per batch on the client, no per-event
# arguments to pack). Each line starts with {"id":"...","type":"..."}: msgspec writes fields in declaration order,
# and ids and type names are plain ASCII. A script runs atomically, so two trackers appending the same id race on
# HSETNX and exactly one of them appends. The dedupe keys are not in KEYS (they depend on Redis's clock), but they
# share the stream's hash tag, so on Redis Cluster they live in the stream's slot. If an XADD fails (out of memory),
# its id is removed again and the error returned: a retry then appends that event instead of taking it for a
# duplicate.
SCRIPT = """
local window, maxlen, stream = tonumber(ARGV[1]), tonumber(ARGV[2]), KEYS[1]
local call, sub, match = redis.call, string.sub, string.match
local EVENT = '^{"id":"([^"]+)","type":"([^"]+)"'
local BUCKETS, FILL = BUCKETS_PER_WINDOW, SHARD_FILL

local function append(id, event_type, line)
  local reply
  if maxlen > 0 then
    reply = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'id', id, 'type', event_type, 'event', line)
  else
    reply = redis.pcall('XADD', stream, '*', 'id', id, 'type', event_type, 'event', line)
  end
  if type(reply) == 'table' and reply.err then
    return reply
  end
  return nil
end

local function not_an_event(line)
  return redis.error_reply('ERR trackpoint: not an event: ' .. sub(line, 1, 80))
end

if window == 0 then
  local appended = 0
  for line in string.gmatch(ARGV[6], '[^\\n]+') do
    local id, event_type = match(line, EVENT)
    if id == nil then
      return not_an_event(line)
    end
    local failure = append(id, event_type, line)
    if failure then
      return failure
    end
    appended = appended + 1
  end
  return appended
end

local legacy, prefix, packed = ARGV[3], ARGV[4], ARGV[5]
local now = tonumber(call('TIME')[1])
local bucket_s = math.ceil(window / BUCKETS)

local state_key = prefix .. 'state'
local state = call('HMGET', state_key, 'legacy_until', 'bucket_s', 'previous_bucket_s', 'previous_until')
local legacy_until = tonumber(state[1])
if not legacy_until then
  legacy_until = now + 2 * window
  call('HSET', state_key, 'legacy_until', legacy_until)
end
local sizes = {bucket_s}
local stored = tonumber(state[2])
if stored ~= bucket_s then
  if stored then
    local until_ = now + (BUCKETS + 1) * stored
    call('HSET', state_key, 'bucket_s', bucket_s, 'previous_bucket_s', stored, 'previous_until', until_)
    sizes[2] = stored
  else
    call('HSET', state_key, 'bucket_s', bucket_s)
  end
elseif tonumber(state[3]) and now < (tonumber(state[4]) or 0) then
  sizes[2] = tonumber(state[3])
end

-- A bucket of `size` seconds, number `number`: its meta, or nil when it holds nothing (unless create).
local function open(size, number, create)
  local key = prefix .. size .. ':' .. number
  local meta = call('HMGET', key, 'level', 'split', 'count')
  local expires = (number + BUCKETS + 1) * size
  local level = tonumber(meta[1])
  if not level then
    if not create then
      return nil
    end
    level = 0
    call('HSET', key, 'level', 0, 'split', 0, 'count', 0)
    call('EXPIREAT', key, expires)
    call('HSET', key .. ':0', '', '')
    call('EXPIREAT', key .. ':0', expires)
  end
  return {key = key, base = key .. ':', level = level, width = 2 ^ level, split = tonumber(meta[2]) or 0,
          count = tonumber(meta[3]) or 0, expires = expires}
end

-- 32 bits of the id spread evenly (ids that share a part, like a host's UUIDv1s, still spread over the shards).
local function hash(member)
  if #member == 16 then
    local a, b, c, d = struct.unpack('>I4I4I4I4', member)
    return (a + b + c + d) % 4294967296
  end
  return tonumber(sub(redis.sha1hex(member), 1, 8), 16)
end

local function member_of(id)
  if #id == 32 and not string.find(id, '[^0-9a-f]') then
    local n = tonumber
    return struct.pack('>I4I4I4I4', n(sub(id, 1, 8), 16), n(sub(id, 9, 16), 16), n(sub(id, 17, 24), 16),
                       n(sub(id, 25, 32), 16))
  end
  if #id < 16 then
    return id
  end
  return id .. '.'
end

local function shard(bucket, h)
  local address = h % bucket.width
  if address < bucket.split then
    address = h % (2 * bucket.width)
  end
  return bucket.base .. address
end

-- Linear hashing: the shard `split` becomes two, its ids of the upper half moving to shard `split + width`.
local function split(bucket)
  local width = bucket.width
  local from, to = bucket.base .. bucket.split, bucket.base .. (bucket.split + width)
  local moving = {}
  for _, field in ipairs(call('HKEYS', from)) do
    if field ~= '' and hash(field) % (2 * width) ~= bucket.split then
      moving[#moving + 1] = field
    end
  end
  call('HSET', to, '', '')
  call('EXPIREAT', to, bucket.expires)
  for first = 1, #moving, 500 do
    local last = math.min(first + 499, #moving)
    local fields = {}
    for i = first, last do
      fields[#fields + 1] = moving[i]
      fields[#fields + 1] = ''
    end
    call('HSET', to, unpack(fields))
    call('HDEL', from, unpack(moving, first, last))
  end
  bucket.split = bucket.split + 1
  if bucket.split == width then
    bucket.level, bucket.width, bucket.split = bucket.level + 1, 2 * width, 0
  end
end

local current = open(bucket_s, math.floor(now / bucket_s), true)
local older = {}
for position, size in ipairs(sizes) do
  local number = math.floor(now / size)
  local newest = number
  if position == 1 then
    newest = number - 1
  end
  for k = newest, number - BUCKETS, -1 do
    local bucket = open(size, k, false)
    if bucket then
      older[#older + 1] = bucket
    end
  end
end

local appended, index = 0, 0
local function save()
  if appended > 0 then
    call('HSET', current.key, 'level', current.level, 'split', current.split, 'count', current.count)
  end
end

for line in string.gmatch(ARGV[6], '[^\\n]+') do
  index = index + 1
  local id, event_type = match(line, EVENT)
  if id == nil then
    save()
    return not_an_event(line)
  end
  local member
  if packed ~= '' then
    member = sub(packed, 16 * index - 15, 16 * index)
  else
    member = member_of(id)
  end
  local h = hash(member)
  local seen = now < legacy_until and call('EXISTS', legacy .. id) == 1
  local i = 1
  while not seen and older[i] do
    seen = call('HEXISTS', shard(older[i], h), member) == 1
    i = i + 1
  end
  if not seen then
    local key = shard(current, h)
    if call('HSETNX', key, member, '') == 1 then
      local failure = append(id, event_type, line)
      if failure then
        call('HDEL', key, member)
        save()
        return failure
      end
      appended = appended + 1
      current.count = current.count + 1
      if current.count > FILL * (current.width + current.split) then
        split(current)
      end
    end
  end
end
save()
return appended
""".replace("BUCKETS_PER_WINDOW, SHARD_FILL", f"{BUCKETS_PER_WINDOW}, {SHARD_FILL}")
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
# A batch whose ids are all trackpoint's own (32 lowercase hex digits) has them packed by the client: C-speed here,
# where the script would spend a few microseconds per id on it.
PACKABLE_IDS = re.compile(r"[0-9a-f]{32}(?:\n[0-9a-f]{32})*")
log = logging.getLogger("trackpoint.collectors.redis_streams")

PROBE_INTERVAL_S = 5.0  # an idle collector pings this often, so health() notices an outage without traffic
DEDUPE_COUNT_INTERVAL_S = 30.0  # how often worker 0 reads how many ids the dedupe state holds (for /metrics)
EVICTION_CHECK_S = 30.0  # how often the servers' maxmemory-policy is read (a parameter group edited, a failover)


class RedisStreamsCollector(Collector):
    """Appends each batch in one round trip; `duplicates` counts events skipped as already appended."""

    def __init__(self, name: str, config: RedisStreamsCollectorConfig, context: CollectorContext) -> None:
        super().__init__(name, config, context)
        self.config = config
        # A missing password fails here, at start-up.
        self._password = env_secret(config.password_env, "password_env") if config.password_env else None
        self._encoder = msgspec.json.Encoder()
        self._streams: dict[str, str] = {}  # event type -> stream
        self._stream_args: dict[str, bytes] = {}  # stream -> its fixed arguments, packed
        # A template without {type} names one stream for every event: no grouping needed.
        self._single_stream = config.stream if "{type}" not in config.stream else None
        # EVALSHA sha 1 <stream> <window> <maxlen> <old marks' prefix> <dedupe prefix> <ids> <events>.
        self._command_head = b"*10\r\n" + b"".join(bulk(part) for part in ("EVALSHA", SCRIPT_SHA, "1"))
        self._window_maxlen = bulk(str(config.dedupe_window_s)) + bulk(str(config.maxlen))
        self._router: Router | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._last_contact = 0.0
        self._send_error = ""
        self._probe_error = "not connected yet"
        self._evicting = ""  # why the servers may drop what was appended (an evicting maxmemory-policy)
        self.duplicates = 0
        # The ids held by the dedupe state of the streams written so far: one worker reads it for all.
        self._counts_dedupe = context.worker == 0 and config.dedupe_window_s > 0
        self._dedupe_ids: int | None = None

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

    def levels(self) -> dict[str, int]:
        return {} if self._dedupe_ids is None else {"dedupe_ids": self._dedupe_ids}

    def health(self) -> Health:
        # A failed batch keeps the collector unhealthy until a batch goes through, whatever a ping says. An evicting
        # Redis is a warning, not an outage: batches still go.
        detail = "; ".join(reason for reason in (self._send_error or self._probe_error, self._evicting) if reason)
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
                (self._streams.get(event_type) or self._stream_of(event_type), list(events))
                for event_type, events in itertools.groupby(sorted(batch, key=_type_of), key=_type_of)
            ]
        encode_lines = self._encoder.encode_lines
        dedupe = self.config.dedupe_window_s > 0
        commands: list[tuple[str, tuple[bytes, bytes, bytes]]] = []
        for stream, events in groups:
            lines = encode_lines(events)
            head = b"%b%b%b$%d\r\n" % (
                self._command_head,
                self._stream_args.get(stream) or self._args_of(stream),
                bulk_bytes(_packed_ids(events) if dedupe else b""),
                len(lines),
            )
            commands.append((stream, (head, lines, b"\r\n")))
        return commands

    def _stream_of(self, event_type: str) -> str:
        stream = self._streams[event_type] = stream_key(self.config.stream, event_type)
        return stream

    def _args_of(self, stream: str) -> bytes:
        args = self._stream_args[stream] = b"%b%b%b%b" % (
            bulk(stream),
            self._window_maxlen,
            bulk(seen_prefix(stream)),
            bulk(dedupe_prefix(stream)),
        )
        return args

    # --- health --------------------------------------------------------------------------------------------------

    async def _probe(self) -> None:
        """Pings when no batch went out for a while, so an idle collector's health follows the server's; and, in
        worker 0, reads the size of the dedupe state now and then."""
        loop = asyncio.get_running_loop()
        next_count = next_eviction_check = loop.time()
        while True:
            if self._router is not None and loop.time() - self._last_contact >= PROBE_INTERVAL_S:
                self._last_contact = loop.time()
                self._probe_error = await self._ping(self._router)
            if self._router is not None and self._counts_dedupe and self._stream_args and loop.time() >= next_count:
                next_count = loop.time() + DEDUPE_COUNT_INTERVAL_S
                with contextlib.suppress(RedisError, OSError, TimeoutError):  # the next send reports an outage
                    async with asyncio.timeout(self.config.timeout_s + self.config.connect_timeout_s):
                        self._dedupe_ids = await self._count_dedupe_ids(self._router)
            if self._router is not None and loop.time() >= next_eviction_check:
                with contextlib.suppress(RedisError, OSError, TimeoutError):  # unknown: the last answer stands
                    async with asyncio.timeout(self.config.timeout_s + self.config.connect_timeout_s):
                        self._note_eviction(await self._eviction_risk(self._router))
                    next_eviction_check = loop.time() + EVICTION_CHECK_S
            if not await self.idle(PROBE_INTERVAL_S):  # closing, even if close()'s cancellation was lost
                return

    async def _ping(self, router: Router) -> str:
        """Why the server, or a primary of a cluster (each holds the streams of its slots), does not answer a ping,
        naming it; empty when every one does."""
        node = urlsplit(router.url).netloc.rpartition("@")[2]
        try:
            async with asyncio.timeout(self.config.timeout_s + self.config.connect_timeout_s):
                for client in await router.primaries():
                    node = _node(client)
                    await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            return f"{node}: {reason}" if node else reason
        return ""

    async def _eviction_risk(self, router: Router) -> str:
        """Why a server (every primary of a cluster) may drop what the collector appended, or "". Any evicting policy
        can drop the dedupe buckets first (`volatile-*` evicts only keys with an expiry, and they are the only
        ones), so their repeats are appended again; an `allkeys-*` policy can drop a stream itself, with events the
        collector counted as delivered."""
        for client in await router.primaries():
            evicting = eviction(await client.info("memory"))
            if evicting is None:
                continue
            maxmemory, policy = evicting
            if policy.startswith("allkeys"):
                loses = "an evicted stream loses the events appended to it, and an evicted dedupe bucket"
            elif self.config.dedupe_window_s > 0:
                loses = "an evicted dedupe bucket"
            else:
                continue  # volatile-*: only keys with an expiry go, and without dedupe the collector sets none
            return (
                f"redis {_node(client)} may evict keys (maxmemory {maxmemory:,} "
                f"bytes, maxmemory-policy {policy}): {loses} lets a retried or replayed batch append its events "
                "again; set maxmemory-policy noeviction (a full Redis then refuses appends, and the collector spools)"
            )
        return ""

    def _note_eviction(self, reason: str) -> None:
        if reason and reason != self._evicting:
            log.error("collector %s: %s", self.name, reason)
        self._evicting = reason

    async def _count_dedupe_ids(self, router: Router) -> int:
        """The ids the live buckets of the streams written so far hold (each bucket counts what it took), each
        stream's read on its node (on a Redis Cluster, the node of its slot) by that node's clock."""
        bucket_s = -(-self.config.dedupe_window_s // BUCKETS_PER_WINDOW)
        total = 0
        for stream in list(self._stream_args):
            client = await router.client_for(stream)
            newest = int((await client.time())[0]) // bucket_s
            prefix = dedupe_prefix(stream)
            async with client.pipeline(transaction=False) as pipe:
                for number in range(newest - BUCKETS_PER_WINDOW, newest + 1):
                    pipe.hget(f"{prefix}{bucket_s}:{number}", "count")
                counts = await pipe.execute()
            total += sum(int(count) for count in counts if count)
        return total


def _node(client: Redis) -> str:
    """A client's server, as host:port (or its unix socket's path), for messages."""
    address = client.connection_pool.connection_kwargs
    return str(address["path"]) if "path" in address else f"{address.get('host', '')}:{address.get('port', '')}"


def _type_of(event: Event) -> str:
    return event.type


def _packed_ids(events: Sequence[Event]) -> bytes:
    """The ids as 16 bytes each, in order, when every one is 32 lowercase hex digits; else b"" (the script then
    derives each id's field itself: uppercase hex must not read as the lowercase id it would decode to)."""
    ids = "\n".join([event.id for event in events])
    return bytes.fromhex(ids) if PACKABLE_IDS.fullmatch(ids) else b""
