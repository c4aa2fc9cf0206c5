-- wrk script: POST pre-signed, distinct events, one line per request from this thread's file.
-- Line format: webhook-id \t webhook-timestamp \t webhook-signature \t body
-- ONRECORD_BENCH_FILES = prefix of the per-thread files; ONRECORD_BENCH_DELAY_MS paces each
-- connection (0 = as fast as possible).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local prefix = os.getenv("ONRECORD_BENCH_FILES")
  delay_ms = tonumber(os.getenv("ONRECORD_BENCH_DELAY_MS") or "0")
  requests = {}
  for line in io.lines(prefix .. id) do
    local wid, ts, sig, body = line:match("([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)")
    local headers = {}
    headers["webhook-id"] = wid
    headers["webhook-timestamp"] = ts
    headers["webhook-signature"] = sig
    headers["content-type"] = "application/json"
    table.insert(requests, wrk.format("POST", nil, headers, body))
  end
  index = 0
  non200 = 0
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function delay()
  return delay_ms
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    local n = t:get("non200")
    if n and n > 0 then
      io.write(string.format("NON200 %d\n", n))
    end
  end
end
