//! The one application state shared by every handler.

use std::sync::Arc;

use crate::clients::ClientCache;
use crate::clients::metadata::ClientMetadataFetcher;
use crate::clock::Clock;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::keys::{self, KeyError, KeyStore};
use crate::limits::Limits;
use crate::mcp::users::Users;
use crate::password::PasswordPool;
use crate::store::{Store, StoreError};
use crate::tokens::RevocationView;

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
    /// Rate limiters (in memory, and the per-token limit in the database on PostgreSQL).
    pub limits: Arc<Limits>,
    /// Fetches and caches Client ID Metadata Documents.
    pub client_metadata: Arc<ClientMetadataFetcher>,
    /// Signs the session cookie; shared by every instance through the database.
    pub session_key: SessionKey,
    /// Revoked grants and access tokens, checked on every resource request.
    pub revocations: Arc<RevocationView>,
    /// Registered clients recently read from the database.
    pub clients: Arc<ClientCache>,
    /// The threads that check passwords, behind a bounded queue.
    pub passwords: PasswordPool,
    /// The upstream MCP servers of gateway mode.
    pub gateway: Arc<Gateway>,
    /// Users recently read for MCP requests.
    pub users: Arc<Users>,
    /// API tokens recently read for MCP requests.
    pub api_tokens: Arc<crate::mcp::api_tokens::ApiTokens>,
    /// The identity providers people may sign in with.
    pub identity: Arc<crate::identity::IdentityProviders>,
    /// The Prometheus metrics of this server.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// A stop has begun: `/health` answers 503 "draining" so a load balancer sends elsewhere.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The session-cookie signing key (64 bytes). `Debug` never shows it.
#[derive(Clone)]
pub struct SessionKey(pub tower_sessions::cookie::Key);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
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
    /// The HTTP client for metadata documents or upstreams could not be built.
    #[error("cannot set up an HTTP client: {0}")]
    HttpClient(String),
    /// The password-checking threads could not be started.
    #[error("cannot start the password-checking threads: {0}")]
    Threads(std::io::Error),
}

impl AppState {
    /// One round of key maintenance: what the rotation schedule says is due, then the key set
    /// the database describes (which also picks up what the CLI or another instance changed).
    /// One read of the keys when nothing is due. Returns the steps this instance made.
    pub async fn maintain_keys(&self) -> Result<Vec<keys::Transition>, KeyError> {
        let policy = keys::RotationPolicy::from_config(&self.config);
        let mut records = self.store.signing_keys().await?;
        let done = keys::lifecycle::maintain(
            &self.store,
            self.keys.vault(),
            self.config.signing_algorithm,
            &policy,
            &records,
            self.clock.now(),
        )
        .await?;
        if !done.is_empty() {
            records = self.store.signing_keys().await?;
        }
        self.keys.install(records)?;
        Ok(done)
    }

    /// Deletes the codes, grants, sealed responses and failed sign-ins that can no longer matter,
    /// and audit events past their retention (run by the periodic clean-up).
    pub async fn prune(&self) -> Result<crate::store::Pruned, StoreError> {
        let keep = crate::store::Keep {
            access_token_ttl: self.config.access_token_ttl,
            leeway: self.config.leeway(),
            audit_events: self.config.audit_retention,
            sign_in_failures: crate::store::SIGN_IN_FAILURE_WINDOW,
        };
        self.store.prune(self.clock.now(), keep).await
    }

    /// Reads revocations made by other instances or the CLI into this instance's view.
    pub async fn sync_revocations(&self) -> Result<(), StoreError> {
        self.revocations
            .sync(
                &self.store,
                self.clock.now(),
                self.config.access_token_ttl,
                self.config.leeway(),
            )
            .await
    }

    /// Opens the database (applying migrations) and loads or creates the signing keys.
    pub async fn start(config: Config, clock: Arc<dyn Clock>) -> Result<Self, StartError> {
        let store = Store::open(&config.database)
            .await
            .map_err(|source| StartError::Database {
                url: config.database.redacted(),
                source,
            })?;
        let vault = keys::Vault::open(
            &store,
            &config.keys_dir,
            config.keys_passphrase.as_ref().map(|p| p.0.as_str()),
            clock.now(),
        )
        .await?;
        let keyset =
            keys::load_or_create(&store, &vault, config.signing_algorithm, clock.now()).await?;
        let session_key = keys::session_cookie_key(&store, &vault, clock.now()).await?;
        let session_key = tower_sessions::cookie::Key::try_from(session_key.as_slice())
            .map(SessionKey)
            .map_err(|e| KeyError::Invalid("session_cookie_key".into(), e.to_string()))?;
        let client_metadata = ClientMetadataFetcher::new(&config)
            .map_err(|e| StartError::HttpClient(e.to_string()))?;
        let revocations = RevocationView::default();
        revocations
            .sync(
                &store,
                clock.now(),
                config.access_token_ttl,
                config.leeway(),
            )
            .await
            .map_err(|source| StartError::Database {
                url: config.database.redacted(),
                source,
            })?;
        let passwords = PasswordPool::start(
            config.password_hashing.threads(),
            config.password_hashing.queue,
        )
        .map_err(StartError::Threads)?;
        let keys = Arc::new(KeyStore::new(keyset, vault));
        let gateway = Gateway::new(&config, keys.clone(), clock.clone())
            .map_err(|e| StartError::HttpClient(e.to_string()))?;
        let identity = crate::identity::IdentityProviders::new(&config.identity_providers)
            .map_err(|e| StartError::HttpClient(e.to_string()))?;
        Ok(Self {
            metrics: Arc::new(crate::metrics::Metrics::new(store.timings())),
            draining: Arc::default(),
            passwords,
            identity: Arc::new(identity),
            gateway: Arc::new(gateway),
            clients: Arc::new(ClientCache::new(
                config.revocation_sync_interval.unsigned_abs(),
            )),
            users: Arc::new(Users::new(config.revocation_sync_interval.unsigned_abs())),
            api_tokens: Arc::new(crate::mcp::api_tokens::ApiTokens::new(
                config.revocation_sync_interval.unsigned_abs(),
            )),
            revocations: Arc::new(revocations),
            session_key,
            client_metadata: Arc::new(client_metadata),
            limits: Arc::new(Limits::new(&config, &store)),
            config: Arc::new(config),
            store,
            keys,
            clock,
        })
    }
}
