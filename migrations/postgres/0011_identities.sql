-- Ways to sign in through an identity provider: one row per (provider, issuer, subject), never
-- keyed by email. email is what the provider said at the last sign-in, and email_verified
-- whether it said the address was verified. last_sign_in_at is NULL for an identity an admin
-- linked that has not signed in yet.
CREATE TABLE identities (
    provider        TEXT NOT NULL,
    issuer          TEXT NOT NULL,
    subject         TEXT NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    email           TEXT,
    email_verified  BIGINT NOT NULL DEFAULT 0,
    linked_at       BIGINT NOT NULL,
    last_sign_in_at BIGINT,
    PRIMARY KEY (provider, issuer, subject)
);
CREATE INDEX identities_by_user ON identities (user_id);

-- Roles granted by an identity provider at the user's last sign-in through it (JSON list),
-- apart from the roles an admin granted (roles): a sign-in replaces these, never those.
ALTER TABLE users ADD COLUMN provider_roles TEXT NOT NULL DEFAULT '[]';
