#!/usr/bin/env python3
"""Two `gatehouse serve` instances on one PostgreSQL database, behind one issuer, as a load
balancer would use them: every request of every flow goes to either instance at random. It runs
the code flow (authorize with a remembered consent, then the code exchange) and refresh chains
for SECONDS, first against one instance, then against both, and in the second half of the run
with both it stops instance B with SIGTERM and starts it again (a rolling restart). A request
whose connection is refused (B is down) goes to A instead, as a load balancer's retry would; any
HTTP answer other than the expected one counts as an error.

It prints, for one instance and for two: flows and refreshes per second, p50 and p99 of each
request, errors, and the connections refused while B restarted.

Usage: benches/two_instances.py BIN DATABASE_URL [SECONDS=20] [WORKERS=16]
BIN is a release `gatehouse`; DATABASE_URL an empty PostgreSQL database. It makes a working
directory of its own (shared `keys_dir`), adds the user `bench`, and raises the per-address
budgets out of the way. Only the Python standard library; loopback only.
"""

import hashlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from load_client import b64

REDIRECT = "http://127.0.0.1:9/cb"
PASSWORD = "benchpassword1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Instances:
    """Two servers, A and B, sharing the database, the keys directory and the issuer (A's)."""

    def __init__(self, binary, database_url):
        self.binary, self.dir = binary, tempfile.mkdtemp(prefix="gh-two-")
        self.ports = [free_port(), free_port()]
        self.env = dict(os.environ)
        self.env.update({
            "GATEHOUSE_DATABASE_URL": database_url,
            "GATEHOUSE_ISSUER": f"http://127.0.0.1:{self.ports[0]}",
            "GATEHOUSE_RATE_LIMITS__OAUTH_PER_MINUTE": "100000000",
            "GATEHOUSE_REGISTRATION__RATE_LIMIT_PER_HOUR": "100000000",
            "GATEHOUSE_MCP__RATE_LIMIT_PER_TOKEN": "100000000",
        })
        add = subprocess.run([binary, "users", "add", "bench", "--password-stdin"],
                             input=PASSWORD + "\n", text=True, cwd=self.dir, env=self.env,
                             capture_output=True)
        if add.returncode != 0:
            sys.exit(f"users add: {add.stderr}")
        self.procs = [None, None]
        for i in (0, 1):
            self.start(i)

    def start(self, i):
        env = dict(self.env, GATEHOUSE_BIND=f"127.0.0.1:{self.ports[i]}")
        self.procs[i] = subprocess.Popen([self.binary, "serve"], cwd=self.dir, env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.ports[i], timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit(f"instance {i} did not become healthy")

    def restart(self, i):
        self.procs[i].send_signal(signal.SIGTERM)
        code = self.procs[i].wait(timeout=30)
        if code != 0:
            print(f"instance {'AB'[i]} exited with {code} on SIGTERM", file=sys.stderr)
        time.sleep(1)
        self.start(i)

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)


class Client:
    """One worker: a keep-alive connection to each instance, a cookie jar, and the timings."""

    def __init__(self, ports, spread):
        self.ports, self.spread, self.cookies = ports, spread, {}
        self.conns = {}
        self.refused = 0

    def _conn(self, port):
        if port not in self.conns:
            self.conns[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        return self.conns[port]

    def request(self, method, path, form=None, body=None, headers=None):
        """One request to a random instance (only A when not spread); a refused connection
        goes to the other instance."""
        order = list(self.ports) if self.spread else [self.ports[0]]
        random.shuffle(order)
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        for port in order:
            conn = self._conn(port)
            try:
                conn.request(method, path, body=body, headers=headers)
                res = conn.getresponse()
                data = res.read()
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                self.conns.pop(port, None)
                self.refused += 1
                continue
            for value in res.headers.get_all("Set-Cookie") or []:
                name, _, rest = value.partition("=")
                self.cookies[name] = rest.split(";")[0]
            return res.status, res.headers, data
        raise ConnectionError("no instance answered")


def prepare(client):
    """Registers a client, signs in and consents once; returns the client id."""
    _, _, data = client.request("POST", "/register", body=json.dumps({
        "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none",
        "client_name": "two instances"}), headers={"Content-Type": "application/json"})
    client_id = json.loads(data)["client_id"]
    code, _ = authorize(client, client_id, first=True)
    return client_id, code


def authorize(client, client_id, first=False):
    verifier = b64(os.urandom(32))
    challenge = b64(hashlib.sha256(verifier.encode()).digest())
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
        "scope": "mcp", "state": "s", "code_challenge": challenge,
        "code_challenge_method": "S256"})
    status, headers, _ = client.request("GET", f"/authorize?{query}")
    location = headers.get("Location", "")
    for _ in range(4 if first else 0):
        if location.startswith(REDIRECT):
            break
        _, _, page = client.request("GET", location)
        csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
        request = re.search(rb'name="request" value="([^"]*)"', page).group(1).decode()
        if location.startswith("/login"):
            form = {"csrf": csrf, "request": request, "username": "bench", "password": PASSWORD}
            status, headers, _ = client.request("POST", "/login", form=form)
        else:
            form = {"csrf": csrf, "request": request, "decision": "allow"}
            status, headers, _ = client.request("POST", "/consent", form=form)
        location = headers.get("Location", "")
    if not location.startswith(REDIRECT):
        return None, status
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["code"][0]
    return (code, verifier), status


def run(instances, spread, seconds, workers, restart):
    """Runs the flows for `seconds` with `workers` threads; returns the results."""
    results = {"authorize": [], "token": [], "refresh": [], "errors": 0, "refused": 0,
               "flows": 0, "refreshes": 0}
    lock = threading.Lock()
    stop = time.time() + seconds

    def worker():
        client = Client(instances.ports, spread)
        client_id, _ = prepare(client)
        refresh_token = None
        local = {"authorize": [], "token": [], "refresh": [], "errors": 0, "flows": 0,
                 "refreshes": 0}
        while time.time() < stop:
            try:
                t0 = time.perf_counter()
                got, status = authorize(client, client_id)
                t1 = time.perf_counter()
                if got is None:
                    local["errors"] += 1
                    continue
                code, verifier = got
                status, _, data = client.request("POST", "/token", form={
                    "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
                    "redirect_uri": REDIRECT, "client_id": client_id})
                t2 = time.perf_counter()
                if status != 200:
                    local["errors"] += 1
                    continue
                local["authorize"].append(t1 - t0)
                local["token"].append(t2 - t1)
                local["flows"] += 1
                refresh_token = json.loads(data)["refresh_token"]
                # Three turns of this flow's refresh chain.
                for _ in range(3):
                    t3 = time.perf_counter()
                    status, _, data = client.request("POST", "/token", form={
                        "grant_type": "refresh_token", "refresh_token": refresh_token,
                        "client_id": client_id})
                    if status != 200:
                        local["errors"] += 1
                        break
                    local["refresh"].append(time.perf_counter() - t3)
                    local["refreshes"] += 1
                    refresh_token = json.loads(data)["refresh_token"]
            except ConnectionError:
                local["errors"] += 1
        with lock:
            for key in ("authorize", "token", "refresh"):
                results[key].extend(local[key])
            for key in ("errors", "flows", "refreshes"):
                results[key] += local[key]
            results["refused"] += client.refused

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    if restart:
        time.sleep(seconds / 2)
        instances.restart(1)
    for t in threads:
        t.join()
    return results


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] * 1000


def report(label, r, seconds):
    print(f"{label}: {r['flows'] / seconds:,.0f} code flows/s, {r['refreshes'] / seconds:,.0f} "
          f"refreshes/s; authorize p50 {pct(r['authorize'], .5):.2f} ms p99 "
          f"{pct(r['authorize'], .99):.2f} ms; token p50 {pct(r['token'], .5):.2f} ms p99 "
          f"{pct(r['token'], .99):.2f} ms; refresh p50 {pct(r['refresh'], .5):.2f} ms p99 "
          f"{pct(r['refresh'], .99):.2f} ms; errors {r['errors']}; connections refused "
          f"{r['refused']}")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, database_url = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 20
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 16
    instances = Instances(binary, database_url)
    try:
        report("one instance (A)", run(instances, False, seconds, workers, False), seconds)
        report("two instances", run(instances, True, seconds, workers, False), seconds)
        report("two instances, B restarted halfway",
               run(instances, True, seconds, workers, True), seconds)
    finally:
        instances.stop()


if __name__ == "__main__":
    main()
