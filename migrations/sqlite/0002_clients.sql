-- OAuth clients registered dynamically (RFC 7591) or by the operator. Clients known through a
-- Client ID Metadata Document are fetched, not stored. The secret is stored only as a hash.
CREATE TABLE clients (
    client_id        TEXT PRIMARY KEY NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('dynamic', 'operator')),
    client_name      TEXT,
    redirect_uris    TEXT NOT NULL,
    auth_method      TEXT NOT NULL,
    grant_types      TEXT NOT NULL,
    response_types   TEXT NOT NULL,
    scope            TEXT,
    client_uri       TEXT,
    logo_uri         TEXT,
    application_type TEXT,
    secret_hash      TEXT,
    created_at       INTEGER NOT NULL,
    last_used_at     INTEGER
);
-- The cleanup of registrations that were never used scans by age.
CREATE INDEX clients_unused ON clients (kind, created_at) WHERE last_used_at IS NULL;
