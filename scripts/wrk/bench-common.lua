-- Shared by the scripts/bench wrk scripts (loaded with dofile from each of them). Provides:
--   * thread numbering and a per-thread counter for unique row ids (thread_no * 10^9 + counter);
--   * optional open-loop pacing: RATE=<requests per second over all threads> (WRK_THREADS=<-t value>, default 1)
--     makes delay() hand out send slots at that rate, so latency can be measured at a fixed rate (wrk itself
--     has no rate option and Debian has no wrk2). Slots use CLOCK_MONOTONIC through LuaJIT's ffi; wrk's timers
--     have 1 ms resolution, so each wait is rounded, but slots are spaced exactly, so the average rate holds
--     as long as there are enough connections. A sender that falls behind catches up by at most 1 s of slots.
--     wrk measures latency from the moment a request is written, so waiting for a slot is not counted;
--   * done(): one machine-readable "BENCH key=value ..." line that scripts/bench parses.
local bench = {}

local threads_started = 0
function setup(thread)
    thread:set("thread_no", threads_started)
    threads_started = threads_started + 1
end

function bench.init()
    counter = 0
    id_base = (thread_no or 0) * 1000000000
    local rate = tonumber(os.getenv("RATE") or "")
    if rate and rate > 0 then
        local ffi = require("ffi")
        ffi.cdef [[
            typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
            int clock_gettime(int clock_id, bench_timespec_t *tp);
        ]]
        local ts = ffi.new("bench_timespec_t")
        bench.now_ms = function()
            ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
            return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
        end
        local wrk_threads = tonumber(os.getenv("WRK_THREADS") or "1") or 1
        bench.interval_ms = 1000 / (rate / wrk_threads)
        bench.next_slot = nil
    end
end

function bench.next_id()
    counter = counter + 1
    return id_base + counter
end

function bench.delay()
    local now = bench.now_ms()
    local slot = bench.next_slot
    if slot == nil or slot < now - 1000 then slot = now end
    bench.next_slot = slot + bench.interval_ms
    local wait = slot - now
    if wait <= 0 then return 0 end
    return math.floor(wait + 0.5)
end

-- wrk decides when it loads the script whether requests are paced, so delay() exists only when RATE is set.
local rate_setting = tonumber(os.getenv("RATE") or "")
if rate_setting and rate_setting > 0 then
    function delay()
        return bench.delay()
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d bytes=%d status_errors=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d p50_us=%d p90_us=%d p99_us=%d p999_us=%d mean_us=%.1f max_us=%d\n",
        summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
        latency.mean, latency.max))
end

return bench
