//! Grants, refresh-token families and revocations.
//!
//! Every state change that must happen once is one guarded statement inside a transaction
//! (`... WHERE consumed_at IS NULL`, `... WHERE rotated_at IS NULL`): on SQLite the writer lock
//! and on PostgreSQL the row lock make a concurrent second attempt wait, then find the row
//! already changed. So two simultaneous redemptions of a code, or refreshes of a token, produce
//! exactly one grant or one rotation.

use time::OffsetDateTime;

use super::AuditEvent;
use super::audit::audit_insert;
use super::write::{GuardedWrite, Insert};
use super::{Store, StoreError, from_unix};

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// Id, also in every access token (`grant_id`).
    pub grant_id: String,
    /// The client.
    pub client_id: String,
    /// The user; `None` for client_credentials.
    pub user_id: Option<String>,
    /// The resource (RFC 8707) its tokens are for.
    pub resource: String,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// End of the refresh family's life.
    pub expires_at: OffsetDateTime,
    /// When it was revoked.
    pub revoked_at: Option<OffsetDateTime>,
}

/// A refresh token as stored (by hash), with its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    /// SHA-256 of the token.
    pub token_hash: String,
    /// 0 for the first token of the family.
    pub generation: i64,
    /// Expiry of this token.
    pub expires_at: OffsetDateTime,
    /// When it was rotated (used).
    pub rotated_at: Option<OffsetDateTime>,
    /// End of the grace window of a rotated token.
    pub replay_until: Option<OffsetDateTime>,
    /// The rotation's response, sealed under a key derived from the token.
    pub replay_response: Option<String>,
    /// Whether a later token of the family has been used: the client then holds the rotation's
    /// response, and this token presented again is a replay, not a retry (RFC 9700 §4.14.2).
    pub successor_used: bool,
    /// Its grant.
    pub grant: GrantRecord,
}

/// A new refresh token to store.
#[derive(Debug, Clone)]
pub struct NewRefresh {
    /// SHA-256 of the token.
    pub token_hash: String,
    /// Generation in the family.
    pub generation: i64,
    /// Expiry.
    pub expires_at: OffsetDateTime,
}

/// Revocations recorded since some time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Revoked grants with their revocation time.
    pub grants: Vec<(String, OffsetDateTime)>,
    /// Revoked access tokens: jti and expiry.
    pub access_tokens: Vec<(String, OffsetDateTime)>,
}

type GrantRow = (
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    i64,
    Option<i64>,
);

fn grant_from(row: GrantRow) -> Result<GrantRecord, StoreError> {
    Ok(GrantRecord {
        grant_id: row.0,
        client_id: row.1,
        user_id: row.2,
        resource: row.3,
        scopes: row.4,
        created_at: from_unix(row.5)?,
        expires_at: from_unix(row.6)?,
        revoked_at: row.7.map(from_unix).transpose()?,
    })
}

const GRANT_COLUMNS: &str = "g.grant_id, g.client_id, g.user_id, g.resource, g.scopes, g.created_at, g.expires_at, g.revoked_at";

impl Store {
    /// A refresh token this store issued and has not seen used: a hint, which the rotation's
    /// guarded write confirms or refutes (`fresh.rs`). Read [`Store::refresh_token`] when there
    /// is none, or when the hint proves stale.
    pub fn fresh_refresh_token(&self, token_hash: &str) -> Option<RefreshRecord> {
        self.fresh.refresh_tokens.get(token_hash)
    }

    /// Creates a grant with no refresh token (client_credentials).
    pub async fn insert_grant(&self, grant: &GrantRecord) -> Result<(), StoreError> {
        grant_insert(grant)
            .execute_on(&mut *self.writer().await?)
            .await
    }

    /// A grant by id.
    pub async fn grant(&self, grant_id: &str) -> Result<Option<GrantRecord>, StoreError> {
        let sql = format!("SELECT {GRANT_COLUMNS} FROM grants g WHERE g.grant_id = $1");
        let row: Option<GrantRow> = sqlx::query_as(&sql)
            .bind(grant_id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.map(grant_from).transpose()
    }

    /// A refresh token (by hash) with its grant.
    pub async fn refresh_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RefreshRecord>, StoreError> {
        type Row = (
            String,
            i64,
            i64,
            Option<i64>,
            Option<i64>,
            Option<String>,
            i64,
            String,
            String,
            Option<String>,
            String,
            String,
            i64,
            i64,
            Option<i64>,
        );
        // A used successor: any later generation of the family already rotated.
        let sql = format!(
            "SELECT r.token_hash, r.generation, r.expires_at, r.rotated_at, r.replay_until, r.replay_response, \
             CASE WHEN r.rotated_at IS NOT NULL AND EXISTS (SELECT 1 FROM refresh_tokens s \
               WHERE s.grant_id = r.grant_id AND s.generation > r.generation AND s.rotated_at IS NOT NULL) \
             THEN 1 ELSE 0 END, {GRANT_COLUMNS} \
             FROM refresh_tokens r JOIN grants g ON g.grant_id = r.grant_id WHERE r.token_hash = $1"
        );
        let row: Option<Row> = sqlx::query_as(&sql)
            .bind(token_hash)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.map(|r| {
            Ok(RefreshRecord {
                token_hash: r.0,
                generation: r.1,
                expires_at: from_unix(r.2)?,
                rotated_at: r.3.map(from_unix).transpose()?,
                replay_until: r.4.map(from_unix).transpose()?,
                replay_response: r.5,
                successor_used: r.6 != 0,
                grant: grant_from((r.7, r.8, r.9, r.10, r.11, r.12, r.13, r.14))?,
            })
        })
        .transpose()
    }

    /// Rotates a refresh token: marks it used (keeping the sealed response for the grace window)
    /// and stores its successor, in one transaction that also writes `event` to the audit log.
    /// `Ok(false)` when it was already rotated (a concurrent request won): nothing is written
    /// then.
    #[allow(clippy::too_many_arguments)]
    pub async fn rotate_refresh(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
        replay_until: OffsetDateTime,
        sealed_response: &str,
        grant: &GrantRecord,
        next: &NewRefresh,
        event: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let params = vec![
            token_hash.into(),
            now.unix_timestamp().into(),
            replay_until.unix_timestamp().into(),
            sealed_response.into(),
        ];
        // The grant's revocation is checked here too, not only by the caller's read: a
        // revocation between that read (or hint) and this write leaves the token unused.
        let rotated = self
            .guarded_write(GuardedWrite {
                update: "UPDATE refresh_tokens SET rotated_at = $2, replay_until = $3, replay_response = $4 \
                         WHERE token_hash = $1 AND rotated_at IS NULL AND NOT EXISTS \
                         (SELECT 1 FROM grants g WHERE g.grant_id = refresh_tokens.grant_id AND g.revoked_at IS NOT NULL)",
                params,
                inserts: vec![refresh_insert(&grant.grant_id, next, now), audit_insert(event)],
            })
            .await;
        self.fresh.refresh_tokens.forget(token_hash);
        if let Ok(true) = &rotated {
            self.keep_refresh_hint(grant, next, now);
        }
        rotated
    }

    /// Revokes a grant (and so its refresh family and access tokens). True when it was live.
    pub async fn revoke_grant(
        &self,
        grant_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE grants SET revoked_at = $2, revoked_reason = $3 WHERE grant_id = $1 AND revoked_at IS NULL",
        )
        .bind(grant_id)
        .bind(now.unix_timestamp())
        .bind(reason)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every grant of `user_id`, newest first, revoked ones included.
    pub async fn grants_of(&self, user_id: &str) -> Result<Vec<GrantRecord>, StoreError> {
        let rows: Vec<GrantRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants g WHERE g.user_id = $1 \
             ORDER BY g.created_at DESC, g.grant_id"
        ))
        .bind(user_id)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.into_iter().map(grant_from).collect()
    }

    /// Revokes every live grant of a user or of a client, and voids their codes not yet
    /// redeemed (each would make a new grant), in one transaction; returns the grants' ids.
    pub async fn revoke_grants_of(
        &self,
        user_id: Option<&str>,
        client_id: Option<&str>,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let ids = end_grants_and_codes(&mut tx, user_id, client_id, reason, now).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Revokes one access token until it would have expired.
    pub async fn revoke_access_token(
        &self,
        jti: &str,
        grant_id: &str,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_access_tokens (jti, grant_id, expires_at, revoked_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(grant_id)
        .bind(expires_at.unix_timestamp())
        .bind(now.unix_timestamp())
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(())
    }

    /// Revocations recorded at or after `since` (for the in-memory view of every instance).
    pub async fn revocations_since(
        &self,
        since: OffsetDateTime,
    ) -> Result<Revocations, StoreError> {
        let grants: Vec<(String, i64)> = sqlx::query_as(
            "SELECT grant_id, revoked_at FROM grants WHERE revoked_at IS NOT NULL AND revoked_at >= $1",
        )
        .bind(since.unix_timestamp())
        .fetch_all(&mut *self.reader().await?)
        .await?;
        let tokens: Vec<(String, i64)> = sqlx::query_as(
            "SELECT jti, expires_at FROM revoked_access_tokens WHERE revoked_at >= $1",
        )
        .bind(since.unix_timestamp())
        .fetch_all(&mut *self.reader().await?)
        .await?;
        Ok(Revocations {
            grants: grants
                .into_iter()
                .map(|(id, at)| Ok((id, from_unix(at)?)))
                .collect::<Result<_, StoreError>>()?,
            access_tokens: tokens
                .into_iter()
                .map(|(jti, exp)| Ok((jti, from_unix(exp)?)))
                .collect::<Result<_, StoreError>>()?,
        })
    }
}

/// Ends a removal begun in `tx`, which deleted `removed` rows: when there was nothing to remove,
/// nothing changes (`None`); else the live grants of `user_id` or `client_id` are revoked and
/// all is committed (their ids).
pub(super) async fn finish_removal(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    removed: u64,
    user_id: Option<&str>,
    client_id: Option<&str>,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Option<Vec<String>>, StoreError> {
    if removed == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let revoked = revoke_live_grants(&mut tx, user_id, client_id, reason, now).await?;
    tx.commit().await?;
    Ok(Some(revoked))
}

/// Voids the codes not yet redeemed of a user or of a client and revokes their live grants, on
/// `conn` (a transaction of the caller's); the revoked grants' ids.
pub(super) async fn end_grants_and_codes(
    conn: &mut sqlx::AnyConnection,
    user_id: Option<&str>,
    client_id: Option<&str>,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>, StoreError> {
    sqlx::query(
        "DELETE FROM authorization_codes WHERE consumed_at IS NULL \
         AND (($1 IS NOT NULL AND user_id = $1) OR ($2 IS NOT NULL AND client_id = $2))",
    )
    .bind(user_id)
    .bind(client_id)
    .execute(&mut *conn)
    .await?;
    revoke_live_grants(conn, user_id, client_id, reason, now).await
}

/// Revokes every live grant of a user or of a client on `conn` (a transaction of the caller's);
/// returns their ids.
pub(super) async fn revoke_live_grants(
    conn: &mut sqlx::AnyConnection,
    user_id: Option<&str>,
    client_id: Option<&str>,
    reason: &str,
    now: OffsetDateTime,
) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE grants SET revoked_at = $3, revoked_reason = $4 \
         WHERE revoked_at IS NULL AND (($1 IS NOT NULL AND user_id = $1) OR ($2 IS NOT NULL AND client_id = $2)) \
         RETURNING grant_id",
    )
    .bind(user_id)
    .bind(client_id)
    .bind(now.unix_timestamp())
    .bind(reason)
    .fetch_all(conn)
    .await?;
    Ok(ids)
}

impl Store {
    /// Keeps a hint of a refresh token just issued, as a read would find it.
    pub(super) fn keep_refresh_hint(
        &self,
        grant: &GrantRecord,
        refresh: &NewRefresh,
        now: OffsetDateTime,
    ) {
        let hint = RefreshRecord {
            token_hash: refresh.token_hash.clone(),
            generation: refresh.generation,
            expires_at: refresh.expires_at,
            rotated_at: None,
            replay_until: None,
            replay_response: None,
            successor_used: false,
            grant: grant.clone(),
        };
        self.fresh
            .refresh_tokens
            .keep(refresh.token_hash.clone(), hint, now);
    }
}

pub(super) fn grant_insert(grant: &GrantRecord) -> Insert {
    Insert {
        table: "grants",
        columns: "grant_id, client_id, user_id, resource, scopes, created_at, expires_at",
        values: vec![
            grant.grant_id.as_str().into(),
            grant.client_id.as_str().into(),
            grant.user_id.as_deref().into(),
            grant.resource.as_str().into(),
            grant.scopes.as_str().into(),
            grant.created_at.unix_timestamp().into(),
            grant.expires_at.unix_timestamp().into(),
        ],
        what: format!("grant {}", grant.grant_id),
    }
}

pub(super) fn refresh_insert(grant_id: &str, refresh: &NewRefresh, now: OffsetDateTime) -> Insert {
    Insert {
        table: "refresh_tokens",
        columns: "token_hash, grant_id, generation, created_at, expires_at",
        values: vec![
            refresh.token_hash.as_str().into(),
            grant_id.into(),
            refresh.generation.into(),
            now.unix_timestamp().into(),
            refresh.expires_at.unix_timestamp().into(),
        ],
        what: "refresh token".to_owned(),
    }
}
