//! Deleting what can no longer be used, so the database does not grow with every code exchange
//! and refresh (the periodic clean-up, `server::housekeeping`).
//!
//! Each kind is deleted in chunks of [`CHUNK`] rows, each chunk a statement of its own on a writer
//! borrowed for it alone: on SQLite the token endpoint's batches run between two chunks, not
//! after the whole clean-up.

use time::{Duration, OffsetDateTime};

use super::{Store, StoreError};

/// Rows deleted (or cleared) per statement.
const CHUNK: i64 = 500;

/// How long after its end a code or a grant is kept. A code presented again within this time is
/// still recognised as used (and revokes what it issued, RFC 6749 §4.1.2); after it, it is only
/// unknown (`invalid_grant` either way).
pub const KEEP_AFTER_EXPIRY: Duration = Duration::days(1);

/// Margin for clocks that differ between instances: a window another instance opened is not
/// judged over by this one's clock alone.
const SKEW: Duration = Duration::minutes(5);

/// What one clean-up removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Codes (with the sealed responses of their exchanges) past [`KEEP_AFTER_EXPIRY`].
    pub codes: u64,
    /// Sealed replay responses of rotated refresh tokens, past their grace window.
    pub refresh_responses: u64,
    /// Grants past their end and the keeping time (with their refresh tokens).
    pub grants: u64,
    /// Revoked access tokens past their expiry.
    pub revoked_access_tokens: u64,
}

impl Store {
    /// Deletes what can no longer be used at `now`. `access_token_ttl` bounds how long an access
    /// token of a grant can outlive it: a grant stays at least that long after its end, so that
    /// its revocation is still read by every instance while its last access tokens are valid.
    pub async fn prune(
        &self,
        now: OffsetDateTime,
        access_token_ttl: Duration,
    ) -> Result<Pruned, StoreError> {
        let codes_before = (now - KEEP_AFTER_EXPIRY - SKEW).unix_timestamp();
        let grants_before = (now - KEEP_AFTER_EXPIRY.max(access_token_ttl) - SKEW).unix_timestamp();
        let windows_before = (now - SKEW).unix_timestamp();
        // The responses of the codes about to go first (then the codes), so that a code is never
        // deleted while its response stays.
        self.in_chunks(
            "DELETE FROM code_responses WHERE grant_id IN (SELECT c.grant_id \
             FROM authorization_codes c JOIN code_responses r ON r.grant_id = c.grant_id \
             WHERE c.expires_at < $1 LIMIT $2)",
            codes_before,
        )
        .await?;
        let codes = self
            .in_chunks(
                "DELETE FROM authorization_codes WHERE code_hash IN \
                 (SELECT code_hash FROM authorization_codes WHERE expires_at < $1 LIMIT $2)",
                codes_before,
            )
            .await?;
        let refresh_responses = self
            .in_chunks(
                "UPDATE refresh_tokens SET replay_response = NULL WHERE token_hash IN \
                 (SELECT token_hash FROM refresh_tokens \
                  WHERE replay_response IS NOT NULL AND replay_until < $1 LIMIT $2)",
                windows_before,
            )
            .await?;
        let grants = self
            .in_chunks(
                "DELETE FROM grants WHERE grant_id IN \
                 (SELECT grant_id FROM grants WHERE expires_at < $1 LIMIT $2)",
                grants_before,
            )
            .await?;
        let revoked_access_tokens = self
            .in_chunks(
                "DELETE FROM revoked_access_tokens WHERE jti IN \
                 (SELECT jti FROM revoked_access_tokens WHERE expires_at < $1 LIMIT $2)",
                windows_before,
            )
            .await?;
        Ok(Pruned {
            codes,
            refresh_responses,
            grants,
            revoked_access_tokens,
        })
    }

    /// Runs `sql` (parameters: a time, the chunk size) until it changes fewer rows than a chunk;
    /// the rows it changed in all.
    async fn in_chunks(&self, sql: &str, before: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = sqlx::query(sql)
                .bind(before)
                .bind(CHUNK)
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected();
            total += done;
            if done < CHUNK.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}
