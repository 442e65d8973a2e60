#!/usr/bin/env python3
"""A flood of wrong-password sign-ins against a running `gatehouse serve`, through real sockets.

Each of CLIENTS workers holds one keep-alive connection from its own loopback address
(127.0.x.y, so the per-address sign-in delays apply to each alone, as with a distributed
attacker), fetches the sign-in page once for its session cookie and CSRF token, then posts a
wrong password for a new user name each time (so the per-name delays never apply) as fast as it is
answered, for SECONDS. Meanwhile one more connection asks `/health` every 200 ms. It prints what
the sign-ins were answered (401 checked, 503 busy, 429 throttled), their latency, and every
`/health` answer's status and latency.

Usage: benches/login_flood.py HOST:PORT [CLIENTS=500] [SECONDS=20]
Only the Python standard library; loopback targets only.
"""

import asyncio
import re
import sys
import time
import urllib.parse
from collections import Counter

from load_client import read_response

CSRF = re.compile(rb'name="csrf" value="([^"]+)"')


async def request(reader, writer, host, method, path, cookie=None, body=b""):
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n"
    if cookie:
        head += f"Cookie: {cookie}\r\n"
    if method == "POST":
        head += "Content-Type: application/x-www-form-urlencoded\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
    return await read_response(reader)


async def signer(n, host, port, deadline, answers, latencies):
    local = ("127.0.%d.%d" % (1 + n // 250, 1 + n % 250), 0)
    try:
        reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    except OSError as e:
        answers[f"connect error {e.errno}"] += 1
        return
    try:
        status, headers, body = await request(reader, writer, f"{host}:{port}", "GET", "/login")
        cookie = "; ".join(c.split(";")[0] for c in headers.get_all("set-cookie") or [])
        csrf = CSRF.search(body)
        i = 0
        while time.monotonic() < deadline and csrf:
            form = urllib.parse.urlencode(
                {"csrf": csrf.group(1).decode(), "request": "", "username": f"flood{n}x{i}",
                 "password": "not the password"}
            ).encode()
            started = time.monotonic()
            status, headers, body = await request(
                reader, writer, f"{host}:{port}", "POST", "/login", cookie, form)
            latencies.append(time.monotonic() - started)
            answers[status] += 1
            csrf = CSRF.search(body) or csrf
            i += 1
            if status == 429:
                wait = int(headers.get("retry-after", "1"))
                await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
    except (OSError, asyncio.IncompleteReadError) as e:
        answers[f"connection lost ({type(e).__name__})"] += 1
    finally:
        writer.close()


async def health(host, port, deadline, seen):
    reader, writer = await asyncio.open_connection(host, port)
    while time.monotonic() < deadline:
        started = time.monotonic()
        status, _, _ = await request(reader, writer, f"{host}:{port}", "GET", "/health")
        seen.append((status, time.monotonic() - started))
        await asyncio.sleep(0.2)
    writer.close()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


async def main():
    target = sys.argv[1]
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 20
    host, port = target.rsplit(":", 1)
    port = int(port)
    deadline = time.monotonic() + seconds
    answers, latencies, seen = Counter(), [], []
    await asyncio.gather(
        health(host, port, deadline, seen),
        *(signer(n, host, port, deadline, answers, latencies) for n in range(clients)),
    )
    print(f"sign-ins: {sum(v for k, v in answers.items() if isinstance(k, int))} answered in "
          f"{seconds:.0f} s by {clients} connections: {dict(sorted(answers.items(), key=str))}")
    print(f"sign-in latency: p50 {pct(latencies, 0.5) * 1000:.0f} ms, "
          f"p99 {pct(latencies, 0.99) * 1000:.0f} ms, max {max(latencies, default=0) * 1000:.0f} ms")
    statuses = Counter(s for s, _ in seen)
    print(f"/health: {len(seen)} asked, {dict(statuses)}, p50 {pct([l for _, l in seen], 0.5) * 1000:.1f} ms, "
          f"max {max((l for _, l in seen), default=0) * 1000:.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
