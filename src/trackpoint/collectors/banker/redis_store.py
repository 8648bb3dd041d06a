"""The production banker store: Redis, shared by every tracker; one script call per batch.

Keys (`P` is `key_prefix`):
- `P:campaign:<id>` hash — what a bidder reads in one round trip: total_budget_micros, daily_budget_micros,
  hourly_budget_micros, hourly_cap_micros, spent_micros, debits, exhausted_total (1 once the total is spent),
  hour (YYYYMMDDHH of the newest debit) and hour_spent_micros, paced_hour (the hour whose cap was reached),
  updated_ms;
- `P:days:<id>` hash — day (YYYYMMDD) → spend of that day; `<day>:x` → 1 once that day's budget was reached;
- `P:ledger:<id>` stream — every applied debit: one entry per script call, `debits` holding its debits as lines
  "<event id> <micros> <ts> <type>" and `spent` the campaign's spend after them;
- `P:seen:<event id>` — the dedupe record of one applied debit, expiring after `retention_s`;
- `P:campaigns` set — every campaign id; `P:trackers` hash — each tracker's backlog report;
- `P:notifications` stream and pub/sub channel — one JSON message per crossed budget.

The script runs atomically, so two trackers debiting the same campaign are serialised by Redis and each event id
is applied once whichever tracker (or replay) sends it first. The script touches keys it does not declare (the
dedupe records and the notification stream), so the banker needs one Redis primary, not a Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from trackpoint.collectors.banker.config import BankerCollectorConfig
from trackpoint.collectors.banker.model import (
    MS_PER_HOUR,
    Budget,
    Debit,
    Notification,
    RawCampaign,
    TrackerStatus,
    periods,
)
from trackpoint.collectors.banker.store import Applied, Store, StoreUnavailable
from trackpoint.collectors.resp import bulk, eviction, round_trip
from trackpoint.security.secrets import env_secret

# One call per batch. KEYS: the campaign set, the notification stream (the per-campaign keys are derived from the
# key prefix). ARGV: key prefix, retention, ledger maxlen (0: no trim), notification maxlen, channel, create ("1":
# a debit creates its campaign; "0": a campaign without a hash is not debited, its debits counted), now (ms);
# then per campaign: its id, its debit count n, and n x (id, micros, ts, day, hour, type). Amounts are written back
# as the strings they came in as, or formatted with %.0f: Lua's own number-to-string would write 1e+15.
APPLY = """#!lua
local campaigns, notes = KEYS[1], KEYS[2]
local prefix, retention, ledger_max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local notes_max, channel, create, now = ARGV[4], ARGV[5], ARGV[6] == '1', ARGV[7]
local seen = prefix .. ':seen:'
local function fmt(x) return string.format('%.0f', x) end
-- A script is not rolled back when a command fails: every key is checked before anything is written (and the
-- shebang makes Redis refuse the whole script up front when it is out of memory), so a batch applies whole or
-- not at all, and its retry finds no id marked seen without its spend.
local function wrong_type(key, kind)
  local found = redis.call('TYPE', key)['ok']
  return found ~= 'none' and found ~= kind
end
for _, check in ipairs({{campaigns, 'set'}, {notes, 'stream'}}) do
  if wrong_type(check[1], check[2]) then return redis.error_reply('WRONGTYPE trackpoint banker: ' .. check[1]) end
end
local j = 8
while j <= #ARGV do
  local cid = ARGV[j]
  for _, check in ipairs({{':campaign:', 'hash'}, {':days:', 'hash'}, {':ledger:', 'stream'}}) do
    if wrong_type(prefix .. check[1] .. cid, check[2]) then
      return redis.error_reply('WRONGTYPE trackpoint banker: ' .. prefix .. check[1] .. cid)
    end
  end
  j = j + 2 + 6 * tonumber(ARGV[j + 1])
end
local applied, published, unknown = 0, {}, 0
local i = 8
while i <= #ARGV do
  local cid, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local campaign, days, ledger = prefix .. ':campaign:' .. cid, prefix .. ':days:' .. cid, prefix .. ':ledger:' .. cid
  -- A campaign nobody created: its debits are counted, not marked seen (a replay debits them once it exists).
  local last = i + 6 * (n - 1)
  if not create and redis.call('EXISTS', campaign) == 0 then
    unknown, last = unknown + n, i - 6
  end
  local f = redis.call('HMGET', campaign, 'total_budget_micros', 'daily_budget_micros', 'hourly_cap_micros',
    'spent_micros', 'debits', 'exhausted_total', 'hour', 'hour_spent_micros', 'paced_hour')
  local total, daily, cap = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
  local spent, count, exhausted = tonumber(f[4]) or 0, tonumber(f[5]) or 0, f[6] == '1'
  local hour, hour_spent, paced = f[7] or '', tonumber(f[8]) or 0, f[9] or ''
  local before, day_spent, day_added, entries = count, {}, {}, {}
  local function note(reason, period, budget, id, ts)
    local message = '{"campaign":' .. cjson.encode(cid) .. ',"reason":"' .. reason .. '","period":"' .. period ..
      '","spent_micros":' .. fmt(spent) .. ',"budget_micros":' .. fmt(budget) .. ',"event_id":' ..
      cjson.encode(id) .. ',"ts":' .. ts .. '}'
    published[#published + 1] = redis.call('XADD', notes, 'MAXLEN', '~', notes_max, '*', 'notification', message)
    published[#published + 1] = message
    redis.call('PUBLISH', channel, message)
  end
  for j = i, last, 6 do
    local id, m, ts, day, hr = ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3], ARGV[j + 4]
    if redis.call('SET', seen .. id, m, 'NX', 'EX', retention) then
      local micros = tonumber(m)
      spent = spent + micros
      count = count + 1
      if day_spent[day] == nil then
        day_spent[day], day_added[day] = tonumber(redis.call('HGET', days, day)) or 0, 0
      end
      day_spent[day], day_added[day] = day_spent[day] + micros, day_added[day] + micros
      if hr == hour then
        hour_spent = hour_spent + micros
      elseif hr > hour then
        hour, hour_spent = hr, micros
      end
      entries[#entries + 1] = id .. ' ' .. m .. ' ' .. ts .. ' ' .. ARGV[j + 5]
      if total and not exhausted and spent >= total then
        exhausted = true
        note('total', '', total, id, ts)
      end
      if daily and day_spent[day] >= daily and redis.call('HSETNX', days, day .. ':x', '1') == 1 then
        note('daily', day, daily, id, ts)
      end
      if cap and hr == hour and paced ~= hour and hour_spent >= cap then
        paced = hour
        note('paced', hour, cap, id, ts)
      end
    end
  end
  i = i + 6 * n
  if count > before then
    applied = applied + count - before
    -- One ledger entry per campaign and call: its debits as lines "id micros ts type", and the spend after them.
    local debits = table.concat(entries, '\\n')
    if ledger_max > 0 then
      redis.call('XADD', ledger, 'MAXLEN', '~', ledger_max, '*', 'debits', debits, 'spent', fmt(spent))
    else
      redis.call('XADD', ledger, '*', 'debits', debits, 'spent', fmt(spent))
    end
    for day, added in pairs(day_added) do
      redis.call('HINCRBY', days, day, fmt(added))
    end
    redis.call('HSET', campaign, 'spent_micros', fmt(spent), 'debits', fmt(count), 'exhausted_total',
      exhausted and '1' or '0', 'hour', hour, 'hour_spent_micros', fmt(hour_spent), 'paced_hour', paced,
      'updated_ms', now)
    if before == 0 then
      redis.call('SADD', campaigns, cid)
    end
  end
end
return {applied, published, unknown}
"""

# KEYS: campaign hash, days hash, campaign set. ARGV: now, total, daily, hourly, cap ("" for none), campaign id.
SET_BUDGET = """
local campaign, days, campaigns = KEYS[1], KEYS[2], KEYS[3]
local fields = {'total_budget_micros', 'daily_budget_micros', 'hourly_budget_micros', 'hourly_cap_micros'}
for i, name in ipairs(fields) do
  if ARGV[i + 1] == '' then redis.call('HDEL', campaign, name) else redis.call('HSET', campaign, name, ARGV[i + 1]) end
end
redis.call('HSET', campaign, 'updated_ms', ARGV[1])
redis.call('HSETNX', campaign, 'spent_micros', '0')
redis.call('SADD', campaigns, ARGV[6])
local spent = tonumber(redis.call('HGET', campaign, 'spent_micros'))
if ARGV[2] ~= '' and spent < tonumber(ARGV[2]) then redis.call('HSET', campaign, 'exhausted_total', '0') end
local daily = tonumber(ARGV[3])
for _, key in ipairs(redis.call('HKEYS', days)) do
  if string.sub(key, -2) == ':x' then
    local day_spent = tonumber(redis.call('HGET', days, string.sub(key, 1, -3))) or 0
    if daily == nil or day_spent < daily then redis.call('HDEL', days, key) end
  end
end
local cap = tonumber(ARGV[5])
local hour_spent = tonumber(redis.call('HGET', campaign, 'hour_spent_micros')) or 0
if cap == nil or hour_spent < cap then redis.call('HSET', campaign, 'paced_hour', '') end
return 1
"""

APPLY_SHA = hashlib.sha1(APPLY.encode()).hexdigest()
SCRIPT_DEBITS = 256  # debits per script call: each call blocks Redis for about 3 ms


class RedisStore(Store):
    def __init__(self, config: BankerCollectorConfig) -> None:
        super().__init__(config)
        prefix = config.key_prefix
        self.prefix = prefix
        self.channel = f"{prefix}:notifications"
        # A missing password fails here, at start-up.
        self._password = env_secret(config.password_env, "password_env") if config.password_env else None
        # EVALSHA sha 2 <campaigns> <notifications> <prefix> <retention> <ledger max> <notes max> <channel> <create>:
        # fixed.
        self._apply_head = b"".join(
            bulk(part)
            for part in (
                "EVALSHA", APPLY_SHA, "2", self.key("campaigns"), self.key("notifications"), prefix,
                str(config.retention_s), str(config.ledger_maxlen), str(config.notifications_maxlen), self.channel,
                "1" if config.unknown_campaigns == "create" else "0",
            )
        )  # fmt: skip
        self._hours: dict[int, str] = {}
        self._client: Redis | None = None
        self._set_budget_sha: str | None = None

    @property
    def client(self) -> Redis:
        if self._client is None:
            self._client = Redis.from_url(
                self.config.redis_url,
                password=self._password,
                socket_timeout=self.config.timeout_s,
                socket_connect_timeout=self.config.connect_timeout_s,
                retry=Retry(NoBackoff(), 0),  # the collector retries batches, with backoff; the client must not
                decode_responses=False,
            )
        return self._client

    def key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}:{kind}:{name}" if name else f"{self.prefix}:{kind}"

    # --- spend -------------------------------------------------------------------------------------------------

    async def apply(self, debits: Sequence[Debit], now_ms: int) -> Applied:
        chunks = self._chunks(debits)
        now = str(now_ms)
        try:
            async with asyncio.timeout(self.config.timeout_s + self.config.connect_timeout_s):
                try:
                    replies = await round_trip(self.client, (self._command(c, now) for c in chunks), len(chunks))
                except NoScriptError:  # a restarted or failed-over server has an empty script cache
                    await self.client.script_load(APPLY)
                    replies = await round_trip(self.client, (self._command(c, now) for c in chunks), len(chunks))
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        result = Applied()
        for applied, published, unknown in replies:
            result.applied += int(applied)
            result.unknown += int(unknown)
            for seq, message in zip(published[::2], published[1::2], strict=True):
                note = msgspec.json.decode(message, type=Notification)
                note.seq = seq.decode()
                result.notifications.append(note)
        result.duplicates = len(debits) - result.applied - result.unknown
        return result

    @staticmethod
    def _chunks(debits: Sequence[Debit]) -> list[list[list[Debit]]]:
        """The batch grouped by campaign (in order within each), cut into script calls of about SCRIPT_DEBITS
        debits: Redis serves other clients (bidders reading budgets) between two calls, never inside one."""
        groups: dict[str, list[Debit]] = {}
        for debit in debits:
            group = groups.get(debit.campaign)
            if group is None:
                groups[debit.campaign] = [debit]
            else:
                group.append(debit)
        chunks: list[list[list[Debit]]] = [[]]
        size = 0
        for group in groups.values():
            for start in range(0, len(group), SCRIPT_DEBITS):
                if size >= SCRIPT_DEBITS:
                    chunks.append([])
                    size = 0
                part = group[start : start + SCRIPT_DEBITS]
                chunks[-1].append(part)
                size += len(part)
        return chunks

    def _command(self, chunk: list[list[Debit]], now: str) -> list[bytes]:
        """EVALSHA of APPLY, packed as RESP by hand: the debits as one ASCII text encoded once (event ids are hex
        and type names ASCII; anything else takes the exact path)."""
        parts = [self._apply_head, bulk(now)]
        count = 12  # the head's 11 strings and now
        for group in chunk:
            campaign = group[0].campaign
            parts += (bulk(campaign), bulk(str(len(group))))
            count += 2 + 6 * len(group)
            text = "".join([
                f"${len(d.id)}\r\n{d.id}\r\n${len(m)}\r\n{m}\r\n${len(t)}\r\n{t}\r\n{self._period(d.ts)}"
                f"${len(d.type)}\r\n{d.type}\r\n"
                for d in group
                for m, t in ((str(d.micros), str(d.ts)),)
            ])  # fmt: skip
            packed = text.encode()
            if len(packed) != len(text):  # not ASCII: lengths must count bytes
                packed = b"".join(
                    bulk(d.id) + bulk(str(d.micros)) + bulk(str(d.ts)) + self._period(d.ts).encode() + bulk(d.type)
                    for d in group
                )
            parts.append(packed)
        return [b"*%d\r\n" % count, *parts]

    def _period(self, ts: int) -> str:
        """The packed day and hour arguments of a time, cached by hour (a batch spans one or two)."""
        key = ts // MS_PER_HOUR
        packed = self._hours.get(key)
        if packed is None:
            if len(self._hours) > 1024:
                self._hours.clear()
            day, hour = periods(ts)
            packed = self._hours[key] = f"$8\r\n{day}\r\n$10\r\n{hour}\r\n"
        return packed

    # --- budgets -----------------------------------------------------------------------------------------------

    async def set_budget(self, campaign: str, budget: Budget, now_ms: int) -> RawCampaign:
        cap = self.cap_of(budget)

        def text(value: int | None) -> str:
            return "" if value is None else str(value)

        args = [
            str(now_ms), str(budget.total_budget_micros), text(budget.daily_budget_micros),
            text(budget.hourly_budget_micros), text(cap), campaign,
        ]  # fmt: skip
        keys = [self.key("campaign", campaign), self.key("days", campaign), self.key("campaigns")]
        await self._call(lambda client: client.eval(SET_BUDGET, len(keys), *keys, *args))
        found = await self.campaign(campaign)
        assert found is not None
        return found

    async def campaign(self, campaign: str) -> RawCampaign | None:
        (found,) = await self._read([campaign])
        return found

    async def campaigns(self, after: str = "", limit: int | None = None) -> list[RawCampaign]:
        # The whole set is read and sorted per page: campaigns are created by the admin API (unknown_campaigns:
        # ignore), so it stays as small as the advertiser's campaign list.
        ids = sorted(member.decode() for member in await self._call(lambda c: c.smembers(self.key("campaigns"))))
        ids = [campaign for campaign in ids if campaign > after][:limit]
        return [campaign for campaign in await self._read(ids) if campaign is not None]

    async def _read(self, ids: list[str]) -> list[RawCampaign | None]:
        """Campaigns (hash and days) in one round trip; None for an id without a hash."""

        async def work(client: Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            for campaign in ids:
                pipe.hgetall(self.key("campaign", campaign))
                pipe.hgetall(self.key("days", campaign))
            return await pipe.execute()

        replies = await self._call(work) if ids else []
        return [
            _raw(campaign, fields, days) if fields else None
            for campaign, fields, days in zip(ids, replies[::2], replies[1::2], strict=True)
        ]

    # --- signals -----------------------------------------------------------------------------------------------

    async def notifications(self, after: str, limit: int) -> list[Notification]:
        parts = after.split("-", 1) if after else []
        if not all(part.isascii() and part.isdigit() and int(part) < 2**64 for part in parts):
            raise ValueError(f"after: {after!r} is not a notification seq of this store (a stream id)")
        start = f"({after}" if after and after != "0" else "-"
        entries = await self._call(lambda c: c.xrange(self.key("notifications"), min=start, count=limit))
        found = []
        for entry_id, fields in entries:
            note = msgspec.json.decode(fields[b"notification"], type=Notification)
            note.seq = entry_id.decode()
            found.append(note)
        return found

    async def report_status(self, instance: str, status: TrackerStatus) -> None:
        await self._call(lambda c: c.hset(self.key("trackers"), instance, msgspec.json.encode(status)))

    async def forget_status(self, instance: str) -> None:
        await self._call(lambda c: c.hdel(self.key("trackers"), instance))

    async def statuses(self) -> list[TrackerStatus]:
        values = await self._call(lambda c: c.hvals(self.key("trackers")))
        return [msgspec.json.decode(value, type=TrackerStatus) for value in values]

    async def applied_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]

            async def work(client: Redis, chunk: Sequence[str] = chunk) -> list[Any]:
                pipe = client.pipeline(transaction=False)
                for event_id in chunk:
                    pipe.exists(self.key("seen", event_id))
                return await pipe.execute()

            found.update(event_id for event_id, hit in zip(chunk, await self._call(work), strict=True) if hit)
        return found

    async def ledger(self, campaign: str, limit: int | None = None) -> list[Debit]:
        """Reads entries newest first until `limit` debits are found (an entry holds the debits of one call)."""
        key = self.key("ledger", campaign)
        found: list[Debit] = []
        end = "+"
        while limit is None or len(found) < limit:
            page = await self._call(lambda c, end=end: c.xrevrange(key, max=end, count=1000))
            if not page:
                break
            for _, fields in page:
                lines = fields[b"debits"].decode().split("\n")
                found += [_ledger_debit(campaign, line) for line in reversed(lines)]
            end = "(" + page[-1][0].decode()
        newest = found if limit is None else found[:limit]
        return newest[::-1]

    async def unsafe(self) -> str | None:
        """A node of a Redis Cluster, where the script's keys of many slots fail every batch (CROSSSLOT) and the
        reason would read as an outage; or a Redis that evicts keys when full: maxmemory set and a policy other than
        noeviction. The dedupe records are the only keys with a TTL, so `volatile-*` (ElastiCache's default) evicts
        them first, and any eviction of one lets a retry or a replay debit its event again. Read from INFO: managed
        Redis services (ElastiCache, Memorystore, Azure Cache) answer it where CONFIG GET is disabled."""
        info = await self._call(lambda client: client.info())
        if str(info.get("cluster_enabled", 0)) == "1":
            return (
                "redis_url names a node of a Redis Cluster: the banker's store needs one primary (a batch's script "
                "touches the keys of many campaigns and slots, and the cluster refuses it); point redis_url at a "
                "standalone Redis or a primary with replicas"
            )
        evicting = eviction(info)
        if evicting is not None:
            maxmemory, policy = evicting
            return (
                f"redis may evict keys (maxmemory {maxmemory:,} bytes, maxmemory-policy {policy}): an evicted "
                f"dedupe record ({self.prefix}:seen:<id>) lets a retry or replay debit its event again; set "
                "maxmemory-policy noeviction (or maxmemory 0) on the banker's Redis"
            )
        return None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), 1.0)

    async def _call(self, work: Any) -> Any:
        try:
            async with asyncio.timeout(self.config.timeout_s + self.config.connect_timeout_s):
                return await work(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc


def _raw(campaign: str, fields: dict[bytes, bytes], days: dict[bytes, bytes]) -> RawCampaign:
    def number(name: str) -> int | None:
        value = fields.get(name.encode())
        return int(value) if value not in (None, b"") else None

    return RawCampaign(
        id=campaign,
        total_budget_micros=number("total_budget_micros"),
        daily_budget_micros=number("daily_budget_micros"),
        hourly_budget_micros=number("hourly_budget_micros"),
        hourly_cap_micros=number("hourly_cap_micros"),
        spent_micros=number("spent_micros") or 0,
        debits=number("debits") or 0,
        exhausted_total=fields.get(b"exhausted_total") == b"1",
        day_spent={k.decode(): int(v) for k, v in days.items() if not k.endswith(b":x")},
        hour=fields.get(b"hour", b"").decode(),
        hour_spent_micros=number("hour_spent_micros") or 0,
        updated_ms=number("updated_ms") or 0,
    )


def _ledger_debit(campaign: str, line: str) -> Debit:
    event_id, micros, ts, event_type = line.split(" ", 3)
    return Debit(event_id, campaign, int(micros), int(ts), event_type)
