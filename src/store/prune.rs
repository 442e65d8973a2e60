//! Deleting what can no longer be used, so the database does not grow with every code exchange
//! and refresh (the periodic clean-up, `server::housekeeping`).
//!
//! Each kind is deleted in chunks ([`CHUNK`] rows, or [`GRANT_CHUNK`] grants with their refresh
//! tokens), each chunk a statement (for codes, a transaction of two) of its own on a writer
//! borrowed for it alone: on SQLite the token endpoint's batches run between two chunks, not
//! after the whole clean-up.

use time::{Duration, OffsetDateTime};

use sqlx::Connection;

use super::{Store, StoreError};

/// Rows deleted (or cleared) per statement.
const CHUNK: i64 = 500;

/// Grants deleted per statement: each takes its refresh tokens with it, one per rotation of its
/// family (some 2,000 for a family refreshed hourly for its 90 days).
const GRANT_CHUNK: i64 = 20;

/// How long after its end a code or a grant is kept. A code presented again within this time is
/// still recognised as used (and revokes what it issued, RFC 6749 §4.1.2); after it, it is only
/// unknown (`invalid_grant` either way).
const KEEP_AFTER_EXPIRY: Duration = Duration::days(1);

/// Margin for clocks that differ between instances: a window another instance opened is not
/// judged over by this one's clock alone.
const SKEW: Duration = Duration::minutes(5);

/// How long each kind of record stays useful, from the configuration and the sign-in policy.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// The longest an access token lives (`access_token_ttl`).
    pub access_token_ttl: Duration,
    /// How long after its expiry the MCP endpoint still accepts one (`mcp.clock_leeway`).
    pub leeway: Duration,
    /// How long audit events are kept; `None` keeps them forever (`audit_retention`).
    pub audit_events: Option<Duration>,
    /// How long failed sign-ins are remembered (`account::throttle::WINDOW`).
    pub sign_in_failures: Duration,
}

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
    /// Audit events older than the retention.
    pub audit_events: u64,
    /// Failed sign-ins (per account name or address) no longer remembered: deleting them
    /// changes nothing, as failures older than the window count for nothing.
    pub sign_in_failures: u64,
}

/// The statement that deletes a chunk of `table`'s rows (keyed by `key`) whose `column` (indexed)
/// is before `$1`, the oldest first, `$2` at most.
fn older(table: &str, key: &str, column: &str) -> String {
    format!(
        "DELETE FROM {table} WHERE {key} IN \
         (SELECT {key} FROM {table} WHERE {column} < $1 ORDER BY {column} LIMIT $2)"
    )
}

impl Store {
    /// Deletes what can no longer be used at `now`. An access token of a grant is accepted until
    /// `access_token_ttl` after its issue and `leeway` after its expiry (`mcp.clock_leeway`): a
    /// grant and a revoked access token stay at least that long after their end, so that their
    /// revocation is still read by every instance while a token they cover can be accepted.
    /// Audit events and failed sign-ins go once past their own times in `keep`.
    pub async fn prune(&self, now: OffsetDateTime, keep: Keep) -> Result<Pruned, StoreError> {
        let codes_before = (now - KEEP_AFTER_EXPIRY - SKEW).unix_timestamp();
        let grants_before =
            (now - KEEP_AFTER_EXPIRY.max(keep.access_token_ttl + keep.leeway) - SKEW)
                .unix_timestamp();
        let windows_before = (now - SKEW).unix_timestamp();
        let tokens_before = (now - keep.leeway - SKEW).unix_timestamp();
        let failures_before = (now - keep.sign_in_failures - SKEW).unix_timestamp();
        let codes = self.prune_codes(codes_before).await?;
        // Each statement, with the time before which it deletes and its chunk.
        let mut counts = [0; 4];
        for (count, (sql, before, chunk)) in counts.iter_mut().zip([
            (
                "UPDATE refresh_tokens SET replay_response = NULL WHERE token_hash IN \
                 (SELECT token_hash FROM refresh_tokens \
                  WHERE replay_response IS NOT NULL AND replay_until < $1 LIMIT $2)",
                windows_before,
                CHUNK,
            ),
            (
                &older("grants", "grant_id", "expires_at"),
                grants_before,
                GRANT_CHUNK,
            ),
            (
                &older("revoked_access_tokens", "jti", "expires_at"),
                tokens_before,
                CHUNK,
            ),
            (
                &older("login_throttle", "throttle_key", "last_failure_at"),
                failures_before,
                CHUNK,
            ),
        ]) {
            *count = self.in_chunks(sql, before, chunk).await?;
        }
        let [
            refresh_responses,
            grants,
            revoked_access_tokens,
            sign_in_failures,
        ] = counts;
        // A retention reaching before the calendar's start keeps everything.
        let audit_events = match keep.audit_events.and_then(|kept| now.checked_sub(kept)) {
            Some(before) => {
                self.in_chunks(
                    &older("audit_events", "id", "at"),
                    before.unix_timestamp(),
                    CHUNK,
                )
                .await?
            }
            None => 0,
        };
        Ok(Pruned {
            codes,
            refresh_responses,
            grants,
            revoked_access_tokens,
            audit_events,
            sign_in_failures,
        })
    }

    /// Deletes codes that expired before `before`, a chunk at a time, each with the response of
    /// its exchange in the same transaction: the earliest codes first, so that each chunk reads
    /// only the entries it deletes.
    async fn prune_codes(&self, before: i64) -> Result<u64, StoreError> {
        const OLDEST: &str = "SELECT code_hash FROM authorization_codes WHERE expires_at < $1 \
                              ORDER BY expires_at, code_hash LIMIT $2";
        let mut total = 0;
        loop {
            let mut conn = self.writer().await?;
            let mut tx = conn.begin().await?;
            sqlx::query(&format!(
                "DELETE FROM code_responses WHERE grant_id IN \
                 (SELECT grant_id FROM authorization_codes WHERE code_hash IN ({OLDEST}))"
            ))
            .bind(before)
            .bind(CHUNK)
            .execute(&mut *tx)
            .await?;
            let done = sqlx::query(&format!(
                "DELETE FROM authorization_codes WHERE code_hash IN ({OLDEST})"
            ))
            .bind(before)
            .bind(CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            total += done;
            if done < CHUNK.unsigned_abs() {
                return Ok(total);
            }
        }
    }

    /// Runs `sql` (parameters: a time, the chunk size) until it changes fewer rows than a chunk;
    /// the rows it changed in all.
    async fn in_chunks(&self, sql: &str, before: i64, chunk: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = sqlx::query(sql)
                .bind(before)
                .bind(chunk)
                .execute(&mut *self.writer().await?)
                .await?
                .rows_affected();
            total += done;
            if done < chunk.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// More codes than a chunk holds: every expired one goes, each with its exchange's response
    /// and none of the others'; their grants stay (they live on); codes not yet expired stay.
    #[tokio::test]
    async fn codes_go_in_chunks_each_with_its_response() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = super::super::sqlite_store_in(&dir).await;
        let expired = 2 * CHUNK + 3;
        let mut script = String::from(
            "BEGIN; INSERT INTO users (user_id, username, password_hash, roles, created_at, \
             password_changed_at) VALUES ('u1', 'u', 'x', '', 0, 0);",
        );
        for i in 0..expired + 2 {
            // The last two expire far in the future.
            let expires_at = if i < expired {
                60 + i % 7
            } else {
                4_000_000_000
            };
            script.push_str(&format!(
                "INSERT INTO grants (grant_id, client_id, user_id, resource, scopes, created_at, \
                 expires_at) VALUES ('g{i}', 'c1', 'u1', 'r', 'mcp', 0, 4000000000); \
                 INSERT INTO code_responses (grant_id, response) VALUES ('g{i}', 'sealed'); \
                 INSERT INTO authorization_codes (code_hash, grant_id, client_id, user_id, \
                 redirect_uri, code_challenge, resource, scopes, created_at, expires_at, \
                 consumed_at) VALUES ('h{i}', 'g{i}', 'c1', 'u1', 'cb', 'ch', 'r', 'mcp', 0, \
                 {expires_at}, 1);"
            ));
        }
        script.push_str("COMMIT;");
        sqlx::raw_sql(&script)
            .execute(&mut *store.writer().await.unwrap())
            .await
            .unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let pruned = store
            .prune(
                now,
                Keep {
                    access_token_ttl: Duration::hours(1),
                    leeway: Duration::seconds(30),
                    audit_events: None,
                    sign_in_failures: Duration::minutes(15),
                },
            )
            .await
            .unwrap();
        assert_eq!(pruned.codes, expired.unsigned_abs());
        assert_eq!(pruned.grants, 0);
        let count = |sql: &'static str| {
            let store = store.clone();
            async move {
                let n: i64 = sqlx::query_scalar(sql)
                    .fetch_one(&mut *store.reader().await.unwrap())
                    .await
                    .unwrap();
                n
            }
        };
        assert_eq!(count("SELECT count(*) FROM authorization_codes").await, 2);
        assert_eq!(count("SELECT count(*) FROM code_responses").await, 2);
        assert_eq!(
            count(
                "SELECT count(*) FROM code_responses r JOIN authorization_codes c \
                 ON c.grant_id = r.grant_id"
            )
            .await,
            2,
            "the responses left are those of the codes left"
        );
        assert_eq!(count("SELECT count(*) FROM grants").await, expired + 2);
        store.close().await;
    }
}
