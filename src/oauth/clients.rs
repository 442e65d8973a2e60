//! Turning a `client_id` into a [`Client`], whichever way the client is known: a metadata
//! document URL is fetched (when enabled), anything else is looked up among registered clients.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use super::client_metadata::ClientMetadataError;
use crate::audit::{self, AuditEvent};
use crate::domain::Client;
use crate::state::AppState;
use crate::store::StoreError;

/// Why a `client_id` does not name a usable client.
#[derive(Debug, thiserror::Error)]
pub enum ClientLookupError {
    /// Not registered (perhaps expired or removed: clients re-register on this).
    #[error("no client is registered with id {0:?}")]
    Unknown(String),
    /// Its metadata document was refused.
    #[error(transparent)]
    Metadata(#[from] ClientMetadataError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This address asked for too many new metadata documents.
    #[error("too many new applications from this address; wait {} s", .0.as_secs())]
    RateLimited(std::time::Duration),
}

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

    fn get(&self, id: &str) -> Option<Client> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(client, _)| client.clone())
    }

    fn put(&self, client: &Client) {
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

/// Whether a lookup may use the [`ClientCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Read the database (anything that may start something new for the client).
    Database,
    /// The cache may answer (code exchange and refresh, see [`ClientCache`]).
    Cached,
}

/// The client `client_id` names, read from the database. `ip` is the requester's address: fetching a document not yet
/// cached spends from its budget.
pub async fn resolve_client(
    state: &AppState,
    client_id: &str,
    ip: Option<std::net::IpAddr>,
) -> Result<Client, ClientLookupError> {
    lookup_client(state, client_id, ip, Lookup::Database).await
}

/// The client `client_id` names, from the cache when `lookup` allows.
pub async fn lookup_client(
    state: &AppState,
    client_id: &str,
    ip: Option<std::net::IpAddr>,
    lookup: Lookup,
) -> Result<Client, ClientLookupError> {
    let fetcher = &state.client_metadata;
    if state.config.client_metadata.enabled && fetcher.is_metadata_url(client_id) {
        if let (false, Some(ip)) = (fetcher.is_cached(client_id), ip) {
            state
                .limits
                .metadata_fetch(ip)
                .map_err(ClientLookupError::RateLimited)?;
        }
        return match fetcher.resolve(client_id, state.clock.now()).await {
            Ok(client) => Ok(client),
            Err(err) => {
                let mut event = AuditEvent::new(
                    "client_metadata.refused",
                    state.clock.now(),
                    json!({ "reason": err.to_string() }),
                )
                .failed();
                event.client_id = Some(client_id.to_owned());
                audit::record(&state.store, event).await?;
                Err(err.into())
            }
        };
    }
    if lookup == Lookup::Cached {
        if let Some(client) = state.clients.get(client_id) {
            return Ok(client);
        }
    }
    let client = state
        .store
        .client(client_id)
        .await?
        .ok_or_else(|| ClientLookupError::Unknown(client_id.to_owned()))?;
    state.clients.put(&client);
    Ok(client)
}
