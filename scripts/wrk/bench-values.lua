-- scripts/bench: INSERT ... VALUES in the body, ROWS rows per request (default 1), unique ids.
-- TABLE: the table (default bench.s1). TABLE_COUNT=N: spread requests round-robin over TABLE0 .. TABLE{N-1}.
-- RATE / WRK_THREADS: see bench-common.lua.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local bench = dofile(dir .. "bench-common.lua")

local table_name = os.getenv("TABLE") or "bench.s1"
local table_count = tonumber(os.getenv("TABLE_COUNT") or "0") or 0
local rows = tonumber(os.getenv("ROWS") or "1") or 1
local actions = { "click", "view", "scroll", "it\\'s quoted", "buy (now)" }

-- One string.format call per request: the row values other than the id are baked into the template.
local parts = {}
for i = 1, rows do
    parts[i] = string.format("(%%d, 'user-%d', '%s')", (i * 7919) % 1000, actions[i % #actions + 1])
end
local values_template = table.concat(parts, ", ")

local headers = { ["Content-Type"] = "text/plain" }

function init(args)
    bench.init()
end

function request()
    local first = counter + 1
    local ids = {}
    for i = 1, rows do ids[i] = bench.next_id() end
    local target = table_name
    if table_count > 0 then target = table_name .. (first % table_count) end
    local body = "INSERT INTO " .. target .. " (id, user, action) VALUES " .. string.format(values_template, unpack(ids))
    return wrk.format("POST", "/", headers, body)
end
