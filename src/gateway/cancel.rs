//! Cancellation sent as a message of its own (`notifications/cancelled`, MCP "Cancellation"):
//! each POST is served on its own, so the call it names is looked up here, among the upstream
//! calls in flight. A call is named by the grant it runs under, the MCP session (if any) and
//! the JSON-RPC request id, so a client can only ever stop its own calls; a name that matches
//! several calls (two connections of one client reusing an id) stops none of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rmcp::model::RequestId;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Which call a cancellation is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallKey {
    grant: String,
    session: Option<String>,
    /// The request id (`1` and `"1"` are different ids).
    request: RequestId,
}

impl CallKey {
    /// The call `request` of `grant` in `session`, as the service that runs it knows it.
    pub fn new(grant: &str, session: Option<&str>, request: RequestId) -> Self {
        Self {
            grant: grant.to_owned(),
            session: session.map(str::to_owned),
            request,
        }
    }

    /// The call a `notifications/cancelled` names by `requestId`, read as the MCP service reads
    /// a request's id (`41.0` is `41`); `None` for what cannot be an id (JSON-RPC 2.0 §4: a
    /// string or a number).
    pub fn named(grant: &str, session: Option<&str>, request: &serde_json::Value) -> Option<Self> {
        let id = RequestId::deserialize(request).ok()?;
        Some(Self::new(grant, session, id))
    }
}

/// The upstream calls in flight, by [`CallKey`]. Its size is the number of calls running.
#[derive(Debug, Default)]
pub struct InFlight {
    calls: Mutex<HashMap<CallKey, Vec<(u64, CancellationToken)>>>,
    next: AtomicU64,
}

/// A call's place in [`InFlight`], given up when dropped.
#[derive(Debug)]
pub struct Registered<'a> {
    in_flight: &'a InFlight,
    key: CallKey,
    serial: u64,
}

impl InFlight {
    /// Registers the call `key`; the token is cancelled when the client cancels it.
    pub fn register(&self, key: CallKey) -> (Registered<'_>, CancellationToken) {
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.lock()
            .entry(key.clone())
            .or_default()
            .push((serial, token.clone()));
        let registered = Registered {
            in_flight: self,
            key,
            serial,
        };
        (registered, token)
    }

    /// Cancels the call `key`, if exactly one such call is running; whether one was.
    pub fn cancel(&self, key: &CallKey) -> bool {
        match self.lock().get(key).map(Vec::as_slice) {
            Some([(_, token)]) => {
                token.cancel();
                true
            }
            Some(several) if several.len() > 1 => {
                tracing::info!(
                    calls = several.len(),
                    "a cancellation names several calls in flight; none is stopped"
                );
                false
            }
            _ => false,
        }
    }

    /// Calls in flight.
    pub fn running(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallKey, Vec<(u64, CancellationToken)>>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut calls = self.in_flight.lock();
        if let Some(list) = calls.get_mut(&self.key) {
            list.retain(|(serial, _)| *serial != self.serial);
            if list.is_empty() {
                calls.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(grant: &str, session: Option<&str>, id: serde_json::Value) -> CallKey {
        CallKey::named(grant, session, &id).unwrap()
    }

    #[test]
    fn only_the_named_call_of_the_same_grant_and_session_is_cancelled() {
        let calls = InFlight::default();
        let (_a, a) = calls.register(key("g1", None, json!(7)));
        let (_b, b) = calls.register(key("g2", None, json!(7)));
        let (_c, c) = calls.register(key("g1", Some("s"), json!(7)));
        assert!(
            !calls.cancel(&key("g1", None, json!("7"))),
            "a string id is not a number id"
        );
        assert!(calls.cancel(&key("g1", None, json!(7))));
        assert!(a.is_cancelled());
        assert!(!b.is_cancelled(), "another grant's call with the same id");
        assert!(!c.is_cancelled(), "the same grant's call in a session");
    }

    #[test]
    fn an_ambiguous_name_stops_nothing_and_finished_calls_are_forgotten() {
        let calls = InFlight::default();
        let (first, one) = calls.register(key("g", None, json!(1)));
        let (second, two) = calls.register(key("g", None, json!(1)));
        assert!(!calls.cancel(&key("g", None, json!(1))));
        assert!(!one.is_cancelled() && !two.is_cancelled());
        drop(first);
        assert!(calls.cancel(&key("g", None, json!(1))));
        assert!(two.is_cancelled());
        drop(second);
        assert_eq!(calls.running(), 0);
        assert!(!calls.cancel(&key("g", None, json!(1))));
        assert!(CallKey::named("g", None, &json!(null)).is_none());
        assert!(CallKey::named("g", None, &json!({ "id": 1 })).is_none());
        // The id as the service reads it: 41.0 is the request 41.
        assert_eq!(
            CallKey::named("g", None, &json!(41.0)),
            CallKey::named("g", None, &json!(41))
        );
        // The key the service registers under is the key a cancellation names.
        assert_eq!(
            CallKey::named("g", Some("s"), &json!("abc")),
            Some(CallKey::new(
                "g",
                Some("s"),
                RequestId::String("abc".into())
            ))
        );
    }
}
