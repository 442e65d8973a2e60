//! Registered clients recently read from the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::Client;

/// Registered clients as read from the database, kept for a short while: every code exchange
/// and refresh names its client, and reading it each time was a database round trip per
/// request. Only those two grants use it ([`Lookup::Cached`]), and neither can create a grant
/// for a removed client: removing a client revokes its grants and deletes its codes first, and
/// a refresh of a revoked grant, or an exchange of a deleted code, is refused whatever the cache
/// holds. Everything that could start something new for a client (`/authorize`, the sign-in
/// and consent pages, client credentials, revocation, introspection) reads the database. A
/// client removed by this instance is forgotten at once; one removed by another instance or by
/// the CLI is dropped within `ttl` (`revocation_sync_interval`). Unknown ids are not kept, so a
/// client registered elsewhere is found at once.
#[derive(Debug)]
pub struct ClientCache {
    entries: Mutex<HashMap<String, (Client, Instant)>>,
    ttl: Duration,
}

/// Most clients kept; beyond, expired ones are dropped, then all.
const CLIENT_CACHE_CAPACITY: usize = 10_000;

impl ClientCache {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The client `id` names, if read within `ttl`.
    pub fn get(&self, id: &str) -> Option<Client> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(client, _)| client.clone())
    }

    /// Keeps `client` for `ttl`.
    pub fn put(&self, client: &Client) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CLIENT_CACHE_CAPACITY {
                let ttl = self.ttl;
                entries.retain(|_, (_, at)| at.elapsed() < ttl);
                if entries.len() >= CLIENT_CACHE_CAPACITY {
                    entries.clear();
                }
            }
            entries.insert(client.id.clone(), (client.clone(), Instant::now()));
        }
    }

    /// Drops a client this instance removed.
    pub fn forget(&self, id: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(id);
        }
    }
}
