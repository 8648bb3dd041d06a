-- A constant-rate load for wrk with latency corrected for coordinated omission (the method of wrk2, which Debian
-- does not package). Run as `wrk -tN -cN -s constant_rate.lua URL -- RATE`: one connection per thread, so that the
-- thread's Lua state knows which request each response answers.
--
-- Each connection sends on a fixed schedule (RATE / N per second, staggered across connections). When the server
-- is slow, the connection is still waiting at the moment its next request was due: that request goes out late, and
-- its latency is counted from when it was due, not from when it could be sent, so the wait the server caused is
-- in the percentiles (a closed-loop generator would leave it out: coordinated omission). When the connection was
-- free on time, latency is counted from the real send; wrk's timers have millisecond resolution, so a request may
-- leave up to 1 ms before its time, never after it for the generator's own sake, and the rate over the run is exact.
-- `done` prints one line, `CONSTANT_RATE {json}`: the corrected latency histogram (µs -> count), statuses, count.
local ffi = require "ffi"
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } tp_timespec;
int clock_gettime(int clock, tp_timespec *out);
]]
local clock = ffi.new("tp_timespec")
local function now_us()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

local threads = {}
function setup(thread)
  thread:set("index", #threads)
  threads[#threads + 1] = thread
end

local interval_us, due, charge_from, free_at
counts, statuses, responses = {}, {}, 0

function init(args)
  local rate = tonumber(args[1])
  local n = tonumber(args[2]) -- threads, = connections
  interval_us = 1000000 * n / rate
  free_at = now_us()
  due = free_at + interval_us * index / n -- staggered starts
end

function delay()
  local wait_ms = math.floor((due - now_us()) / 1000)
  return wait_ms > 0 and wait_ms or 0
end

function request()
  local sent = now_us()
  -- late because the connection was still busy when the request was due: count from when it was due
  charge_from = (free_at > due) and due or sent
  due = due + interval_us
  return wrk.format()
end

function response(status, headers, body)
  local now = now_us()
  free_at = now
  local latency = math.floor(now - charge_from + 0.5)
  counts[latency] = (counts[latency] or 0) + 1
  statuses[status] = (statuses[status] or 0) + 1
  responses = responses + 1
end

local function encode(t)
  local parts = {}
  for k, v in pairs(t) do
    parts[#parts + 1] = string.format('"%d":%d', k, v)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local merged, merged_statuses, total = {}, {}, 0
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("counts")) do merged[k] = (merged[k] or 0) + v end
    for k, v in pairs(thread:get("statuses")) do merged_statuses[k] = (merged_statuses[k] or 0) + v end
    total = total + thread:get("responses")
  end
  io.write(string.format('CONSTANT_RATE {"responses":%d,"duration_us":%d,"latency_us":%s,"statuses":%s}\n',
    total, summary.duration, encode(merged), encode(merged_statuses)))
end
