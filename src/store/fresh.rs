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

use super::codes::CodeRecord;
use super::grants::RefreshRecord;

/// Most hints of each kind kept (about 600 bytes each with their key, so at most 10 MB a kind).
/// Past it, expired ones go; if that is not enough, all go: a missing hint only costs a read.
/// Every code flow leaves a refresh token's hint that lives until the token is used or expires;
/// at 50,000 those alone held 30 MB of a server doing code flows (`BENCHMARKS.md`).
const MAX_HINTS: usize = 16_384;

/// Hints of one kind, by the hash of their secret.
#[derive(Debug)]
pub(super) struct Hints<T> {
    map: Mutex<HashMap<String, T>>,
    /// When a hint is of no more use.
    expires: fn(&T) -> OffsetDateTime,
}

impl<T: Clone> Hints<T> {
    fn new(expires: fn(&T) -> OffsetDateTime) -> Self {
        Self {
            map: Mutex::default(),
            expires,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, T>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn get(&self, hash: &str) -> Option<T> {
        self.map().get(hash).cloned()
    }

    /// Keeps `value` under `hash`, making room when full.
    pub(super) fn keep(&self, hash: String, value: T, now: OffsetDateTime) {
        let mut map = self.map();
        if map.len() >= MAX_HINTS {
            map.retain(|_, v| (self.expires)(v) > now);
            if map.len() >= MAX_HINTS {
                map.clear();
            }
        }
        map.insert(hash, value);
    }

    pub(super) fn forget(&self, hash: &str) {
        self.map().remove(hash);
    }
}

/// The hints of a store.
#[derive(Debug)]
pub(super) struct Fresh {
    pub codes: Hints<CodeRecord>,
    pub refresh_tokens: Hints<RefreshRecord>,
}

impl Default for Fresh {
    fn default() -> Self {
        Self {
            codes: Hints::new(|c| c.expires_at),
            refresh_tokens: Hints::new(|t| t.expires_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full, the expired hints go first; if none has expired, all go (a hint only spares a read).
    #[test]
    fn a_full_set_drops_the_expired_first_then_everything() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1);
        let hints: Hints<OffsetDateTime> = Hints::new(|expires| *expires);
        for i in 0..MAX_HINTS {
            let expires = if i % 2 == 0 {
                now
            } else {
                now + time::Duration::HOUR
            };
            hints.keep(i.to_string(), expires, now);
        }
        hints.keep("new".into(), now + time::Duration::HOUR, now);
        assert_eq!(hints.map().len(), MAX_HINTS / 2 + 1);
        assert_eq!(hints.get("0"), None, "expired: dropped");
        assert_eq!(hints.get("1"), Some(now + time::Duration::HOUR));
        hints.forget("1");
        assert_eq!(hints.get("1"), None);

        let held = hints.map().len();
        for i in held..MAX_HINTS {
            hints.keep(format!("live-{i}"), now + time::Duration::HOUR, now);
        }
        assert_eq!(hints.map().len(), MAX_HINTS);
        hints.keep("last".into(), now + time::Duration::HOUR, now);
        assert_eq!(hints.map().len(), 1, "none expired: all dropped");
        assert!(hints.get("last").is_some());
    }
}
