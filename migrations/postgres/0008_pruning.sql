-- What the periodic clean-up deletes, found without reading whole tables: grants past their end
-- (their refresh tokens and code responses go with them), and the sealed replay responses of
-- rotated refresh tokens once their grace window is over (the rows stay: a rotated token presented
-- later must still be recognised, to revoke its family), and revoked access tokens past their
-- expiry, and failed sign-ins no longer remembered. The first two keys grow with time, so new
-- entries are appended at the end of each index.
CREATE INDEX grants_expiry ON grants (expires_at);
CREATE INDEX refresh_tokens_replay ON refresh_tokens (replay_until) WHERE replay_response IS NOT NULL;
CREATE INDEX revoked_access_tokens_expiry ON revoked_access_tokens (expires_at);
CREATE INDEX login_throttle_last_failure ON login_throttle (last_failure_at);
