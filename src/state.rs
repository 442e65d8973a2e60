//! The one application state shared by every handler.

use std::sync::Arc;

use crate::clock::Clock;
use crate::config::Config;
use crate::keys::{self, KeyError, KeyStore};
use crate::limits::Limits;
use crate::oauth::client_metadata::ClientMetadataFetcher;
use crate::store::{Store, StoreError};

/// Everything a request needs: settings, database, keys and the clock.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Database.
    pub store: Store,
    /// Signing and verification keys.
    pub keys: Arc<KeyStore>,
    /// Current time.
    pub clock: Arc<dyn Clock>,
    /// Rate limiters of this instance.
    pub limits: Arc<Limits>,
    /// Fetches and caches Client ID Metadata Documents.
    pub client_metadata: Arc<ClientMetadataFetcher>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error("cannot open database {url}: {source}")]
    Database {
        /// Redacted URL.
        url: String,
        /// Cause.
        source: StoreError,
    },
    /// The signing keys could not be loaded or created.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The HTTP client for metadata documents could not be built.
    #[error("cannot set up the HTTP client for client metadata documents: {0}")]
    HttpClient(String),
}

impl AppState {
    /// Opens the database (applying migrations) and loads or creates the signing keys.
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        let store = Store::open(&config.database)
            .await
            .map_err(|source| StartError::Database {
                url: config.database.redacted(),
                source,
            })?;
        let keyset = keys::load_or_create(
            &store,
            &config.keys_dir,
            config.signing_algorithm,
            clock.now(),
        )
        .await?;
        let client_metadata = ClientMetadataFetcher::new(&config)
            .map_err(|e| StartError::HttpClient(e.to_string()))?;
        Ok(Self {
            client_metadata: Arc::new(client_metadata),
            limits: Arc::new(Limits::new(&config)),
            config: Arc::new(config),
            store,
            keys: Arc::new(KeyStore::new(keyset)),
            clock,
        })
    }
}
