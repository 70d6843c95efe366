-- wrk script for replikv's benchmark (bench/bench.py runs it).
--
--   wrk ... -s bench/wrk/kv.lua URL -- read  KEYS
--   wrk ... -s bench/wrk/kv.lua URL -- write PREFIX [RATE]
--
-- read:  GET <path>?key=k<i>, cycling over keys k0..k(KEYS-1) (seeded beforehand).
-- write: POST <path> with one new key per request, {"<PREFIX>-<thread>-<n>":"<32 chars>"},
--        so no write is ever a 409; PREFIX must differ between runs on one store.
--        With RATE (requests/s per wrk thread), requests are paced on a fixed
--        schedule (wrk's delay() hook), as long as the connections keep up.
-- done() prints one line `WRKJSON {...}` with the counts and the latency
-- percentiles in microseconds, p99.9 included (wrk's --latency stops at p99).

local mode, arg1, arg2 = "read", "1000", nil
local paths = {}
local next_path = 1
local counter = 0
local value = "v0123456789abcdef0123456789abcde"   -- 32 bytes

-- setup() runs in wrk's main Lua state; thread:set() makes `thread_id` a
-- global of that thread's own state, where init() and request() run.
local setups = 0
function setup(thread)
   thread:set("thread_id", setups)
   setups = setups + 1
end

function init(args)
   thread_id = thread_id or 0
   mode = args[1] or "read"
   arg1 = args[2]
   arg2 = args[3]
   if mode == "read" then
      local keys = tonumber(arg1 or "1000")
      local base = wrk.path
      for i = 0, keys - 1 do
         paths[#paths + 1] = wrk.format("GET", base .. "?key=k" .. i)
      end
      -- Start each thread at a different key.
      next_path = (thread_id * 7919) % #paths + 1
   elseif mode == "write" then
      wrk.method = "POST"
      wrk.headers["Content-Type"] = "application/json"
      if arg2 then
         local ffi = require("ffi")
         ffi.cdef [[
            typedef struct { long tv_sec; long tv_nsec; } replikv_timespec;
            int clock_gettime(int clock, replikv_timespec *tp);
         ]]
         local ts = ffi.new("replikv_timespec")
         local function now()
            ffi.C.clock_gettime(1, ts)   -- CLOCK_MONOTONIC
            return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
         end
         local interval = 1 / tonumber(arg2)
         local slot = now()
         -- Each request books the next slot of a fixed schedule; a connection
         -- waits for its slot. When the server falls behind, the schedule
         -- restarts from now instead of bursting to catch up.
         delay = function()
            local t = now()
            slot = slot + interval
            if slot < t then
               slot = t
            end
            return math.floor((slot - t) * 1000)
         end
      end
   else
      error("mode must be read or write, not " .. tostring(mode))
   end
end

function request()
   if mode == "read" then
      local r = paths[next_path]
      next_path = next_path % #paths + 1
      return r
   end
   counter = counter + 1
   local body = '{"' .. arg1 .. "-" .. thread_id .. "-" .. counter .. '":"' .. value .. '"}'
   return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   local p = function(q) return latency:percentile(q) end
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
      '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99_9":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      p(50), p(75), p(90), p(99), p(99.9)))
end
