//! All SQL lives here: one set of queries for SQLite and PostgreSQL through sqlx's `Any` driver,
//! one file per table family. Row structs stay private and convert into domain types.
//!
//! `Any` has no time, bool, uuid or json types, so timestamps are unix seconds (`i64`), flags are
//! 0/1 integers and JSON is text.

mod api_tokens;
mod apps;
mod audit;
mod clients;
mod codes;
mod fresh;
mod grants;
mod identities;
mod keys;
mod limits;
mod links;
mod prune;
mod read;
mod sessions;
mod sqlite;
mod timing;
mod url;
mod users;
mod write;

use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, Connection, Executor};

pub use self::url::DatabaseUrl;
pub use api_tokens::ApiTokenRecord;
pub use apps::ConnectedApp;
pub use audit::{AuditEvent, AuditFilter, AuditRecord, Outcome};
pub use codes::{CodeRecord, CodeState, ConsumedCode};
pub use grants::{GrantRecord, NewRefresh, RefreshRecord, Revocations};
pub use identities::{LinkedIdentity, ProviderIdentity, Unlinked};
pub use keys::KeyRecord;
pub use limits::RateTake;
pub use links::FirstAdmin;
pub use prune::{Keep, Pruned};
pub use sessions::SessionStoreAdapter;
pub use timing::{DbOperation, DbTimings};
pub use users::{Consent, SIGN_IN_FAILURE_WINDOW, ThrottleState};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// A stored unix timestamp as a time; a value out of range is a corrupt row.
pub(crate) fn from_unix(t: i64) -> Result<time::OffsetDateTime, StoreError> {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {t}: {e}")))
}

/// Which database engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A storage failure. Callers map it to a generic server error; the cause is logged, never shown.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or the statement failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The committer's SQLite connection failed (its message; one failure may fail several
    /// writes).
    #[error("database error: {0}")]
    Engine(String),
    /// A uniqueness rule was violated (e.g. a second `current` signing key).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A row holds a value this version does not understand.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database file could not be created or its mode set.
    #[error("database file {0}")]
    File(String),
}

impl StoreError {
    /// Turns unique-constraint violations into [`StoreError::Conflict`], in one place.
    fn from_write(err: sqlx::Error, what: &str) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Conflict(what.to_owned())
            }
            _ => Self::Database(err),
        }
    }
}

/// The database handle shared by every request.
///
/// On PostgreSQL reads and writes share one pool. On SQLite, which admits one writer at a time,
/// one task (the committer, `write.rs`) does all the writing: guarded writes and appends in
/// batches on a connection it calls directly (`engine.rs`), every other write on a connection it
/// lends. Writes queue for it in the process (a wake-up when it is free) instead of colliding
/// inside SQLite, whose busy handler sleeps for milliseconds between retries; reads go to a few
/// connections of their own (`read.rs`).
#[derive(Debug, Clone)]
pub struct Store {
    readers: read::Readers,
    writer: write::Writer,
    backend: Backend,
    /// Codes and refresh tokens issued here and not yet seen used (`fresh.rs`).
    fresh: Arc<fresh::Fresh>,
    /// Browser sessions read recently, on SQLite only (`sessions.rs`).
    sessions: Arc<sessions::SessionCache>,
    /// How long database operations take (`timing.rs`).
    timings: DbTimings,
    /// Writes sent off without their answer being awaited; [`Store::close`] waits for them.
    background: tokio_util::task::TaskTracker,
}

/// How long [`Store::close`] waits for the writes sent off in the background.
const BACKGROUND_DRAIN: Duration = Duration::from_secs(10);

static DRIVERS: Once = Once::new();

/// What every SQLite connection is set to. WAL lets readers run while one writer commits; the
/// busy timeout makes writers of other processes (the CLI) wait instead of failing.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;";

/// One SQLite connection (sqlx runs it on a thread of its own), set up for this store.
async fn open_sqlite_connection(options: &AnyConnectOptions) -> Result<AnyConnection, StoreError> {
    let mut conn = AnyConnection::connect_with(options).await?;
    conn.execute(SQLITE_PRAGMAS).await?;
    Ok(conn)
}

/// Makes the SQLite file at `path` readable by its owner alone: created with mode 0600 when it is
/// new (SQLite gives its `-wal` and `-shm` files the database file's mode), tightened to 0600,
/// with its `-wal` and `-shm`, when another user could read it. It holds password hashes, the
/// session-cookie key and every grant. Warns when others may write to its directory.
fn private_sqlite_file(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |e: std::io::Error| StoreError::File(format!("{}: {e}", path.display()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            for file in [
                path.to_owned(),
                path.with_file_name(sidecar(path, "-wal")),
                path.with_file_name(sidecar(path, "-shm")),
            ] {
                let Ok(meta) = std::fs::metadata(&file) else {
                    continue;
                };
                if meta.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                        .map_err(failed)?;
                    tracing::warn!(path = %file.display(), "the database file was readable by other users; it is now mode 0600");
                }
            }
        }
        Err(e) => return Err(failed(e)),
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if let Ok(meta) = std::fs::metadata(dir) {
        let mode = meta.permissions().mode();
        // Writable by others without the sticky bit: they could replace the database file.
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            tracing::warn!(dir = %dir.display(), "other users may write to the database's directory: chmod go-w it");
        }
    }
    Ok(())
}

/// The name of a SQLite sidecar file of `path` (`-wal`, `-shm`).
fn sidecar(path: &std::path::Path, suffix: &str) -> std::ffi::OsString {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    name
}

impl Store {
    /// Connects (creating a SQLite file if needed, mode 0600) and applies the migrations.
    pub async fn open(url: &DatabaseUrl) -> Result<Self, StoreError> {
        // Without this, the first `Any` connect panics.
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = url.backend();
        let options = AnyConnectOptions::from_str(&url.connect_string())?;
        let store = match backend {
            Backend::Sqlite => {
                let path = sqlx::sqlite::SqliteConnectOptions::from_str(&url.connect_string())?
                    .get_filename()
                    .to_owned();
                private_sqlite_file(&path)?;
                // The writer first: it switches the file to WAL and migrates it.
                let mut writer = open_sqlite_connection(&options).await?;
                writer.execute(sqlite::committer::WRITER_PRAGMAS).await?;
                SQLITE_MIGRATIONS.run(&mut writer).await?;
                let readers = Arc::new(sqlite::readers::SqliteReaders::open(&options).await?);
                let engine = sqlite::engine::Engine::open(&path)
                    .map_err(|e| StoreError::Engine(e.to_string()))?;
                let committer = sqlite::committer::start_committer(engine, path, writer, options);
                Self {
                    readers: read::Readers::Sqlite(readers),
                    writer: write::Writer::Committer(committer),
                    backend,
                    fresh: Arc::default(),
                    sessions: Arc::new(sessions::SessionCache::new(true)),
                    timings: timing::new_timings(),
                    background: tokio_util::task::TaskTracker::new(),
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Self {
                    readers: read::Readers::Pool(pool.clone()),
                    writer: write::Writer::Pool(pool),
                    backend,
                    fresh: Arc::default(),
                    // Another instance may change or end a session at any moment.
                    sessions: Arc::new(sessions::SessionCache::new(false)),
                    timings: timing::new_timings(),
                    background: tokio_util::task::TaskTracker::new(),
                }
            }
        };
        Ok(store)
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the database answers (for `/health`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.reader().await?.ping().await?;
        timing::observe(&self.timings, "ping", started);
        Ok(())
    }

    /// How long database operations took, by operation (shared: the metrics read it).
    pub fn timings(&self) -> DbTimings {
        self.timings.clone()
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.background.close();
        if tokio::time::timeout(BACKGROUND_DRAIN, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.background.len(),
                "writes sent off in the background did not finish within 10 s; they are lost"
            );
        }
        self.writer.close().await;
        self.readers.close().await;
    }

    /// Runs a write whose answer nobody waits for (an audit event after the answer, a last
    /// use), so that [`Store::close`] still waits for it.
    pub fn spawn_write<F>(&self, write: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.background.spawn(write);
    }

    /// The SQLite journal mode (`wal` expected); `None` on PostgreSQL.
    pub async fn sqlite_journal_mode(&self) -> Result<Option<String>, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *self.reader().await?)
            .await?;
        Ok(Some(mode))
    }
}

/// A store on a fresh SQLite file in `dir`, for the store's own tests.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn sqlite_store_in(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    Store::open(&DatabaseUrl::parse(&url).unwrap())
        .await
        .unwrap()
}
