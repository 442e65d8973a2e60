-- wrk script: the code flow of returning users (consent remembered), as a keep-alive C client
-- drives it: `GET /authorize`, answered at once with a code in the redirect, then
-- `POST /token` for that code. Each wrk thread keeps the codes it was given and spends each
-- once, on whichever of its connections asks next. The sessions come from
-- `code_flow_prep.py` (one per line: client_id verifier challenge cookie), in $FLOWS.
-- Usage:
--   python3 benches/code_flow_prep.py http://127.0.0.1:PORT bench PASSWORD 64 > /tmp/flows.txt
--   FLOWS=/tmp/flows.txt wrk -t2 -c64 -d5s --latency -s benches/code_flow.lua http://127.0.0.1:PORT
-- wrk's requests/s counts both steps: code flows/s is the `token` count over the run's seconds.
-- Its latency figures mix both steps; `done` prints each step's count and every failure.

local sessions = {}
for line in io.lines(os.getenv("FLOWS") or "/tmp/flows.txt") do
  local client, verifier, challenge, cookie = line:match("^(%S+) (%S+) (%S+) (%S+)$")
  if client then
    sessions[#sessions + 1] = { client = client, verifier = verifier,
                                challenge = challenge, cookie = cookie }
  end
end

local redirect = "http%3A%2F%2F127.0.0.1%3A9%2Fcb"
local threads = {}
local resource

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  resource = wrk.scheme .. "%3A%2F%2F" .. wrk.host .. "%3A" .. wrk.port .. "%2Fmcp"
  codes = {}          -- codes not yet exchanged: { code, session }
  next_session = id   -- threads start apart, then step through every session
  authorized, tokens, failed = 0, 0, 0
end

function request()
  local pending = table.remove(codes)
  if pending then
    local s = pending[2]
    local body = "grant_type=authorization_code&code=" .. pending[1]
      .. "&code_verifier=" .. s.verifier .. "&redirect_uri=" .. redirect
      .. "&client_id=" .. s.client .. "&resource=" .. resource
    return wrk.format("POST", "/token",
      { ["Content-Type"] = "application/x-www-form-urlencoded" }, body)
  end
  next_session = next_session % #sessions + 1
  local s = sessions[next_session]
  local path = "/authorize?response_type=code&client_id=" .. s.client
    .. "&redirect_uri=" .. redirect .. "&scope=mcp&state=" .. next_session
    .. "&code_challenge=" .. s.challenge .. "&code_challenge_method=S256&resource=" .. resource
  return wrk.format("GET", path, { ["Cookie"] = s.cookie })
end

function response(status, headers, body)
  if status == 303 then
    local location = headers["location"] or headers["Location"] or ""
    local code = location:match("[?&]code=([^&]+)")
    local state = tonumber(location:match("[?&]state=(%d+)"))
    if code and state then
      authorized = authorized + 1
      table.insert(codes, { code, sessions[state] })
      return
    end
  elseif status == 200 and body:find('"access_token"', 1, true) then
    tokens = tokens + 1
    return
  end
  failed = failed + 1
end

function done(summary, latency, requests)
  local a, t, f = 0, 0, 0
  for _, thread in ipairs(threads) do
    a = a + thread:get("authorized")
    t = t + thread:get("tokens")
    f = f + thread:get("failed")
  end
  local seconds = summary.duration / 1e6
  io.write(string.format("authorize answered with a code: %d; tokens issued: %d; failed: %d\n",
    a, t, f))
  io.write(string.format("code flows/s: %.0f\n", t / seconds))
end
