//! Connections to read on.
//!
//! On PostgreSQL, the pool. On SQLite, a small set of connections the store holds itself: sqlx
//! runs each SQLite connection on a thread of its own, and its pool pings a connection (a round
//! trip to that thread) every time one is given back. For a one-row lookup that doubled the
//! thread wake-ups, which the token endpoint's refreshes paid for in context switches and
//! throughput (`BENCHMARKS.md`). A SQLite connection is a file handle in this process, so there
//! is nothing a ping could find out.

use std::sync::Arc;

use sqlx::AnyPool;

use super::sqlite::lent::Borrowed;
use super::sqlite::readers::{BackToReaders, SqliteReaders};
use super::{Store, StoreError};

/// Where reads go.
#[derive(Debug, Clone)]
pub(super) enum Readers {
    /// SQLite: the store's own connections.
    Sqlite(Arc<SqliteReaders>),
    /// PostgreSQL: the pool (shared with the writes).
    Pool(AnyPool),
}

impl Readers {
    pub(super) async fn close(&self) {
        match self {
            Self::Sqlite(readers) => readers.close().await,
            Self::Pool(pool) => pool.close().await,
        }
    }
}

/// A connection to read on.
pub(crate) type ReadConnection<'a> = Borrowed<BackToReaders<'a>>;

impl Store {
    /// A connection for reads. Hold it only for them: there are few.
    pub(super) async fn reader(&self) -> Result<ReadConnection<'_>, StoreError> {
        let started = std::time::Instant::now();
        let conn = match &self.readers {
            Readers::Sqlite(readers) => Borrowed::Lent(readers.get().await?),
            Readers::Pool(pool) => Borrowed::Pooled(pool.acquire().await?),
        };
        super::timing::observe(&self.timings, "read_connection", started);
        Ok(conn)
    }
}
