#!/usr/bin/env python3
"""Prepares the returning users that `code_flow.lua` drives: N clients registered, each with a
browser session signed in as USER and a consent given once. Prints one line per session:
`client_id verifier challenge cookie` (the PKCE pair is reused for every code of that session,
which the server neither knows nor needs to know).

Usage: benches/code_flow_prep.py BASE USER PASSWORD N > /tmp/flows.txt
"""

import hashlib
import sys

from load_client import b64
from oauth_load import Worker


def main():
    base, user, password, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    for _ in range(n):
        w = Worker(base, user, password)
        w.sign_in_and_consent()
        verifier = b64(hashlib.sha256(w.client_id.encode() + w.cookie.encode()).digest())
        challenge = b64(hashlib.sha256(verifier.encode()).digest())
        print(w.client_id, verifier, challenge, w.cookie.replace(" ", ""))


if __name__ == "__main__":
    main()
