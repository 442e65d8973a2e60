//! Users, sign-in throttling, remembered consent and server secrets.

use time::OffsetDateTime;

use sqlx::Connection;

use super::{Store, StoreError, from_unix};
use crate::domain::{User, Username};

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    user_id: String,
    username: String,
    password_hash: String,
    roles: String,
    created_at: i64,
    password_changed_at: i64,
    signed_out_at: Option<i64>,
    provider_roles: String,
    locked_at: Option<i64>,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(row: UserRow) -> Result<Self, StoreError> {
        let roles = |json: &str, what: &str| {
            serde_json::from_str::<Vec<String>>(json)
                .map_err(|e| StoreError::Corrupt(format!("user {}: {what}: {e}", row.user_id)))
        };
        // The roles an admin granted, then those an identity provider granted at the last
        // sign-in through it (kept apart in the table: a sign-in replaces only the latter).
        let mut all = roles(&row.roles, "roles")?;
        for role in roles(&row.provider_roles, "provider_roles")? {
            if !all.contains(&role) {
                all.push(role);
            }
        }
        Ok(Self {
            username: Username::parse(&row.username)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            roles: all,
            created_at: from_unix(row.created_at)?,
            password_changed_at: from_unix(row.password_changed_at)?,
            signed_out_at: row.signed_out_at.map(from_unix).transpose()?,
            locked_at: row.locked_at.map(from_unix).transpose()?,
            id: row.user_id,
            password_hash: row.password_hash,
        })
    }
}

pub(super) const USER_COLUMNS: &str = "user_id, username, password_hash, roles, created_at, \
     password_changed_at, signed_out_at, provider_roles, locked_at";

/// A user with what they allowed one client for one resource, read together.
#[derive(sqlx::FromRow)]
struct UserConsentRow {
    #[sqlx(flatten)]
    user: UserRow,
    consent_scopes: Option<String>,
    consent_redirect_uri: Option<String>,
}

/// What a person allowed a client, remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// Scopes, space-separated.
    pub scopes: String,
    /// The redirect URI it was given for (`None` for consents from before that was kept).
    pub redirect_uri: Option<String>,
}

/// How long a sign-in lockout lasts, and how long failed sign-ins are remembered (and kept
/// before pruning).
pub const SIGN_IN_FAILURE_WINDOW: time::Duration = time::Duration::minutes(15);

/// Failed sign-ins recorded for one key (an account name or an IP address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleState {
    /// Consecutive failures.
    pub failures: i64,
    /// When the last one happened.
    pub last_failure_at: OffsetDateTime,
    /// Locked until then, if locked.
    pub locked_until: Option<OffsetDateTime>,
}

/// Adds `user` on `conn` (a transaction's, or the writer). A taken name is a
/// [`StoreError::Conflict`].
pub(super) async fn insert_user_in(
    conn: &mut sqlx::AnyConnection,
    user: &User,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO users (user_id, username, password_hash, roles, created_at, password_changed_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&user.id)
    .bind(user.username.as_str())
    .bind(&user.password_hash)
    .bind(serde_json::Value::from(user.roles.clone()).to_string())
    .bind(user.created_at.unix_timestamp())
    .bind(user.password_changed_at.unix_timestamp())
    .execute(conn)
    .await
    .map_err(|e| StoreError::from_write(e, &format!("user {}", user.username)))?;
    Ok(())
}

/// Sets `user_id`'s password hash in `tx` and ends what the old password let anyone start:
/// browser sessions from before (by `password_changed_at`), codes not yet redeemed, every live
/// grant with its tokens. The revoked grants' ids.
pub(super) async fn change_password_in(
    conn: &mut sqlx::AnyConnection,
    user_id: &str,
    hash: &str,
    at: OffsetDateTime,
) -> Result<Vec<String>, StoreError> {
    sqlx::query("UPDATE users SET password_hash = $2, password_changed_at = $3 WHERE user_id = $1")
        .bind(user_id)
        .bind(hash)
        .bind(at.unix_timestamp())
        .execute(&mut *conn)
        .await?;
    super::grants::end_grants_and_codes(conn, Some(user_id), None, "password changed", at).await
}

/// A user's roles by where they come from: those an admin granted, those a provider granted.
pub type RoleSources = (Vec<String>, Vec<String>);

/// A row of `(user_id, roles, provider_roles)` read: the id, and the two role lists.
fn role_sources_of(
    (user_id, granted, provided): &(String, String, String),
) -> Result<(String, RoleSources), StoreError> {
    let parse = |json: &str| {
        serde_json::from_str::<Vec<String>>(json)
            .map_err(|e| StoreError::Corrupt(format!("user {user_id}: roles: {e}")))
    };
    Ok((user_id.clone(), (parse(granted)?, parse(provided)?)))
}

impl Store {
    /// Adds a user. A taken name is a [`StoreError::Conflict`].
    pub async fn insert_user(&self, user: &User) -> Result<(), StoreError> {
        insert_user_in(&mut *self.writer().await?, user).await
    }

    /// A user by name.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1");
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(username)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.map(User::try_from).transpose()
    }

    /// A user by id.
    pub async fn user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = $1");
        let row: Option<UserRow> = sqlx::query_as(&sql)
            .bind(user_id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.map(User::try_from).transpose()
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users ORDER BY username");
        let rows: Vec<UserRow> = sqlx::query_as(&sql)
            .fetch_all(&mut *self.reader().await?)
            .await?;
        rows.into_iter().map(User::try_from).collect()
    }

    /// Removes a user and revokes their live grants, in one transaction and in that order: a
    /// code of theirs redeemed at the same moment either finds its row gone (codes and consents
    /// go with the user) or has already made its grant, which the revocation then sees. (Revoked
    /// first and removed after, a grant made in between would have outlived its user.) `None`
    /// when there is no such user; else the revoked grants' ids.
    pub async fn remove_user(
        &self,
        user_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let done = sqlx::query("DELETE FROM users WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let removed = done.rows_affected();
        super::grants::finish_removal(tx, removed, Some(user_id), None, reason, now).await
    }

    /// Sets a new password hash and ends what the old password let anyone start: browser
    /// sessions from before (by `password_changed_at`), codes not yet redeemed, and every live
    /// grant with its tokens; remembered consent stays, so the person, signed in again, is not
    /// asked again. One transaction. `None` when there is no such user; else the revoked grants'
    /// ids.
    pub async fn set_password(
        &self,
        username: &str,
        hash: &str,
        at: OffsetDateTime,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let user_id: Option<String> =
            sqlx::query_scalar("SELECT user_id FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(user_id) = user_id else {
            tx.rollback().await?;
            return Ok(None);
        };
        let revoked = change_password_in(&mut tx, &user_id, hash, at).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    /// Locks `user_id` (an admin's doing): nobody signs in as them until they are unlocked, and
    /// everything they had going ends as with [`Store::sign_out_everywhere`]. One transaction.
    /// `None` when there is no such user; else the revoked grants' ids.
    pub async fn lock_user(
        &self,
        user_id: &str,
        at: OffsetDateTime,
    ) -> Result<Option<Vec<String>>, StoreError> {
        self.end_all_of(user_id, "locked_at = $2, signed_out_at = $2", "locked", at)
            .await
    }

    /// Unlocks `user_id`; false when there is no such user.
    pub async fn unlock_user(&self, user_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE users SET locked_at = NULL WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The roles of `user_id` by where they come from: those an admin granted, and those an
    /// identity provider granted at the last sign-in through it. `None` when there is no such
    /// user.
    pub async fn role_sources(&self, user_id: &str) -> Result<Option<RoleSources>, StoreError> {
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT user_id, roles, provider_roles FROM users WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&mut *self.reader().await?)
                .await?;
        row.map(|r| role_sources_of(&r).map(|(_, sources)| sources))
            .transpose()
    }

    /// [`Store::role_sources`] of every user, by id, in one read.
    pub async fn all_role_sources(
        &self,
    ) -> Result<std::collections::HashMap<String, RoleSources>, StoreError> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT user_id, roles, provider_roles FROM users")
                .fetch_all(&mut *self.reader().await?)
                .await?;
        rows.iter().map(role_sources_of).collect()
    }

    /// Sets the roles an admin grants `user_id` (those an identity provider grants are kept
    /// apart); false when there is no such user.
    pub async fn set_roles(&self, user_id: &str, roles: &[String]) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE users SET roles = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(serde_json::Value::from(roles.to_vec()).to_string())
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends everything a user has going, as `gatehouse tokens revoke --user` does: every browser
    /// session (they sign in again), codes not yet redeemed, every live grant with its tokens,
    /// and remembered consent (each application asks again). One transaction; the revoked
    /// grants' ids.
    pub async fn sign_out_everywhere(
        &self,
        user_id: &str,
        reason: &str,
        at: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let ended = self
            .end_all_of(user_id, "signed_out_at = $2", reason, at)
            .await?;
        Ok(ended.unwrap_or_default())
    }

    /// In one transaction: sets `set` (an assignment of the fixed statements above, `$2` the
    /// time) on `user_id`, forgets their consents and ends their grants and codes for `reason`.
    /// `None` when there is no such user (nothing changed).
    async fn end_all_of(
        &self,
        user_id: &str,
        set: &'static str,
        reason: &str,
        at: OffsetDateTime,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let changed = sqlx::query(&format!("UPDATE users SET {set} WHERE user_id = $1"))
            .bind(user_id)
            .bind(at.unix_timestamp())
            .execute(&mut *tx)
            .await?;
        if changed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        sqlx::query("DELETE FROM consents WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let revoked =
            super::grants::end_grants_and_codes(&mut tx, Some(user_id), None, reason, at).await?;
        tx.commit().await?;
        Ok(Some(revoked))
    }

    /// The failed-sign-in record of `key`.
    pub async fn throttle(&self, key: &str) -> Result<Option<ThrottleState>, StoreError> {
        let row: Option<(i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT failures, last_failure_at, locked_until FROM login_throttle WHERE throttle_key = $1",
        )
        .bind(key)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        row.map(|(failures, last, locked)| {
            Ok(ThrottleState {
                failures,
                last_failure_at: from_unix(last)?,
                locked_until: locked.map(from_unix).transpose()?,
            })
        })
        .transpose()
    }

    /// Records the new failure count of `key` (one statement, so concurrent failures all count).
    pub async fn record_failure(
        &self,
        key: &str,
        at: OffsetDateTime,
        reset_before: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        let failures: i64 = sqlx::query_scalar(
            "INSERT INTO login_throttle (throttle_key, failures, last_failure_at, locked_until) VALUES ($1, 1, $2, NULL) \
             ON CONFLICT (throttle_key) DO UPDATE SET \
               failures = CASE WHEN login_throttle.last_failure_at < $3 THEN 1 ELSE login_throttle.failures + 1 END, \
               last_failure_at = $2 \
             RETURNING failures",
        )
        .bind(key)
        .bind(at.unix_timestamp())
        .bind(reset_before.unix_timestamp())
        .fetch_one(&mut *self.writer().await?)
        .await?;
        Ok(failures)
    }

    /// Locks `key` until `until`.
    pub async fn lock(&self, key: &str, until: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE login_throttle SET locked_until = $2 WHERE throttle_key = $1")
            .bind(key)
            .bind(until.unix_timestamp())
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(())
    }

    /// Forgets the failures of `key` (after a successful sign-in).
    pub async fn clear_throttle(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_throttle WHERE throttle_key = $1")
            .bind(key)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(())
    }

    /// A user and what they allowed `client_id` for `resource`, in one read: every
    /// authorization of a signed-in person needs both. `None` when there is no such user.
    pub async fn user_and_consent(
        &self,
        user_id: &str,
        client_id: &str,
        resource: &str,
    ) -> Result<Option<(User, Option<Consent>)>, StoreError> {
        let row: Option<UserConsentRow> = sqlx::query_as(
            "SELECT u.user_id, u.username, u.password_hash, u.roles, u.created_at, \
             u.password_changed_at, u.signed_out_at, u.provider_roles, u.locked_at, \
             c.scopes AS consent_scopes, c.redirect_uri AS consent_redirect_uri \
             FROM users u LEFT JOIN consents c \
             ON c.user_id = u.user_id AND c.client_id = $2 AND c.resource = $3 \
             WHERE u.user_id = $1",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(resource)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        let Some(row) = row else { return Ok(None) };
        // `scopes` is never NULL in a stored consent: NULL here means there is none.
        let consent = row.consent_scopes.map(|scopes| Consent {
            scopes,
            redirect_uri: row.consent_redirect_uri,
        });
        Ok(Some((User::try_from(row.user)?, consent)))
    }

    /// Remembers the scopes a user allowed (replacing what was remembered), and the redirect
    /// URI they allowed them for.
    pub async fn save_consent(
        &self,
        user_id: &str,
        client_id: &str,
        resource: &str,
        scopes: &str,
        redirect_uri: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO consents (user_id, client_id, resource, scopes, granted_at, redirect_uri) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id, client_id, resource) DO UPDATE \
             SET scopes = excluded.scopes, granted_at = excluded.granted_at, redirect_uri = excluded.redirect_uri",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(resource)
        .bind(scopes)
        .bind(at.unix_timestamp())
        .bind(redirect_uri)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    /// A server-wide secret if one was created under `name`; never creates one.
    pub async fn existing_server_secret(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *self.reader().await?)
                .await?,
        )
    }

    /// Deletes a server secret (one moved elsewhere).
    pub async fn delete_server_secret(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM server_secrets WHERE name = $1")
            .bind(name)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(())
    }

    /// A server-wide secret, created with `make` by whichever instance asks first.
    pub async fn server_secret(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
        at: OffsetDateTime,
    ) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(make())
            .bind(at.unix_timestamp())
            .execute(&mut *self.writer().await?)
            .await?;
        self.existing_server_secret(name)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("server secret {name} vanished")))
    }
}
