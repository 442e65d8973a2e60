//! The `rate_limits` table: request budgets shared by every instance on one database.
//!
//! Each key holds one number, the theoretical arrival time (TAT) of the generic cell rate
//! algorithm, the same algorithm the in-memory limiters use. Taking one request from a budget is
//! one guarded upsert: the row changes only when the request fits, so concurrent takes on any
//! number of instances never admit more than the budget.

use super::{Store, StoreError};

/// The outcome of one take, with the budget's new (or unchanged) TAT in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateTake {
    /// The request fits; the TAT after it.
    Allowed(i64),
    /// Over budget; the TAT that refused it.
    Refused(i64),
}

impl Store {
    /// Takes one request from `key`'s budget at `now` (microseconds): each request costs
    /// `interval` microseconds and the budget holds `burst` of them.
    pub async fn take_rate_budget(
        &self,
        key: &str,
        now: i64,
        interval: i64,
        burst: i64,
    ) -> Result<RateTake, StoreError> {
        let tolerance = interval.saturating_mul(burst);
        let allowed: Option<i64> = sqlx::query_scalar(
            "INSERT INTO rate_limits (key, tat) VALUES ($1, $2 + $3) \
             ON CONFLICT (key) DO UPDATE \
             SET tat = (CASE WHEN rate_limits.tat > $2 THEN rate_limits.tat ELSE $2 END) + $3 \
             WHERE (CASE WHEN rate_limits.tat > $2 THEN rate_limits.tat ELSE $2 END) + $3 - $2 <= $4 \
             RETURNING tat",
        )
        .bind(key)
        .bind(now)
        .bind(interval)
        .bind(tolerance)
        .fetch_optional(&mut *self.writer().await?)
        .await?;
        if let Some(tat) = allowed {
            return Ok(RateTake::Allowed(tat));
        }
        let tat: Option<i64> = sqlx::query_scalar("SELECT tat FROM rate_limits WHERE key = $1")
            .bind(key)
            .fetch_optional(&mut *self.writer().await?)
            .await?;
        // The row is there (the update was refused), unless it was pruned in between.
        Ok(RateTake::Refused(tat.unwrap_or(now)))
    }

    /// Deletes budgets that are full again (their TAT has passed): they mean what no row means.
    pub async fn delete_idle_rate_budgets(&self, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM rate_limits WHERE tat <= $1")
            .bind(now)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(done.rows_affected())
    }
}
