//! Identities at identity providers: which user a (provider, issuer, subject) signs in as, and
//! what the provider said about them at the last sign-in. Never looked up by email.

use sqlx::Connection;
use time::OffsetDateTime;

use super::users::{USER_COLUMNS, UserRow};
use super::{Store, StoreError};
use crate::domain::User;

/// Who an identity provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderIdentity {
    /// The provider's id in the configuration.
    pub provider: String,
    /// The issuer of its ID token (`iss`).
    pub issuer: String,
    /// Its subject (`sub`): the stable key at that issuer.
    pub subject: String,
    /// The email it gave, if any.
    pub email: Option<String>,
    /// Whether it said that email is verified.
    pub email_verified: bool,
}

#[derive(sqlx::FromRow)]
struct IdentityRow {
    provider: String,
    issuer: String,
    subject: String,
    email: Option<String>,
    email_verified: i64,
    linked_at: i64,
    last_sign_in_at: Option<i64>,
}

/// An identity as stored, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedIdentity {
    /// The identity.
    pub identity: ProviderIdentity,
    /// When it was linked to its user.
    pub linked_at: OffsetDateTime,
    /// Its last sign-in; `None` when an admin linked it and it has not signed in since.
    pub last_sign_in_at: Option<OffsetDateTime>,
}

/// What [`Store::unlink_identity`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlinked {
    /// The identity no longer signs the user in.
    Removed,
    /// The user has no such identity.
    NotLinked,
    /// It is the user's last way to sign in (no password, no other identity): kept.
    LastWay,
}

impl Store {
    /// Signs `identity` in: its user, with the roles the provider grants now (`roles`) replacing
    /// those it granted before, and what it said about the email recorded. An identity seen
    /// for the first time becomes `new_user` (with its roles), all in one transaction; a taken
    /// user name is a [`StoreError::Conflict`] and nothing is written. The second value tells
    /// whether the user was created.
    pub async fn sign_in_identity(
        &self,
        identity: &ProviderIdentity,
        new_user: &User,
        roles: &[String],
        now: OffsetDateTime,
    ) -> Result<(User, bool), StoreError> {
        let roles_json = serde_json::Value::from(roles.to_vec()).to_string();
        let at = now.unix_timestamp();
        let verified = i64::from(identity.email_verified);
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let known: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM identities WHERE provider = $1 AND issuer = $2 AND subject = $3",
        )
        .bind(&identity.provider)
        .bind(&identity.issuer)
        .bind(&identity.subject)
        .fetch_optional(&mut *tx)
        .await?;
        let created = known.is_none();
        let user_id = match known {
            Some(user_id) => {
                sqlx::query(
                    "UPDATE identities SET email = $4, email_verified = $5, last_sign_in_at = $6 \
                     WHERE provider = $1 AND issuer = $2 AND subject = $3",
                )
                .bind(&identity.provider)
                .bind(&identity.issuer)
                .bind(&identity.subject)
                .bind(identity.email.as_deref())
                .bind(verified)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                user_id
            }
            None => {
                sqlx::query(
                    "INSERT INTO users (user_id, username, password_hash, roles, created_at, \
                     password_changed_at) VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&new_user.id)
                .bind(new_user.username.as_str())
                .bind(&new_user.password_hash)
                .bind("[]")
                .bind(new_user.created_at.unix_timestamp())
                .bind(new_user.password_changed_at.unix_timestamp())
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_write(e, &format!("user {}", new_user.username)))?;
                sqlx::query(
                    "INSERT INTO identities (provider, issuer, subject, user_id, email, \
                     email_verified, linked_at, last_sign_in_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                )
                .bind(&identity.provider)
                .bind(&identity.issuer)
                .bind(&identity.subject)
                .bind(&new_user.id)
                .bind(identity.email.as_deref())
                .bind(verified)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::from_write(e, "identity"))?;
                new_user.id.clone()
            }
        };
        sqlx::query("UPDATE users SET provider_roles = $2 WHERE user_id = $1")
            .bind(&user_id)
            .bind(&roles_json)
            .execute(&mut *tx)
            .await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1");
        let row: UserRow = sqlx::query_as(&sql)
            .bind(&user_id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((User::try_from(row)?, created))
    }

    /// Links `identity` to `user_id` (an admin's act): from then on it signs that user in. An
    /// identity linked to anyone already is a [`StoreError::Conflict`].
    pub async fn link_identity(
        &self,
        user_id: &str,
        identity: &ProviderIdentity,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO identities (provider, issuer, subject, user_id, email, email_verified, \
             linked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&identity.provider)
        .bind(&identity.issuer)
        .bind(&identity.subject)
        .bind(user_id)
        .bind(identity.email.as_deref())
        .bind(i64::from(identity.email_verified))
        .bind(now.unix_timestamp())
        .execute(&mut *self.writer().await?)
        .await
        .map_err(|e| StoreError::from_write(e, "identity"))?;
        Ok(())
    }

    /// Unlinks an identity from `user_id`, unless it is their last way to sign in. The user's
    /// row is locked first, so two unlinks at once cannot both take what the other leaves.
    pub async fn unlink_identity(
        &self,
        user_id: &str,
        provider: &str,
        issuer: &str,
        subject: &str,
    ) -> Result<Unlinked, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        // A no-op update: it takes the row's write lock (on SQLite, the file's).
        let locked = sqlx::query("UPDATE users SET user_id = user_id WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if locked.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Unlinked::NotLinked);
        }
        let password: String =
            sqlx::query_scalar("SELECT password_hash FROM users WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await?;
        let linked: i64 = sqlx::query_scalar("SELECT count(*) FROM identities WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        let this: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM identities \
             WHERE provider = $1 AND issuer = $2 AND subject = $3 AND user_id = $4",
        )
        .bind(provider)
        .bind(issuer)
        .bind(subject)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match this {
            None => Unlinked::NotLinked,
            Some(_) if password.is_empty() && linked <= 1 => Unlinked::LastWay,
            Some(_) => {
                sqlx::query(
                    "DELETE FROM identities \
                     WHERE provider = $1 AND issuer = $2 AND subject = $3 AND user_id = $4",
                )
                .bind(provider)
                .bind(issuer)
                .bind(subject)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
                Unlinked::Removed
            }
        };
        if outcome == Unlinked::Removed {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(outcome)
    }

    /// Every user's providers, one entry per linked account: one query for a page that lists
    /// everyone (not one per user).
    pub async fn providers_by_user(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<String>>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT user_id, provider FROM identities ORDER BY provider, issuer, subject",
        )
        .fetch_all(&mut *self.reader().await?)
        .await?;
        let mut by_user: std::collections::HashMap<String, Vec<String>> =
            std::collections::HashMap::new();
        for (user_id, provider) in rows {
            by_user.entry(user_id).or_default().push(provider);
        }
        Ok(by_user)
    }

    /// The identities linked to `user_id`, by provider.
    pub async fn identities_of(&self, user_id: &str) -> Result<Vec<LinkedIdentity>, StoreError> {
        let rows: Vec<IdentityRow> = sqlx::query_as(
            "SELECT provider, issuer, subject, email, email_verified, linked_at, last_sign_in_at \
             FROM identities WHERE user_id = $1 ORDER BY provider, issuer, subject",
        )
        .bind(user_id)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(LinkedIdentity {
                    identity: ProviderIdentity {
                        provider: row.provider,
                        issuer: row.issuer,
                        subject: row.subject,
                        email: row.email,
                        email_verified: row.email_verified != 0,
                    },
                    linked_at: super::from_unix(row.linked_at)?,
                    last_sign_in_at: row.last_sign_in_at.map(super::from_unix).transpose()?,
                })
            })
            .collect()
    }
}
