#!/usr/bin/env python3
"""The authorization server as clients see it: registrations, the code flow (authorize with a
remembered consent, then the code exchange) and refreshes against a running `gatehouse serve`,
through real loopback sockets with keep-alive, at several concurrencies.

Each of C workers holds one keep-alive connection. For the code flow, each worker first signs in
and consents once (its own browser session), then repeats: `GET /authorize` (answered at once
with a code, consent being remembered), then `POST /token` for it. For refreshes, each worker
keeps its own rotation chain. For registrations, each worker posts a new public client. It prints
operations/s, p50 and p99 per level (for the code flow, of the whole flow and of each step), and
the server's peak RSS (VmHWM) during each level's run, reset after the sign-ins that prepare it
(they hash passwords on the password pool's threads), when /proc/PID/clear_refs may be written.

Usage: benches/oauth_load.py BASE PID USER PASSWORD [SCENARIOS=register,code,refresh]
       [LEVELS=1,16,64] [SECONDS=5]
The server needs its per-address budgets raised out of the way for the measurement
(`rate_limits.oauth_per_minute`, `registration.rate_limit_per_hour`). Client and server share
the machine's cores. Only the Python standard library; loopback targets only.
"""

import asyncio
import hashlib
import json
import os
import socket
import sys
import time
import urllib.parse

from load_client import Browser, b64, csrf_of, proc_kb, read_response, reset_peak

REDIRECT = "http://127.0.0.1:9/cb"




async def exchange(reader, writer, host, method, path, body=b"", headers=""):
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
    if method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    await writer.drain()
    return await read_response(reader)


class Worker:
    """One client: its keep-alive connection, and for the code flow its signed-in session."""

    def __init__(self, base, user, password):
        parts = urllib.parse.urlsplit(base)
        self.base, self.host, self.port = base, parts.hostname, parts.port
        self.authority = f"{self.host}:{self.port}"
        self.user, self.password = user, password

    async def connect(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def sign_in_and_consent(self):
        """Registers a client, signs in and consents once (blocking; before the clock runs)."""
        b = Browser(self.host, self.port)
        _, _, data = b.request("POST", "/register", body=json.dumps({
            "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
            "client_name": "bench"}), headers={"Content-Type": "application/json"})
        self.client_id = json.loads(data)["client_id"]
        _, h, _ = b.request("GET", self.authorize_path(b64(os.urandom(32)))[0])
        login = h["Location"]
        _, _, page = b.request("GET", login)
        request_id = urllib.parse.parse_qs(urllib.parse.urlsplit(login).query)["request"][0]
        _, h, _ = b.request("POST", "/login", form={
            "csrf": csrf_of(page), "request": request_id, "username": self.user,
            "password": self.password})
        _, _, page = b.request("GET", h["Location"])
        b.request("POST", "/consent", form={
            "csrf": csrf_of(page), "request": request_id, "decision": "allow"})
        self.cookie = "; ".join(f"{k}={v}" for k, v in b.cookies.items())

    def authorize_path(self, verifier):
        challenge = b64(hashlib.sha256(verifier.encode()).digest())
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": REDIRECT,
            "scope": "mcp", "state": "s", "code_challenge": challenge,
            "code_challenge_method": "S256", "resource": f"{self.base}/mcp"})
        return f"/authorize?{query}", verifier

    async def code_flow(self):
        """One authorize with remembered consent and its exchange: the tokens, and each step's
        time."""
        path, verifier = self.authorize_path(b64(os.urandom(32)))
        started = time.perf_counter()
        status, h, _ = await exchange(self.reader, self.writer, self.authority, "GET", path,
                                      headers=f"Cookie: {self.cookie}\r\n")
        authorized = time.perf_counter()
        if status != 303 or "code=" not in h.get("location", ""):
            raise RuntimeError(f"authorize answered {status} {h.get('location')}")
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(h["location"]).query)["code"][0]
        form = urllib.parse.urlencode({
            "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
            "redirect_uri": REDIRECT, "client_id": self.client_id,
            "resource": f"{self.base}/mcp"}).encode()
        status, _, data = await exchange(
            self.reader, self.writer, self.authority, "POST", "/token", form,
            "Content-Type: application/x-www-form-urlencoded\r\n")
        if status != 200:
            raise RuntimeError(f"token answered {status} {data[:200]}")
        return json.loads(data), authorized - started, time.perf_counter() - authorized

    async def refresh(self, token):
        form = urllib.parse.urlencode({
            "grant_type": "refresh_token", "refresh_token": token,
            "client_id": self.client_id}).encode()
        status, _, data = await exchange(
            self.reader, self.writer, self.authority, "POST", "/token", form,
            "Content-Type: application/x-www-form-urlencoded\r\n")
        if status != 200:
            raise RuntimeError(f"refresh answered {status} {data[:200]}")
        return json.loads(data)["refresh_token"]

    async def register(self):
        body = json.dumps({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
                           "client_name": "bench"}).encode()
        status, _, data = await exchange(self.reader, self.writer, self.authority, "POST",
                                         "/register", body, "Content-Type: application/json\r\n")
        if status != 201:
            raise RuntimeError(f"register answered {status} {data[:200]}")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000 if values else float("nan")


async def run(scenario, workers, seconds):
    for w in workers:
        await w.connect()
    chains = {}
    if scenario == "refresh":
        for w in workers:
            tokens, _, _ = await w.code_flow()
            chains[w] = tokens["refresh_token"]
    whole, authorize, token = [], [], []
    deadline = time.monotonic() + seconds

    async def loop(w):
        while time.monotonic() < deadline:
            started = time.perf_counter()
            if scenario == "code":
                _, a, t = await w.code_flow()
                authorize.append(a)
                token.append(t)
            elif scenario == "refresh":
                chains[w] = await w.refresh(chains[w])
            else:
                await w.register()
            whole.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(loop(w) for w in workers))
    elapsed = time.monotonic() - started
    for w in workers:
        w.writer.close()
    return len(whole) / elapsed, whole, authorize, token


def main():
    base, pid, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    scenarios = (sys.argv[5] if len(sys.argv) > 5 else "register,code,refresh").split(",")
    levels = [int(c) for c in (sys.argv[6] if len(sys.argv) > 6 else "1,16,64").split(",")]
    seconds = float(sys.argv[7] if len(sys.argv) > 7 else 5)
    pool = []
    peaks = []
    for scenario in scenarios:
        for connections in levels:
            while len(pool) < connections:
                w = Worker(base, user, password)
                w.sign_in_and_consent()
                pool.append(w)
            # The peak of the run itself: the sign-ins before it hash passwords, whose memory is
            # the password pool's, not the load's.
            reset = reset_peak(pid)
            rate, whole, authorize, token = asyncio.run(run(scenario, pool[:connections], seconds))
            line = (f"{scenario}, {connections} connections: {rate:,.0f}/s, "
                    f"p50 {pct(whole, 0.5):.2f} ms, p99 {pct(whole, 0.99):.2f} ms")
            if scenario == "code":
                line += (f" (authorize p50 {pct(authorize, 0.5):.2f} ms, p99 {pct(authorize, 0.99):.2f}"
                         f" ms; token p50 {pct(token, 0.5):.2f} ms, p99 {pct(token, 0.99):.2f} ms)")
            if reset:
                peaks.append(proc_kb(pid, 'VmHWM'))
                line += f"; server peak RSS during the run {peaks[-1]} KB"
            print(line, flush=True)
    print(f"server peak RSS (VmHWM): {proc_kb(pid, 'VmHWM')} KB"
          + (f" since the last reset; highest during a run {max(peaks)} KB" if peaks else ""))


if __name__ == "__main__":
    main()
