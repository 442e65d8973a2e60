//! What has been revoked, in memory, so the resource side can check every request in
//! microseconds: revoked grants (which kill their access tokens) and revoked access tokens.
//!
//! Updated at once by every revocation made in this process, and refreshed from the database
//! every `revocation_sync_interval` for revocations made by other instances or the CLI: that
//! interval is the bound on how long a revocation elsewhere takes to be seen here. Entries are
//! dropped once no token they could affect can still be valid.

use std::collections::HashMap;
use std::sync::RwLock;

use time::{Duration, OffsetDateTime};

use crate::store::{Store, StoreError};

/// Clock skew allowed between instances when reading revocations "since" a time.
const SKEW: Duration = Duration::seconds(60);

#[derive(Debug, Default)]
struct Inner {
    /// grant id -> when it was revoked.
    grants: HashMap<String, OffsetDateTime>,
    /// jti -> when the token would have expired.
    tokens: HashMap<String, OffsetDateTime>,
    /// When the database was last read.
    synced_at: Option<OffsetDateTime>,
}

/// The revocation view of one instance.
#[derive(Debug, Default)]
pub struct RevocationView(RwLock<Inner>);

impl RevocationView {
    /// True when the token `jti` of grant `grant_id` may not be used.
    pub fn is_revoked(&self, grant_id: &str, jti: &str) -> bool {
        let inner = self.0.read().unwrap_or_else(|p| p.into_inner());
        inner.grants.contains_key(grant_id) || inner.tokens.contains_key(jti)
    }

    /// Records a grant revoked by this process.
    pub fn revoke_grant(&self, grant_id: &str, at: OffsetDateTime) {
        let mut inner = self.0.write().unwrap_or_else(|p| p.into_inner());
        inner.grants.insert(grant_id.to_owned(), at);
    }

    /// Records an access token revoked by this process.
    pub fn revoke_token(&self, jti: &str, expires_at: OffsetDateTime) {
        let mut inner = self.0.write().unwrap_or_else(|p| p.into_inner());
        inner.tokens.insert(jti.to_owned(), expires_at);
    }

    /// Reads revocations from the database: everything still relevant on the first call, then
    /// what was added since the last call (with a margin for clock skew between instances).
    /// Drops entries that can no longer matter: grants revoked longer ago than the longest
    /// access-token lifetime, and tokens past their expiry, each after the `leeway` the resource
    /// side still accepts an expired token for (`mcp.clock_leeway`).
    pub async fn sync(
        &self,
        store: &Store,
        now: OffsetDateTime,
        access_token_ttl: Duration,
        leeway: Duration,
    ) -> Result<(), StoreError> {
        let horizon = now - access_token_ttl - leeway - SKEW;
        let since = {
            let inner = self.0.read().unwrap_or_else(|p| p.into_inner());
            inner.synced_at.map_or(horizon, |t| (t - SKEW).max(horizon))
        };
        let found = store.revocations_since(since).await?;
        let mut inner = self.0.write().unwrap_or_else(|p| p.into_inner());
        for (grant, at) in found.grants {
            inner.grants.insert(grant, at);
        }
        for (jti, exp) in found.access_tokens {
            inner.tokens.insert(jti, exp);
        }
        inner.grants.retain(|_, at| *at >= horizon);
        inner.tokens.retain(|_, exp| *exp > now - leeway - SKEW);
        inner.synced_at = Some(now);
        Ok(())
    }

    /// How many entries are held (grants, tokens).
    pub fn len(&self) -> (usize, usize) {
        let inner = self.0.read().unwrap_or_else(|p| p.into_inner());
        (inner.grants.len(), inner.tokens.len())
    }
}
