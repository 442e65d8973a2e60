//! Records recently read from the database, kept for a short while ([`Recent`]): registered
//! clients for the token endpoint, users for the resource side. What may be cached, and why it
//! is safe, is said where each is used.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most records kept; beyond, expired ones are dropped, then all.
const CAPACITY: usize = 10_000;

/// Records by id, each kept `ttl` after it was read. Unknown ids are never kept, so a record
/// created elsewhere is found at once.
#[derive(Debug)]
pub struct Recent<V> {
    entries: Mutex<HashMap<String, (V, Instant)>>,
    ttl: Duration,
}

impl<V: Clone> Recent<V> {
    /// A cache whose entries live `ttl` (zero: nothing is kept).
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (V, Instant)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The record `id` names, if read within `ttl`.
    pub fn get(&self, id: &str) -> Option<V> {
        self.entries()
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(value, _)| value.clone())
    }

    /// Keeps `value` under `id` for `ttl`.
    pub fn put(&self, id: &str, value: &V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries();
        if entries.len() >= CAPACITY {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(id.to_owned(), (value.clone(), Instant::now()));
    }

    /// Drops a record this instance changed or removed.
    pub fn forget(&self, id: &str) {
        self.entries().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_live_their_ttl_and_are_forgotten_on_request() {
        let cache = Recent::new(Duration::from_millis(50));
        cache.put("a", &1);
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("b"), None);
        cache.forget("a");
        assert_eq!(cache.get("a"), None);
        cache.put("a", &2);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(cache.get("a"), None, "expired");
        let off = Recent::new(Duration::ZERO);
        off.put("a", &1);
        assert_eq!(off.get("a"), None);
    }
}
