-- wrk script: bench/post.lua's requests, sent at a fixed rate rather than after a fixed think time.
-- ONRECORD_BENCH_POST = path of post.lua; ONRECORD_BENCH_THREAD_RATE = requests/s of each wrk
-- thread (the total divided by -t). Each thread keeps a schedule of send times, one every 1/rate s,
-- and a connection whose response came back waits for the next free slot, so the rate holds
-- whatever the response time, as long as there are connections enough (rate x response time).
-- A schedule that fell more than a second behind (every connection was waiting) restarts from
-- now rather than sending the missed requests in a burst.
dofile(os.getenv("ONRECORD_BENCH_POST"))

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } onrecord_timespec;
int clock_gettime(int clk_id, onrecord_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local ts = ffi.new("onrecord_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local period_ms = 1000 / tonumber(os.getenv("ONRECORD_BENCH_THREAD_RATE"))
local next_at = nil

function delay()
  local now = now_ms()
  if next_at == nil or next_at < now - 1000 then
    next_at = now
  end
  local slot = next_at
  next_at = next_at + period_ms
  if slot <= now then
    return 0
  end
  return math.floor(slot - now + 0.5)
end
