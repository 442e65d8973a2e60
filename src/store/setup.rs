//! One-time setup links: each creates the first admin of a database with no user.

use sqlx::Connection;
use time::OffsetDateTime;

use super::{Store, StoreError};
use crate::domain::{SecretHash, User};

/// What using a setup link did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstAdmin {
    /// The user was added; no setup link works any more.
    Created,
    /// The link is unknown, expired, or was used (or another was).
    LinkNotValid,
    /// Someone can already sign in (added another way meanwhile); the links are gone.
    AlreadySetUp,
}

impl Store {
    /// Whether any user exists.
    pub async fn has_users(&self) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar("SELECT user_id FROM users LIMIT 1")
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        Ok(found.is_some())
    }

    /// Keeps a new setup link (by its hash) until `expires_at`, and forgets expired ones.
    pub async fn add_setup_link(
        &self,
        hash: &SecretHash,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        sqlx::query("DELETE FROM setup_links WHERE expires_at <= $1")
            .bind(now.unix_timestamp())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO setup_links (link_hash, created_at, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(hash.as_str())
        .bind(now.unix_timestamp())
        .bind(expires_at.unix_timestamp())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the link with `hash` would create the first admin at `now`: it is kept, not
    /// expired, and there is no user yet.
    pub async fn setup_link_open(
        &self,
        hash: &SecretHash,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT link_hash FROM setup_links WHERE link_hash = $1 AND expires_at > $2 \
             AND NOT EXISTS (SELECT 1 FROM users)",
        )
        .bind(hash.as_str())
        .bind(now.unix_timestamp())
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        Ok(found.is_some())
    }

    /// Uses the link with `hash` to add `user`, in one transaction: every link is deleted, and
    /// the user added only if this link was among them, unexpired, and no user exists. Two links
    /// used at once add one user: the second transaction finds the links already deleted.
    pub async fn first_admin(
        &self,
        hash: &SecretHash,
        user: &User,
        now: OffsetDateTime,
    ) -> Result<FirstAdmin, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let links: Vec<(String, i64)> =
            sqlx::query_as("DELETE FROM setup_links RETURNING link_hash, expires_at")
                .fetch_all(&mut *tx)
                .await?;
        let ours = links
            .iter()
            .any(|(h, expires)| h == hash.as_str() && *expires > now.unix_timestamp());
        if !ours {
            tx.rollback().await?;
            return Ok(FirstAdmin::LinkNotValid);
        }
        let someone: Option<String> = sqlx::query_scalar("SELECT user_id FROM users LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        if someone.is_some() {
            tx.commit().await?;
            return Ok(FirstAdmin::AlreadySetUp);
        }
        super::users::insert_user_in(&mut tx, user).await?;
        tx.commit().await?;
        Ok(FirstAdmin::Created)
    }
}
