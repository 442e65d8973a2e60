//! Who owns each MCP session (`Mcp-Session-Id`): the subject whose token created it. A session
//! keeps working when its owner's client refreshes its token (every real client keeps its session
//! across a refresh); another subject's token with that session id is answered as an unknown
//! session (404), never served. Authentication is still checked on every request: ownership only
//! ever refuses.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sessions idle this long are forgotten (rmcp ends them sooner).
const IDLE: Duration = Duration::from_secs(24 * 3600);
/// Most sessions remembered.
const CAPACITY: usize = 100_000;

/// Session id -> (owner subject, last use).
#[derive(Debug, Default)]
pub struct SessionOwners(Mutex<HashMap<String, (String, Instant)>>);

impl SessionOwners {
    /// The owner of `session`, refreshing its last use.
    pub fn owner(&self, session: &str) -> Option<String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get_mut(session).map(|(owner, seen)| {
            *seen = Instant::now();
            owner.clone()
        })
    }

    /// Records that `subject` created `session`.
    pub fn bind(&self, session: &str, subject: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.retain(|_, (_, seen)| seen.elapsed() < IDLE);
        }
        map.entry(session.to_owned())
            .or_insert_with(|| (subject.to_owned(), Instant::now()));
    }

    /// Forgets a session (deleted by its client).
    pub fn forget(&self, session: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session);
    }
}
