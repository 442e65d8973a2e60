-- wrk script: `tools/call whoami` (or, with METHOD=tools/list, `tools/list`) on /mcp as a
-- 2026-07-28 client sends it (no session; the protocol in the body's `_meta` and in headers),
-- with the access token from $TOKEN.
-- Usage: TOKEN=... [METHOD=tools/list] wrk -t2 -c64 -d5s --latency -s benches/mcp_call.lua http://127.0.0.1:PORT/mcp
local method = os.getenv("METHOD") or "tools/call"
local meta = '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
  .. '"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1"},'
  .. '"io.modelcontextprotocol/clientCapabilities":{}}'
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = method
if method == "tools/call" then
  wrk.headers["Mcp-Name"] = "whoami"
  wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{},'
    .. meta .. '}}'
else
  wrk.body = '{"jsonrpc":"2.0","id":1,"method":"' .. method .. '","params":{' .. meta .. '}}'
end

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
