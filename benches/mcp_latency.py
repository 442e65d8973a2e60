#!/usr/bin/env python3
"""`/mcp` as clients see it: latency and throughput of authenticated MCP calls against a running
`gatehouse serve`, through real loopback sockets with keep-alive, at several concurrencies.

It signs in as USER through the whole OAuth flow, then for each concurrency C opens C keep-alive
connections, each sending `tools/call whoami` (or `tools/list`) one after another for SECONDS,
the head and the body written separately as many HTTP clients write them (TCP_NODELAY on the
client, so nothing waits on this side). It prints requests/s, p50 and p99 per level, and the
server's peak RSS (VmHWM) at the end.

Usage: benches/mcp_latency.py BASE PID USER PASSWORD [LEVELS=1,16,64] [SECONDS=10]
       [METHOD=tools/call|tools/list] [PROTOCOL=2026-07-28|2025-06-18] [SESSION=no|yes]
SESSION=yes (with 2025-06-18, against `mcp.session_mode = "stateful"`): each connection first
opens a session with `initialize` and sends every call in it.
The server needs `mcp.rate_limit_per_token` raised out of the way for the measurement. Client
and server share the machine's cores. Only the Python standard library; loopback targets only.
"""

import asyncio
import json
import socket
import sys
import time
import urllib.parse

from load_client import proc_kb, read_response, sign_in




def message(method, protocol):
    params = {"name": "whoami", "arguments": {}} if method == "tools/call" else {}
    if protocol == "2026-07-28":
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()




INITIALIZE = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "bench", "version": "1"}}}).encode()
INITIALIZED = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()


def with_body(head, body, session=None):
    """`head` (ending in a blank line, without Content-Length) for `body`."""
    extra = f"Mcp-Session-Id: {session}\r\n" if session else ""
    return head[:-2] + f"{extra}Content-Length: {len(body)}\r\n\r\n".encode()


async def caller(host, port, head, body, deadline, latencies, statuses, session):
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    session_id = None
    if session:
        writer.write(with_body(head, INITIALIZE) + INITIALIZE)
        _, headers, _ = await read_response(reader)
        session_id = headers["mcp-session-id"]
        writer.write(with_body(head, INITIALIZED, session_id) + INITIALIZED)
        await read_response(reader)
    head = with_body(head, body, session_id)
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            writer.write(head)
            writer.write(body)
            await writer.drain()
            status, _, _ = await read_response(reader)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def level(host, port, head, body, connections, seconds, session):
    latencies, statuses = [], {}
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    await asyncio.gather(*(caller(host, port, head, body, deadline, latencies, statuses, session)
                           for _ in range(connections)))
    elapsed = time.monotonic() - started
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000
    return len(latencies) / elapsed, pct(0.5), pct(0.99), statuses


def main():
    base, pid, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    levels = [int(c) for c in (sys.argv[5] if len(sys.argv) > 5 else "1,16,64").split(",")]
    seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 10
    method = sys.argv[7] if len(sys.argv) > 7 else "tools/call"
    protocol = sys.argv[8] if len(sys.argv) > 8 else "2026-07-28"
    session = (sys.argv[9] if len(sys.argv) > 9 else "no") == "yes"
    token = sign_in(base, user, password)
    parts = urllib.parse.urlsplit(base)
    body = message(method, protocol)
    extra = f"Mcp-Method: {method}\r\n" if protocol == "2026-07-28" else ""
    if protocol == "2026-07-28" and method == "tools/call":
        extra += "Mcp-Name: whoami\r\n"
    head = (f"POST /mcp HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: {protocol}\r\n"
            f"{extra}\r\n").encode()
    for connections in levels:
        rate, p50, p99, statuses = asyncio.run(level(parts.hostname, parts.port, head, body,
                                                     connections, seconds, session))
        where = ", in sessions" if session else ""
        print(f"{method} ({protocol}{where}), {connections} connections: {rate:,.0f}/s, "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, answers {statuses}", flush=True)
    print(f"server peak RSS (VmHWM): {proc_kb(pid, 'VmHWM')} KB")


if __name__ == "__main__":
    main()
