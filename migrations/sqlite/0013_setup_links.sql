-- One-time links that create the first admin of a fresh installation. Only the SHA-256 of the
-- link's secret is kept. A link works once, within an hour, and only while there is no user;
-- using one deletes every link.
CREATE TABLE setup_links (
    link_hash  TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
