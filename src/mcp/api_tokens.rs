//! API tokens at `/mcp`: a bearer token of the form `gh_pat_...` is checked as an API token and
//! never as anything else (a JWT is never tried as one either). The token is looked up by its
//! id (kept in memory for `revocation_sync_interval`, like a user; a revocation made here
//! drops it at once), its whole hash compared in constant time, then its revocation, expiry
//! and owner. Its scopes are those it was created with, within what its owner's roles allow
//! now. It gets a budget of its own (`pat_<id>`), and audit events name it by that id.

use std::time::Duration;

use time::OffsetDateTime;

use super::users::Users;
use super::verify::{CallerKind, Principal, TokenRejection, TokenVerifier};
use crate::config::Config;
use crate::domain::{PresentedApiToken, SecretHash};
use crate::recent::Recent;
use crate::store::{ApiTokenRecord, Store};

/// The `client_id` of a caller with an API token.
pub const API_TOKEN_CLIENT: &str = "api-token";
/// How stale `last_used_at` may get.
const TOUCH_EVERY: time::Duration = time::Duration::minutes(1);

/// API tokens recently read for MCP requests.
#[derive(Debug)]
pub struct ApiTokens(Recent<ApiTokenRecord>);

/// The budget and revocation key of API token `id`.
pub fn grant_key(id: &str) -> String {
    format!("pat_{id}")
}

impl ApiTokens {
    /// Tokens kept `ttl` after each read.
    pub fn new(ttl: Duration) -> Self {
        Self(Recent::new(ttl))
    }

    /// Drops a token this instance revoked, so the next call reads it again.
    pub fn forget(&self, id: &str) {
        self.0.forget(id);
    }

    /// Checks `token` (of API-token form) and returns who is calling.
    pub async fn verify(
        &self,
        token: &str,
        store: &Store,
        users: &Users,
        config: &Config,
        verifier: &TokenVerifier,
        now: OffsetDateTime,
    ) -> Result<Principal, TokenRejection> {
        let presented = PresentedApiToken::parse(token).ok_or(TokenRejection::BadApiToken)?;
        let record = match self.0.get(&presented.id) {
            Some(record) => record,
            None => {
                let record = store
                    .api_token(&presented.id)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "API token lookup failed");
                        TokenRejection::Unavailable
                    })?
                    .ok_or(TokenRejection::BadApiToken)?;
                self.0.put(&presented.id, &record);
                record
            }
        };
        if !SecretHash::from_stored(record.secret_hash.clone()).verify(&presented.token) {
            return Err(TokenRejection::BadApiToken);
        }
        if record.revoked_at.is_some() {
            return Err(TokenRejection::Revoked);
        }
        if record.expires_at.is_some_and(|t| t <= now) {
            return Err(TokenRejection::Expired);
        }
        let roles = match users.get(store, &record.user_id).await {
            Ok(Some(known)) => known.roles,
            Ok(None) => return Err(TokenRejection::BadApiToken),
            Err(e) => {
                tracing::error!(error = %e, "cannot read an API token's owner");
                return Err(TokenRejection::Unavailable);
            }
        };
        let allowed = config.grantable_by_roles(&roles);
        let scopes: Vec<&str> = record
            .scopes
            .split_whitespace()
            .filter(|s| allowed.iter().any(|a| a == s))
            .collect();
        if record.last_used_at.is_none_or(|t| now - t >= TOUCH_EVERY) {
            let mut touched = record.clone();
            touched.last_used_at = Some(now);
            self.0.put(&record.token_id, &touched);
            let (owned, id) = (store.clone(), record.token_id.clone());
            store.spawn_write(async move {
                if let Err(e) = owned.touch_api_token(&id, now).await {
                    tracing::warn!(error = %e, "could not record an API token's last use");
                }
            });
        }
        Ok(Principal {
            subject: record.user_id,
            kind: CallerKind::User,
            client_id: API_TOKEN_CLIENT.to_owned(),
            scopes: verifier.effective_scopes(&scopes.join(" ")),
            grant_id: grant_key(&record.token_id),
            jti: record.token_id,
            // A token that never expires is given a far end, so nothing adds to `i64::MAX`.
            expires_at: record
                .expires_at
                .unwrap_or(now + time::Duration::days(365 * 100))
                .unix_timestamp(),
            forwarded: None,
        })
    }
}
