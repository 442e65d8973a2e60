#!/usr/bin/env python3
"""Memory of gateway mode's upstream sessions: signs in N times (as USERS in turn, password
`benchpassword1`), calls the built-in `whoami` once with each token, then makes one
`tools/call TOOL` with each, so that each opens an upstream session of its own (HTTP sessions
are per person, application and scopes, at most 16 per person; a stdio process per person).
Prints the server's VmRSS before and after the upstream calls, and per session.

Usage: benches/upstream_sessions.py BASE PID TOOL N [USERS=bench]
Only the Python standard library; loopback targets only.
"""
import json
import sys
import time
import urllib.request

from load_client import proc_kb, sign_in
base, pid, tool, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
users = sys.argv[5].split(',') if len(sys.argv) > 5 else ['bench']
def call(tok, name=tool):
    req = urllib.request.Request(base + '/mcp', data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": name, "arguments": {"message": "hi"}}}).encode(),
        headers={"Authorization": "Bearer " + tok, "Content-Type": "application/json",
                 "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"})
    body = urllib.request.urlopen(req).read().decode()
    assert name != tool or "Echo: hi" in body, body
tokens = [sign_in(base, users[i % len(users)], 'benchpassword1') for i in range(n)]
# Every token used once on a built-in tool first, so that the difference is the upstream
# sessions' alone (not the sign-ins' or the first use of each token).
for tok in tokens:
    call(tok, 'whoami')
time.sleep(2)
before = proc_kb(pid, 'VmRSS')
t = time.time()
for tok in tokens:
    call(tok)
time.sleep(2)
after = proc_kb(pid, 'VmRSS')
print(f"{n} sessions of {tool}: VmRSS {before} KB -> {after} KB, {(after-before)/n:.1f} KB each ({time.time()-t:.1f} s)")
