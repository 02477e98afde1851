-- scripts/bench: INSERT ... FORMAT JSONEachRow in the `query` URL parameter, one JSON row in the body.
-- TABLE: the table (default bench.s3). RATE / WRK_THREADS: see bench-common.lua.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "bench-common.lua")

local table_name = os.getenv("TABLE") or "bench.s3"
local path = "/?query=" .. ("INSERT INTO " .. table_name .. " FORMAT JSONEachRow"):gsub(" ", "%%20")
local actions = { "click", "view", "scroll", "it's \\\"quoted\\\"", "buy (now)" }
local headers = { ["Content-Type"] = "application/json" }

function init(args)
    bench.init()
end

function request()
    local id = bench.next_id()
    local body = string.format('{"id":%d,"user":"user-%d","action":"%s"}', id, id % 1000, actions[id % #actions + 1])
    return wrk.format("POST", path, headers, body)
end
