-- One-time links: 'setup' creates the first admin of a fresh installation (user_id NULL);
-- 'reset' lets user_id choose a new password (an admin makes it instead of typing a password).
-- Only the SHA-256 of a link's secret is kept. A link works once, until expires_at.
CREATE TABLE one_time_links (
    link_hash  TEXT PRIMARY KEY NOT NULL,
    purpose    TEXT NOT NULL,
    user_id    TEXT REFERENCES users (user_id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX one_time_links_by_user ON one_time_links (user_id);

-- An admin locked the account: nobody signs in as it, and its API tokens are refused, until
-- it is unlocked.
ALTER TABLE users ADD COLUMN locked_at BIGINT;
