-- API tokens a person created for clients that cannot run an OAuth flow. The token is shown
-- once; only the SHA-256 of the whole token is kept. expires_at NULL: it never expires (only
-- where the operator allows it). last_used_at is coarse (at most once a minute).
CREATE TABLE api_tokens (
    token_id     TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_tokens_by_user ON api_tokens (user_id);
