//! MCP sessions (`Mcp-Session-Id`) in stateful mode (`mcp.session_mode = "stateful"`): who owns
//! each, and the bounds on how many there are.
//!
//! - A session belongs to the subject whose token created it. It keeps working when its owner's
//!   client refreshes its token; another subject's token with that session id is answered as an
//!   unknown session (404), never served. Authentication is still checked on every request:
//!   ownership only ever refuses.
//! - At most `mcp.max_sessions_per_user` live sessions per subject: a new one ends the oldest
//!   (clients often drop a session and start another without `DELETE`).
//! - At most `mcp.max_sessions` in this instance: past it a new session is refused (503 with
//!   `Retry-After`) and the live ones keep working.
//! - A session with no request for `mcp.session_idle_timeout` is over: rmcp ends it, and it no
//!   longer counts here.
//!
//! In stateless mode (the default) there are no sessions, and none of this is used.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    owner: String,
    seen: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// Session id -> owner and last use.
    sessions: HashMap<String, Entry>,
    /// Owner -> their sessions, oldest first.
    by_owner: HashMap<String, VecDeque<String>>,
}

impl Inner {
    fn remove(&mut self, session: &str) -> Option<Entry> {
        let entry = self.sessions.remove(session)?;
        if let Some(list) = self.by_owner.get_mut(&entry.owner) {
            list.retain(|s| s != session);
            if list.is_empty() {
                self.by_owner.remove(&entry.owner);
            }
        }
        Some(entry)
    }

    /// Forgets every session idle longer than `idle` at `now`.
    fn expire(&mut self, idle: Duration, now: Instant) {
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, e)| now.duration_since(e.seen) >= idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }
}

/// The live sessions of this instance and their owners.
#[derive(Debug)]
pub struct SessionOwners {
    inner: Mutex<Inner>,
    idle: Duration,
    per_owner: usize,
    total: usize,
}

impl SessionOwners {
    /// Bounds: `idle` without a request ends a session; at most `per_owner` per subject and
    /// `total` in all.
    pub fn new(idle: Duration, per_owner: usize, total: usize) -> Self {
        Self {
            inner: Mutex::default(),
            idle,
            per_owner: per_owner.max(1),
            total: total.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The owner of `session`, refreshing its last use; `None` when it is unknown or over.
    pub fn owner(&self, session: &str) -> Option<String> {
        let now = Instant::now();
        let mut inner = self.lock();
        let entry = inner.sessions.get_mut(session)?;
        if now.duration_since(entry.seen) >= self.idle {
            inner.remove(session);
            return None;
        }
        entry.seen = now;
        Some(entry.owner.clone())
    }

    /// Whether a new session may open now.
    pub fn has_room(&self) -> bool {
        let mut inner = self.lock();
        if inner.sessions.len() >= self.total {
            inner.expire(self.idle, Instant::now());
        }
        inner.sessions.len() < self.total
    }

    /// Records that `subject` created `session`. Returns the subject's sessions beyond the
    /// per-subject bound, oldest first, now forgotten here: the caller ends them.
    pub fn bind(&self, session: &str, subject: &str) -> Vec<String> {
        let now = Instant::now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        // The subject's sessions that ended by themselves are not counted against it.
        let idle = self.idle;
        let stale: Vec<String> = inner
            .by_owner
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|id| {
                inner
                    .sessions
                    .get(*id)
                    .is_none_or(|e| now.duration_since(e.seen) >= idle)
            })
            .cloned()
            .collect();
        for id in stale {
            inner.remove(&id);
        }
        if inner.sessions.contains_key(session) {
            return Vec::new();
        }
        inner.sessions.insert(
            session.to_owned(),
            Entry {
                owner: subject.to_owned(),
                seen: now,
            },
        );
        let list = inner.by_owner.entry(subject.to_owned()).or_default();
        list.push_back(session.to_owned());
        let mut evicted = Vec::new();
        while list.len() > self.per_owner {
            if let Some(oldest) = list.pop_front() {
                evicted.push(oldest);
            }
        }
        for id in &evicted {
            inner.sessions.remove(id);
        }
        evicted
    }

    /// Forgets a session (deleted by its client, or ended).
    pub fn forget(&self, session: &str) {
        self.lock().remove(session);
    }

    /// Live sessions held.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_owner_keeps_the_newest_sessions_and_all_share_the_total() {
        let owners = SessionOwners::new(Duration::from_secs(300), 2, 3);
        assert!(owners.bind("a1", "alice").is_empty());
        assert!(owners.bind("a2", "alice").is_empty());
        assert_eq!(owners.bind("a3", "alice"), ["a1"]);
        assert_eq!(owners.owner("a1"), None);
        assert_eq!(owners.owner("a3").as_deref(), Some("alice"));
        assert!(owners.has_room());
        assert!(owners.bind("b1", "bob").is_empty());
        assert_eq!(owners.len(), 3);
        assert!(!owners.has_room());
        owners.forget("b1");
        assert!(owners.has_room());
    }

    #[test]
    fn idle_sessions_no_longer_count() {
        let owners = SessionOwners::new(Duration::ZERO, 1, 1);
        assert!(owners.bind("a1", "alice").is_empty());
        // Idle for at least zero seconds: over, so there is room, and no eviction is needed.
        assert!(owners.has_room());
        assert!(owners.bind("a2", "alice").is_empty());
        assert_eq!(owners.owner("a2"), None);
    }
}
