//! MCP sessions (`Mcp-Session-Id`) in stateful mode (`mcp.session_mode = "stateful"`).
//!
//! A session here is a record, not a connection: its id, its owner and its last use, a few
//! hundred bytes. Every request, in a session or not, is served by the same stateless MCP
//! service (the tool list and schemas are the process's, made once); the built-in tools keep
//! nothing per session and push nothing, so a session only needs to be recognised. `GET /mcp` is
//! 405 (no server-initiated stream, which the transport allows), `DELETE` ends the session.
//!
//! - An `initialize` request opens one: the id (128 random bits) goes on the response (Streamable
//!   HTTP transport, "Session Management"). A request without an id is still served: the
//!   2026-07-28 protocol has no sessions, and nothing here needs one.
//! - A session belongs to the subject whose token opened it. It keeps working when its owner's
//!   client refreshes its token; another subject's token with that id is answered as an unknown
//!   session (404), never served. Authentication is still checked on every request: ownership
//!   only ever refuses.
//! - At most `mcp.max_sessions_per_user` live sessions per subject: a new one ends the oldest
//!   (clients often drop a session and start another without `DELETE`).
//! - At most `mcp.max_sessions` in this instance: past it a new session is refused (503 with
//!   `Retry-After`) and the live ones keep working.
//! - A session with no request for `mcp.session_idle_timeout` is over; a sweep forgets such
//!   sessions and gives their memory back.
//!
//! In stateless mode (the default) no session is opened, and every id is unknown.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::domain::random_token;

/// Random bytes in a session id (128 bits: "globally unique and cryptographically secure").
const SESSION_ID_BYTES: usize = 16;

#[derive(Debug)]
struct Entry {
    owner: Arc<str>,
    seen: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    /// Session id -> owner and last use.
    sessions: HashMap<Arc<str>, Entry>,
    /// Owner -> their sessions, oldest first.
    by_owner: HashMap<Arc<str>, VecDeque<Arc<str>>>,
    /// When ended sessions were last forgotten.
    swept: Option<Instant>,
}

/// How often a full instance looks for ended sessions to make room: a walk over every session,
/// which a flood of openings at the bound must not repeat on each request.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Inner {
    fn remove(&mut self, session: &str) -> Option<Entry> {
        let entry = self.sessions.remove(session)?;
        if let Some(list) = self.by_owner.get_mut(&entry.owner) {
            list.retain(|s| &**s != session);
            if list.is_empty() {
                self.by_owner.remove(&entry.owner);
            }
        }
        Some(entry)
    }

    /// Forgets every session idle longer than `idle` at `now`, and hands back the memory the
    /// maps no longer need.
    fn expire(&mut self, idle: Duration, now: Instant) {
        self.swept = Some(now);
        self.sessions
            .retain(|_, e| now.duration_since(e.seen) < idle);
        let sessions = &self.sessions;
        self.by_owner.retain(|_, list| {
            list.retain(|id| sessions.contains_key(id));
            !list.is_empty()
        });
        if self.sessions.capacity() > 2 * self.sessions.len() + 64 {
            self.sessions.shrink_to_fit();
            self.by_owner.shrink_to_fit();
        }
    }
}

/// A session just opened.
#[derive(Debug)]
pub struct Opened {
    /// Its id, for the `Mcp-Session-Id` response header.
    pub id: String,
    /// The owner's sessions it ended (over the per-user bound), oldest first.
    pub evicted: usize,
}

/// Why no session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotOpened {
    /// `mcp.max_sessions` live sessions already.
    Full,
    /// The system's random source failed.
    NoRandomness,
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

    /// Forgets ended sessions every quarter of the idle timeout (at least every minute) while
    /// `sessions` lives, so that their memory comes back even when no request arrives. Needs a
    /// Tokio runtime; without one, sessions are still forgotten when they are next looked at.
    pub fn sweep_while_alive(sessions: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let period = (sessions.idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let weak: Weak<Self> = Arc::downgrade(sessions);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(sessions) = weak.upgrade() else {
                    return;
                };
                sessions.sweep();
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the sessions that have ended.
    pub fn sweep(&self) {
        self.lock().expire(self.idle, Instant::now());
    }

    /// The owner of `session`, refreshing its last use; `None` when it is unknown or over.
    pub fn owner(&self, session: &str) -> Option<Arc<str>> {
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

    /// Whether a new session may open now (a cheap refusal before a request is served; [`open`]
    /// decides).
    ///
    /// [`open`]: Self::open
    pub fn has_room(&self) -> bool {
        self.room(&mut self.lock())
    }

    /// Room under the total bound, once ended sessions are forgotten (looked for at most once
    /// every [`FULL_SWEEP_EVERY`] while full, besides the periodic sweep).
    fn room(&self, inner: &mut Inner) -> bool {
        let now = Instant::now();
        if inner.sessions.len() >= self.total
            && inner
                .swept
                .is_none_or(|at| now.duration_since(at) >= FULL_SWEEP_EVERY)
        {
            inner.expire(self.idle, now);
        }
        inner.sessions.len() < self.total
    }

    /// Opens a session for `subject`, ending the subject's oldest beyond the per-subject bound;
    /// the total bound is checked under the same lock, so concurrent openings cannot pass it.
    pub fn open(&self, subject: &str) -> Result<Opened, NotOpened> {
        let id = random_token(SESSION_ID_BYTES).map_err(|_| NotOpened::NoRandomness)?;
        let mut inner = self.lock();
        if !self.room(&mut inner) {
            return Err(NotOpened::Full);
        }
        let evicted = self.bind(&mut inner, &id, subject);
        Ok(Opened { id, evicted })
    }

    /// Records that `subject` holds `session`; returns how many of the subject's sessions beyond
    /// the per-subject bound were ended to make room. Amortised constant time below the bound.
    fn bind(&self, inner: &mut Inner, session: &str, subject: &str) -> usize {
        let now = Instant::now();
        let idle = self.idle;
        let owner: Arc<str> = match inner.by_owner.get_key_value(subject) {
            Some((owner, _)) => owner.clone(),
            None => subject.into(),
        };
        let session: Arc<str> = session.into();
        inner.sessions.insert(
            session.clone(),
            Entry {
                owner: owner.clone(),
                seen: now,
            },
        );
        let sessions = &mut inner.sessions;
        let list = inner.by_owner.entry(owner).or_default();
        list.push_back(session.clone());
        if list.len() <= self.per_owner {
            return 0;
        }
        // At the bound: the subject's sessions that ended by themselves are not counted against
        // it; then the oldest live ones make room.
        list.retain(|id| {
            let live = *id == session
                || sessions
                    .get(id)
                    .is_some_and(|e| now.duration_since(e.seen) < idle);
            if !live {
                sessions.remove(id);
            }
            live
        });
        let mut evicted = 0;
        while list.len() > self.per_owner {
            if let Some(oldest) = list.pop_front() {
                sessions.remove(&oldest);
                evicted += 1;
            }
        }
        evicted
    }

    /// Ends a session (its client deleted it). Whether it was live.
    pub fn end(&self, session: &str) -> bool {
        self.lock().remove(session).is_some()
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
        let a1 = owners.open("alice").expect("open");
        assert_eq!(a1.evicted, 0);
        assert_eq!(owners.open("alice").expect("open").evicted, 0);
        let a3 = owners.open("alice").expect("open");
        assert_eq!(a3.evicted, 1);
        assert_eq!(owners.owner(&a1.id), None, "the oldest ended");
        assert_eq!(owners.owner(&a3.id).as_deref(), Some("alice"));
        assert!(owners.has_room());
        let b1 = owners.open("bob").expect("open");
        assert_eq!(owners.len(), 3);
        assert!(!owners.has_room());
        assert_eq!(owners.open("carol").err(), Some(NotOpened::Full));
        assert_eq!(owners.len(), 3, "a refused opening holds nothing");
        assert!(owners.end(&b1.id));
        assert!(!owners.end(&b1.id), "ended once");
        assert!(owners.has_room());
    }

    #[test]
    fn ids_are_long_random_and_distinct() {
        let owners = SessionOwners::new(Duration::from_secs(300), 1000, 1000);
        let ids: std::collections::HashSet<String> = (0..200)
            .map(|_| owners.open("alice").expect("open").id)
            .collect();
        assert_eq!(ids.len(), 200);
        assert!(ids.iter().all(|id| id.len() >= 22));
        // Visible ASCII only (the transport's rule for the header value).
        assert!(
            ids.iter()
                .flat_map(|id| id.bytes())
                .all(|b| (0x21..=0x7e).contains(&b))
        );
    }

    #[test]
    fn idle_sessions_no_longer_count_and_a_sweep_forgets_them() {
        let owners = SessionOwners::new(Duration::ZERO, 1, 1);
        let a1 = owners.open("alice").expect("open");
        // Idle for at least zero seconds: over, so there is room, and no eviction is needed.
        assert!(owners.has_room());
        let a2 = owners.open("alice").expect("open");
        assert_eq!(a2.evicted, 0);
        assert_eq!(owners.owner(&a1.id), None);
        owners.sweep();
        assert!(owners.is_empty());
        let inner = owners.lock();
        assert!(inner.by_owner.is_empty());
    }

    #[test]
    fn at_the_bound_an_ended_session_makes_room_before_a_live_one() {
        let owners = SessionOwners::new(Duration::from_secs(300), 3, 100);
        let ids: Vec<String> = (0..3)
            .map(|_| owners.open("alice").expect("open").id)
            .collect();
        {
            // The middle one has been idle past the timeout.
            let mut inner = owners.lock();
            let entry = inner.sessions.get_mut(ids[1].as_str()).expect("held");
            entry.seen = Instant::now()
                .checked_sub(Duration::from_secs(301))
                .expect("uptime past five minutes");
        }
        assert_eq!(owners.open("alice").expect("open").evicted, 0);
        assert_eq!(owners.owner(&ids[0]).as_deref(), Some("alice"));
        assert_eq!(owners.owner(&ids[1]), None);
        assert_eq!(owners.open("alice").expect("open").evicted, 1);
        assert_eq!(owners.owner(&ids[0]), None, "now the oldest live one ends");
        assert_eq!(owners.len(), 3);
    }

    #[test]
    fn a_full_instance_looks_for_ended_sessions_at_most_once_a_second() {
        let owners = SessionOwners::new(Duration::from_secs(300), 10, 2);
        let first = owners.open("alice").expect("open");
        owners.open("bob").expect("open");
        assert!(!owners.has_room(), "full, and nothing has ended");
        let long_ago = Instant::now()
            .checked_sub(Duration::from_secs(301))
            .expect("uptime past five minutes");
        owners
            .lock()
            .sessions
            .get_mut(first.id.as_str())
            .expect("held")
            .seen = long_ago;
        assert!(
            !owners.has_room(),
            "looked a moment ago: not again within the second"
        );
        owners.lock().swept = Instant::now().checked_sub(FULL_SWEEP_EVERY);
        assert!(owners.has_room(), "a second later the ended one makes room");
    }

    #[test]
    fn a_sweep_keeps_live_sessions_and_returns_the_maps_memory() {
        let owners = SessionOwners::new(Duration::from_secs(300), 10_000, 10_000);
        let live = owners.open("bob").expect("open");
        for i in 0..5_000 {
            owners.open(&format!("user{i}")).expect("open");
        }
        {
            // Age everyone but bob's session past the idle timeout.
            let mut inner = owners.lock();
            let old = Instant::now()
                .checked_sub(Duration::from_secs(301))
                .expect("uptime past five minutes");
            for (id, entry) in inner.sessions.iter_mut() {
                if **id != *live.id {
                    entry.seen = old;
                }
            }
        }
        owners.sweep();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners.owner(&live.id).as_deref(), Some("bob"));
        let inner = owners.lock();
        assert!(
            inner.sessions.capacity() < 1_000,
            "{}",
            inner.sessions.capacity()
        );
        assert_eq!(inner.by_owner.len(), 1);
    }
}
