#!/usr/bin/env python3
"""MCP sessions against a running `gatehouse serve`, through real sockets, and the server's
resident memory as they pile up and after they expire.

It signs in as USER (registration, authorize with PKCE, sign-in and consent pages, code
exchange: the whole flow a client runs), then CONNECTIONS keep-alive connections send
`initialize` (protocol 2025-06-18, which opens a session) and never `DELETE` the session, as many
clients do, until SESSIONS sessions were asked for. It prints the server's VmRSS (from
/proc/PID/status) before, at each checkpoint, and every minute for WAIT seconds after. After the
last checkpoint and at the end it calls `tools/list` in the first and the last session opened,
to show whether the server still holds them (200) or has ended them (404).

Usage: benches/mcp_sessions.py BASE PID USER PASSWORD [SESSIONS=30000] [CONNECTIONS=64]
       [WAIT=600] [CHECKPOINTS=10000,30000]
The server needs `mcp.rate_limit_per_token` raised out of the way for the measurement. Only the
Python standard library; loopback targets only.
"""

import asyncio
import json
import sys
import time
import urllib.parse
from collections import Counter

from load_client import proc_kb, read_response, sign_in






INITIALIZE = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "bench", "version": "1"}}}).encode()


async def opener(host, port, token, counter, quota, statuses, lock, ids):
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"MCP-Protocol-Version: 2025-06-18\r\nContent-Length: {len(INITIALIZE)}\r\n\r\n"
            ).encode() + INITIALIZE
    try:
        while True:
            async with lock:
                if counter[0] >= quota:
                    return
                counter[0] += 1
            writer.write(head)
            await writer.drain()
            status, headers, _ = await read_response(reader)
            statuses[status] += 1
            if "mcp-session-id" in headers:
                ids.append(headers["mcp-session-id"])
                del ids[1:-1]
            if headers.get("connection") == "close":
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


async def open_sessions(base, token, upto, connections, counter, statuses, ids):
    parts = urllib.parse.urlsplit(base)
    lock = asyncio.Lock()
    await asyncio.gather(*(opener(parts.hostname, parts.port, token, counter, upto, statuses, lock,
                                  ids)
                           for _ in range(connections)))


async def probe(base, token, session):
    """The status of a `tools/list` in `session`."""
    parts = urllib.parse.urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    body = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode()
    writer.write((f"POST /mcp HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
                  f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                  "Accept: application/json, text/event-stream\r\n"
                  f"MCP-Protocol-Version: 2025-06-18\r\nMcp-Session-Id: {session}\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    await writer.drain()
    status, _, _ = await read_response(reader)
    writer.close()
    return status


def probe_all(base, token, ids):
    if ids:
        statuses = [asyncio.run(probe(base, token, s)) for s in ids]
        print(f"tools/list in the first and the last session: {statuses}", flush=True)


def main():
    base, pid, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    sessions = int(sys.argv[5]) if len(sys.argv) > 5 else 30000
    connections = int(sys.argv[6]) if len(sys.argv) > 6 else 64
    wait = int(sys.argv[7]) if len(sys.argv) > 7 else 600
    checkpoints = [int(c) for c in (sys.argv[8] if len(sys.argv) > 8 else "10000,30000").split(",")]
    token = sign_in(base, user, password)
    print(f"before: {proc_kb(pid, 'VmRSS')} KB")
    counter, statuses, ids = [0], Counter(), []
    started = time.monotonic()
    for checkpoint in [c for c in checkpoints if c <= sessions]:
        asyncio.run(open_sessions(base, token, checkpoint, connections, counter, statuses, ids))
        print(f"after {checkpoint} initialize requests ({time.monotonic() - started:.1f} s, "
              f"answers {dict(statuses)}): {proc_kb(pid, 'VmRSS')} KB", flush=True)
    probe_all(base, token, ids)
    idle_started = time.monotonic()
    while time.monotonic() - idle_started < wait:
        time.sleep(min(60, wait - (time.monotonic() - idle_started)))
        print(f"{time.monotonic() - idle_started:.0f} s idle: {proc_kb(pid, 'VmRSS')} KB", flush=True)
    probe_all(base, token, ids)


if __name__ == "__main__":
    main()
