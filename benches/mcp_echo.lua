-- wrk script: `tools/call` of a trivial tool (`echo`) as a 2025-06-18 client sends it, for the
-- gateway's overhead: the same call through Gatehouse (TOOL=everything__echo, TOKEN=...) and
-- straight to the upstream (TOOL=echo, SESSION=its Mcp-Session-Id, no token).
-- Usage: TOOL=... [TOKEN=...] [SESSION=...] wrk -t2 -c64 -d5s --latency -s benches/mcp_echo.lua URL
wrk.method = "POST"
local token = os.getenv("TOKEN")
if token then wrk.headers["Authorization"] = "Bearer " .. token end
local session = os.getenv("SESSION")
if session then wrk.headers["Mcp-Session-Id"] = session end
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-06-18"
local tool = os.getenv("TOOL") or "echo"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"' .. tool
  .. '","arguments":{"message":"hi"}}}'

-- Counted per thread (each runs its own copy of this script), summed at the end.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; non200 = 0 end
function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
  if not string.find(body, "Echo: hi", 1, true) then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b, n = 0, 0
  for _, t in ipairs(threads) do b = b + t:get("bad"); n = n + t:get("non200") end
  io.write(string.format("answers not 200: %d; answers without the echo: %d\n", n, b))
end
