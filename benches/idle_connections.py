#!/usr/bin/env python3
"""What idle connections cost a running `gatehouse serve`: opens N connections to it from this
one process, each either silent (connected, nothing sent) or kept alive after one `GET
/health`, holds them, and reports the server's resident memory (VmRSS) before and while they
are held, per connection, and whether a new client is still answered meanwhile.

Usage: benches/idle_connections.py HOST PORT PID N [MODE=kept|silent] [HOLD_SECONDS=5]

The server must allow them: `connections.max` and `connections.max_per_address` at least N
(every connection here comes from one address), and `connections.header_timeout` (silent) or
`connections.idle_timeout` (kept) longer than the run. This process raises its own open-file
limit to N + 64 (its hard limit must allow it). Only the Python standard library; loopback
targets only.
"""

import resource
import selectors
import socket
import sys
import time

from load_client import proc_kb


def rss(pid):
    return proc_kb(pid, "VmRSS")


def main():
    host, port, pid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "kept"
    hold = float(sys.argv[6]) if len(sys.argv) > 6 else 5.0
    assert host in ("127.0.0.1", "localhost", "::1"), "loopback targets only"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))

    time.sleep(0.5)
    before = rss(pid)
    sockets = []
    for _ in range(n):
        s = socket.create_connection((host, port))
        s.setblocking(False)
        sockets.append(s)
    answered = 0
    if mode == "kept":
        request = f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        sel = selectors.DefaultSelector()
        for s in sockets:
            s.sendall(request)
            sel.register(s, selectors.EVENT_READ, bytearray())
        deadline = time.time() + 60
        pending = n
        while pending and time.time() < deadline:
            for key, _ in sel.select(timeout=1):
                data = key.fileobj.recv(65536)
                buf = key.data
                buf.extend(data)
                head_end = buf.find(b"\r\n\r\n")
                if not data or head_end < 0:
                    if not data:
                        sel.unregister(key.fileobj)
                        pending -= 1
                    continue
                head = buf[:head_end].decode("latin-1").lower()
                length = 0
                for line in head.split("\r\n"):
                    if line.startswith("content-length:"):
                        length = int(line.split(":")[1])
                if len(buf) >= head_end + 4 + length:
                    if head.startswith("http/1.1 200"):
                        answered += 1
                    sel.unregister(key.fileobj)
                    pending -= 1
    time.sleep(hold)
    held = rss(pid)
    import os
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    # A new client meanwhile.
    probe = socket.create_connection((host, port), timeout=10)
    probe.sendall(f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    reply = probe.recv(64).decode("latin-1")
    probe.close()
    still_open = 0
    for s in sockets:
        try:
            if s.recv(1) == b"":
                continue
        except BlockingIOError:
            pass
        except OSError:
            continue
        still_open += 1
    print(
        f"{n} {mode} connections ({answered} answered 200 first; {still_open} still open after "
        f"{hold:.0f} s): server RSS {before} KB before, {held} KB while held, "
        f"{(held - before) * 1024 / n:.0f} bytes per connection; server file descriptors {fds}; a new client meanwhile: "
        f"{reply.splitlines()[0] if reply else 'no answer'}"
    )
    for s in sockets:
        s.close()


if __name__ == "__main__":
    main()
