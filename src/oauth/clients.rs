//! Turning a `client_id` into a [`Client`], whichever way the client is known: a metadata
//! document URL is fetched (when enabled), anything else is looked up among registered clients.

use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::clients::metadata::ClientMetadataError;
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

/// Whether a lookup may use the [`ClientCache`](crate::clients::ClientCache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Read the database (client authentication of anything that may start something new for
    /// the client).
    Database,
    /// The cache may answer (authorize, code exchange and refresh, see
    /// [`ClientCache`](crate::clients::ClientCache)).
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

/// Whether `client_id` is read from a Client ID Metadata Document (else from the clients table).
pub fn is_metadata_document(state: &AppState, client_id: &str) -> bool {
    state.config.client_metadata.enabled && state.client_metadata.is_metadata_url(client_id)
}

/// The client `client_id` names, from the cache when `lookup` allows.
pub async fn lookup_client(
    state: &AppState,
    client_id: &str,
    ip: Option<std::net::IpAddr>,
    lookup: Lookup,
) -> Result<Client, ClientLookupError> {
    let fetcher = &state.client_metadata;
    if is_metadata_document(state, client_id) {
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
    state.clients.put(&client.id, &client);
    Ok(client)
}
