-- wrk script: every request is one single-row INSERT ... VALUES in the body, with a unique id per
-- request (thread number * 10^9 + counter), so the rows that land can be checked for loss and duplicates.
-- TABLE comes from the environment (default demo.events).
local table_name = os.getenv("TABLE") or "demo.events"
local threads = {}
local next_thread = 0

function setup(thread)
    thread:set("thread_no", next_thread)
    next_thread = next_thread + 1
    table.insert(threads, thread)
end

function init(args)
    counter = 0
    base = (thread_no or 0) * 1000000000
end

local actions = { "click", "view", "scroll", "it's quoted", "buy (now)" }

function request()
    counter = counter + 1
    local id = base + counter
    local body = string.format(
        "INSERT INTO %s (id, user, action) VALUES (%d, 'user-%d', '%s')",
        table_name, id, counter % 1000, actions[counter % #actions + 1]:gsub("'", "\\'"))
    return wrk.format("POST", "/", { ["Content-Type"] = "text/plain" }, body)
end
