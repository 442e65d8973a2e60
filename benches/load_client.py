"""What the load scripts beside this file share: the OAuth flow a client runs (registration,
authorize with PKCE, the sign-in and consent pages, the code exchange), reading one HTTP/1.1
answer off a keep-alive connection, and the server's memory from /proc. Only the Python
standard library."""

import base64
import hashlib
import http.client
import io
import json
import os
import re
import urllib.parse


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Browser:
    """Just enough of a browser for the sign-in pages: one cookie jar, no redirects followed."""

    def __init__(self, host, port):
        self.host, self.port, self.cookies = host, port, {}

    def request(self, method, path, form=None, body=None, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        res = conn.getresponse()
        data = res.read()
        for value in res.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";")[0]
        conn.close()
        return res.status, res.headers, data


def csrf_of(html):
    return re.search(rb'name="csrf" value="([^"]+)"', html).group(1).decode()


def sign_in(base, user, password):
    host, port = urllib.parse.urlsplit(base).hostname, urllib.parse.urlsplit(base).port
    b = Browser(host, port)
    redirect = "http://127.0.0.1:9/cb"
    _, _, data = b.request("POST", "/register", body=json.dumps({
        "redirect_uris": [redirect], "token_endpoint_auth_method": "none",
        "client_name": "bench"}), headers={"Content-Type": "application/json"})
    client_id = json.loads(data)["client_id"]
    verifier = b64(os.urandom(32))
    challenge = b64(hashlib.sha256(verifier.encode()).digest())
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect,
        "scope": "mcp", "state": "s", "code_challenge": challenge,
        "code_challenge_method": "S256", "resource": f"{base}/mcp"})
    _, h, _ = b.request("GET", f"/authorize?{query}")
    login = h["Location"]
    _, _, page = b.request("GET", login)
    request_id = urllib.parse.parse_qs(urllib.parse.urlsplit(login).query)["request"][0]
    _, h, _ = b.request("POST", "/login", form={
        "csrf": csrf_of(page), "request": request_id, "username": user, "password": password})
    consent = h["Location"]
    _, _, page = b.request("GET", consent)
    _, h, _ = b.request("POST", "/consent", form={
        "csrf": csrf_of(page), "request": request_id, "decision": "allow"})
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(h["Location"]).query)["code"][0]
    _, _, data = b.request("POST", "/token", form={
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "redirect_uri": redirect, "client_id": client_id, "resource": f"{base}/mcp"})
    return json.loads(data)["access_token"]


def proc_kb(pid, field):
    """A memory figure of process `pid` (`VmRSS`, `VmHWM`) from /proc, in KB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def reset_peak(pid):
    """Resets the peak RSS (`VmHWM`) of process `pid` to its current RSS (Linux `clear_refs`,
    value 5), so that a later `VmHWM` is the peak of what ran since. False when not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


async def read_response(reader):
    """One HTTP/1.1 answer (Content-Length or chunked): its status, its headers (an
    `http.client.HTTPMessage`: names case-insensitive, `get_all` for repeated ones) and its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, fields = head.partition(b"\r\n")
    status = int(status_line.split(b" ")[1])
    headers = http.client.parse_headers(io.BytesIO(fields))
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", ""):
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:size]
            if size == 0:
                break
    return status, headers, body
