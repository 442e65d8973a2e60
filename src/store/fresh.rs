//! Codes and refresh tokens this store issued and has not seen used: hints that spare the token
//! endpoint its read of the database.
//!
//! A hint is never the last word. The token endpoint may check a request against one, mint the
//! tokens and seal the response, but what makes the exchange or rotation happen is the guarded
//! write (`... WHERE consumed_at IS NULL`, `... WHERE rotated_at IS NULL AND` the grant is not
//! revoked): everything about a code or a refresh token that can change after it is issued (used,
//! revoked, removed with its client or user, used by another instance) is checked there, in the
//! same transaction. When that write finds the row changed, the endpoint reads the database and
//! decides from what it says, as it does when there is no hint (after a restart, or for a token
//! another instance issued). What a hint holds and the endpoint checks without the database
//! never changes once issued: the client, the redirect URI, the PKCE challenge, the resource, the
//! scopes, the expiry times.
//!
//! Measured with `cargo bench --bench token_endpoint` (`BENCHMARKS.md`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use time::OffsetDateTime;

use super::grants::RefreshRecord;
use super::users::CodeRecord;

/// Most hints of each kind kept (about 400 bytes each). Past it, expired ones go; if that is not
/// enough, all go: a missing hint only costs a read.
const MAX_HINTS: usize = 50_000;

#[derive(Debug, Default)]
pub(super) struct Fresh {
    codes: Mutex<HashMap<String, CodeRecord>>,
    refresh_tokens: Mutex<HashMap<String, RefreshRecord>>,
}

fn keep<T>(
    map: &Mutex<HashMap<String, T>>,
    key: String,
    value: T,
    expires: impl Fn(&T) -> OffsetDateTime,
    now: OffsetDateTime,
) {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= MAX_HINTS {
        map.retain(|_, v| expires(v) > now);
        if map.len() >= MAX_HINTS {
            map.clear();
        }
    }
    map.insert(key, value);
}

impl Fresh {
    pub(super) fn code(&self, hash: &str) -> Option<CodeRecord> {
        let map = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(hash).cloned()
    }

    pub(super) fn keep_code(&self, code: &CodeRecord) {
        keep(
            &self.codes,
            code.code_hash.clone(),
            code.clone(),
            |c| c.expires_at,
            code.created_at,
        );
    }

    pub(super) fn forget_code(&self, hash: &str) {
        let mut map = self.codes.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(hash);
    }

    pub(super) fn refresh_token(&self, hash: &str) -> Option<RefreshRecord> {
        let map = self
            .refresh_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(hash).cloned()
    }

    pub(super) fn keep_refresh_token(&self, token: RefreshRecord, now: OffsetDateTime) {
        keep(
            &self.refresh_tokens,
            token.token_hash.clone(),
            token,
            |t| t.expires_at,
            now,
        );
    }

    pub(super) fn forget_refresh_token(&self, hash: &str) {
        let mut map = self
            .refresh_tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(hash);
    }
}
