-- A next key is published at once and starts signing at activate_after.
ALTER TABLE signing_keys ADD COLUMN activate_after INTEGER;
-- The private key sealed under keys_passphrase, so that every instance sharing this database can
-- load it. NULL when no passphrase is configured (the private key then lives only in keys_dir).
ALTER TABLE signing_keys ADD COLUMN private_sealed TEXT;
-- At most one key waits to sign, as at most one signs.
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (state) WHERE state = 'next';
