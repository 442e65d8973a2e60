-- A grant: what one user allowed one client for one resource, and everything issued under it
-- (its refresh-token family and its access tokens). Revoking the grant revokes them all.
-- user_id is NULL for client_credentials grants. Grants are revoked, never deleted while their
-- access tokens may live, so every instance learns of the revocation.
CREATE TABLE grants (
    grant_id       TEXT PRIMARY KEY NOT NULL,
    client_id      TEXT NOT NULL,
    user_id        TEXT,
    resource       TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
);
CREATE INDEX grants_user ON grants (user_id);
CREATE INDEX grants_client ON grants (client_id);
CREATE INDEX grants_revoked ON grants (revoked_at) WHERE revoked_at IS NOT NULL;

-- Refresh tokens by hash, one family per grant, rotated on every use. A rotated token keeps,
-- for the grace window, the response its rotation produced, encrypted under a key derived
-- from the token itself (never in clear), so a client's retry gets the same pair.
CREATE TABLE refresh_tokens (
    token_hash      TEXT PRIMARY KEY NOT NULL,
    grant_id        TEXT NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
    generation      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    rotated_at      INTEGER,
    replay_until    INTEGER,
    replay_response TEXT
);
CREATE INDEX refresh_tokens_grant ON refresh_tokens (grant_id);

-- Access tokens revoked one by one (RFC 7009), kept until they would have expired anyway.
CREATE TABLE revoked_access_tokens (
    jti        TEXT PRIMARY KEY NOT NULL,
    grant_id   TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
);
CREATE INDEX revoked_access_tokens_at ON revoked_access_tokens (revoked_at);

-- The same for codes: ChatGPT may POST one code twice; within a short window the same request
-- gets the same response.
ALTER TABLE authorization_codes ADD COLUMN replay_until INTEGER;
ALTER TABLE authorization_codes ADD COLUMN replay_response TEXT;
