//! Authorization codes: issued (by hash, with the client's last use and the audit event, in one
//! transaction), read for the exchange, and redeemed once (RFC 6749 §4.1.2: a code is used once;
//! the redemption is one guarded `UPDATE ... WHERE consumed_at IS NULL` with the grant it
//! creates).

use time::OffsetDateTime;

use super::AuditEvent;
use super::audit::audit_insert;
use super::grants::{GrantRecord, NewRefresh, grant_insert, refresh_insert};
use super::write::{GuardedWrite, Insert};
use super::{Store, StoreError, from_unix};

/// An issued authorization code, as stored (by hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRecord {
    /// SHA-256 of the code.
    pub code_hash: String,
    /// The grant everything issued from this code belongs to.
    pub grant_id: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The user who consented.
    pub user_id: String,
    /// The redirect URI of the authorization request, as sent.
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// The resource (RFC 8707) the tokens will be for.
    pub resource: String,
    /// Granted scopes, space-separated.
    pub scopes: String,
    /// Issue time.
    pub created_at: OffsetDateTime,
    /// Expiry.
    pub expires_at: OffsetDateTime,
}

/// A code already redeemed: the grant it created, which a second redemption revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedCode {
    /// The grant the code created.
    pub grant_id: String,
}

/// An authorization code as the token endpoint finds it: one read tells both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeState {
    /// Not redeemed yet.
    Fresh(CodeRecord),
    /// Already redeemed.
    Consumed(ConsumedCode),
}

#[derive(sqlx::FromRow)]
struct CodeRow {
    code_hash: String,
    grant_id: String,
    client_id: String,
    user_id: String,
    redirect_uri: String,
    code_challenge: String,
    resource: String,
    scopes: String,
    created_at: i64,
    expires_at: i64,
    consumed_at: Option<i64>,
}

fn code_insert(code: &CodeRecord) -> Insert {
    Insert {
        table: "authorization_codes",
        columns: "code_hash, grant_id, client_id, user_id, redirect_uri, code_challenge, \
                  resource, scopes, created_at, expires_at",
        values: vec![
            code.code_hash.as_str().into(),
            code.grant_id.as_str().into(),
            code.client_id.as_str().into(),
            code.user_id.as_str().into(),
            code.redirect_uri.as_str().into(),
            code.code_challenge.as_str().into(),
            code.resource.as_str().into(),
            code.scopes.as_str().into(),
            code.created_at.unix_timestamp().into(),
            code.expires_at.unix_timestamp().into(),
        ],
        what: "authorization code".to_owned(),
    }
}

impl Store {
    /// Issues a code: stores it (by hash) with `event`, all or nothing, in one commit. For a
    /// registered client (`registered`) the same write marks the client used (one that completed
    /// a sign-in no longer expires as unused) and is guarded by its row: when the client was
    /// removed meanwhile, nothing is written and the answer is `false`, so a client read from a
    /// cache can never get a code after its removal. A client known by its metadata document
    /// has no row: the code and event are appended. On SQLite either goes into the committer's
    /// next batch.
    pub async fn issue_code(
        &self,
        code: &CodeRecord,
        event: &AuditEvent,
        registered: bool,
    ) -> Result<bool, StoreError> {
        let rows = vec![code_insert(code), audit_insert(event)];
        let issued = if registered {
            self.guarded_write(GuardedWrite {
                update: "UPDATE clients SET last_used_at = $2 WHERE client_id = $1",
                params: vec![
                    code.client_id.as_str().into(),
                    code.created_at.unix_timestamp().into(),
                ],
                inserts: rows,
            })
            .await?
        } else {
            self.append_all(rows).await?;
            true
        };
        if issued {
            self.fresh
                .codes
                .keep(code.code_hash.clone(), code.clone(), code.created_at);
        }
        Ok(issued)
    }

    /// A code by hash, fresh or consumed, in one read.
    pub async fn code_for_exchange(
        &self,
        code_hash: &str,
    ) -> Result<Option<CodeState>, StoreError> {
        let row: Option<CodeRow> = sqlx::query_as(
            "SELECT code_hash, grant_id, client_id, user_id, redirect_uri, code_challenge, \
             resource, scopes, created_at, expires_at, consumed_at \
             FROM authorization_codes WHERE code_hash = $1",
        )
        .bind(code_hash)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        let Some(row) = row else { return Ok(None) };
        if row.consumed_at.is_some() {
            return Ok(Some(CodeState::Consumed(ConsumedCode {
                grant_id: row.grant_id,
            })));
        }
        Ok(Some(CodeState::Fresh(CodeRecord {
            code_hash: row.code_hash,
            grant_id: row.grant_id,
            client_id: row.client_id,
            user_id: row.user_id,
            redirect_uri: row.redirect_uri,
            code_challenge: row.code_challenge,
            resource: row.resource,
            scopes: row.scopes,
            created_at: from_unix(row.created_at)?,
            expires_at: from_unix(row.expires_at)?,
        })))
    }

    /// Consumes the code and creates its grant (and first refresh token) in one transaction,
    /// which also writes `event` to the audit log. `Ok(false)` when the code was already
    /// consumed (by a concurrent or earlier request): nothing is written then.
    pub async fn redeem_code(
        &self,
        code_hash: &str,
        now: OffsetDateTime,
        grant: &GrantRecord,
        refresh: Option<&NewRefresh>,
        event: &AuditEvent,
    ) -> Result<bool, StoreError> {
        let mut inserts = vec![grant_insert(grant)];
        if let Some(refresh) = refresh {
            inserts.push(refresh_insert(&grant.grant_id, refresh, now));
        }
        inserts.push(audit_insert(event));
        let redeemed = self
            .guarded_write(GuardedWrite {
                update: "UPDATE authorization_codes SET consumed_at = $2 \
                         WHERE code_hash = $1 AND consumed_at IS NULL",
                params: vec![code_hash.into(), now.unix_timestamp().into()],
                inserts,
            })
            .await;
        self.fresh.codes.forget(code_hash);
        if let (Ok(true), Some(refresh)) = (&redeemed, refresh) {
            self.keep_refresh_hint(grant, refresh, now);
        }
        redeemed
    }

    /// A code this store issued and has not seen redeemed: a hint, which the redemption's
    /// guarded write confirms or refutes (`fresh.rs`). Read [`Store::code_for_exchange`] when
    /// there is none, or when the hint proves stale.
    pub fn fresh_code(&self, code_hash: &str) -> Option<CodeRecord> {
        self.fresh.codes.get(code_hash)
    }
}
