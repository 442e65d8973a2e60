//! One-time links: a setup link creates the first admin of a database with no user; a reset
//! link lets one person choose a new password. Only their hashes are kept.

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

const SETUP: &str = "setup";
const RESET: &str = "reset";

impl Store {
    /// Whether any user exists.
    pub async fn has_users(&self) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar("SELECT user_id FROM users LIMIT 1")
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        Ok(found.is_some())
    }

    /// Keeps a new setup link (by its hash) until `expires_at`; earlier setup links, and every
    /// expired link, are forgotten (one setup link works at a time).
    pub async fn add_setup_link(
        &self,
        hash: &SecretHash,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.add_link(hash, SETUP, None, now, expires_at).await
    }

    /// Keeps a new reset link for `user_id` until `expires_at`; the user's earlier reset links
    /// and every expired link are forgotten.
    pub async fn add_reset_link(
        &self,
        hash: &SecretHash,
        user_id: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.add_link(hash, RESET, Some(user_id), now, expires_at)
            .await
    }

    async fn add_link(
        &self,
        hash: &SecretHash,
        purpose: &str,
        user_id: Option<&str>,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        // The same purpose for the same person (or, for setup, for nobody) is replaced.
        sqlx::query(
            "DELETE FROM one_time_links WHERE expires_at <= $1 \
             OR (purpose = $2 AND COALESCE(user_id, '') = $3)",
        )
        .bind(now.unix_timestamp())
        .bind(purpose)
        .bind(user_id.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO one_time_links (link_hash, purpose, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash.as_str())
        .bind(purpose)
        .bind(user_id)
        .bind(now.unix_timestamp())
        .bind(expires_at.unix_timestamp())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the setup link with `hash` would create the first admin at `now`: it is kept,
    /// not expired, and there is no user yet.
    pub async fn setup_link_open(
        &self,
        hash: &SecretHash,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT link_hash FROM one_time_links WHERE link_hash = $1 AND purpose = 'setup' \
             AND expires_at > $2 AND NOT EXISTS (SELECT 1 FROM users)",
        )
        .bind(hash.as_str())
        .bind(now.unix_timestamp())
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        Ok(found.is_some())
    }

    /// Uses the setup link with `hash` to add `user`, in one transaction: every setup link is
    /// deleted, and the user added only if this link was among them, unexpired, and no user
    /// exists. Two links used at once add one user: the second transaction finds the links
    /// already deleted.
    pub async fn first_admin(
        &self,
        hash: &SecretHash,
        user: &User,
        now: OffsetDateTime,
    ) -> Result<FirstAdmin, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let links: Vec<(String, i64)> = sqlx::query_as(
            "DELETE FROM one_time_links WHERE purpose = 'setup' RETURNING link_hash, expires_at",
        )
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

    /// The user whose reset link has `hash`, if it works at `now`.
    pub async fn reset_link_user(
        &self,
        hash: &SecretHash,
        now: OffsetDateTime,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT user_id FROM one_time_links WHERE link_hash = $1 AND purpose = 'reset' \
             AND expires_at > $2",
        )
        .bind(hash.as_str())
        .bind(now.unix_timestamp())
        .fetch_optional(&mut *self.reader().await?)
        .await?)
    }

    /// Uses the reset link with `hash`: the link is deleted and its user's password set to
    /// `password_hash`, ending what the old password let anyone start (as
    /// [`Store::set_password`]), in one transaction. `None` when the link does not work (then
    /// nothing changes); else the user's id and the revoked grants' ids.
    pub async fn use_reset_link(
        &self,
        hash: &SecretHash,
        password_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<(String, Vec<String>)>, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let user_id: Option<Option<String>> = sqlx::query_scalar(
            "DELETE FROM one_time_links WHERE link_hash = $1 AND purpose = 'reset' \
             AND expires_at > $2 RETURNING user_id",
        )
        .bind(hash.as_str())
        .bind(now.unix_timestamp())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(Some(user_id)) = user_id else {
            tx.rollback().await?;
            return Ok(None);
        };
        let revoked =
            super::users::change_password_in(&mut tx, &user_id, password_hash, now).await?;
        tx.commit().await?;
        Ok(Some((user_id, revoked)))
    }
}
