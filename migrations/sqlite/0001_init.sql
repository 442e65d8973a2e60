-- Signing keys: public half and lifecycle state. The private half lives in keys_dir (mode 0600).
-- Timestamps are unix seconds (sqlx's Any driver has no time types).
CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY NOT NULL,
    alg          TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('next', 'current', 'previous', 'retired')),
    public_jwk   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    activated_at INTEGER,
    retire_after INTEGER,
    retired_at   INTEGER
);
-- Exactly one key signs at any time.
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state = 'current';

-- Append-only audit log. Never holds a secret or a token.
CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    outcome   TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
    subject   TEXT,
    client_id TEXT,
    grant_id  TEXT,
    ip        TEXT,
    detail    TEXT NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_subject ON audit_events (subject, at);
