//! The SQLite readers: a small set of connections the store holds itself, lent one at a time.
//! sqlx runs each SQLite connection on a thread of its own, and its pool pings a connection (a
//! round trip to that thread) every time one is given back; a SQLite connection is a file handle
//! in this process, so there is nothing a ping could find out.

use std::sync::{Mutex, PoisonError};

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::lent::{Home, Lent};
use crate::store::StoreError;

/// Reading connections to a SQLite file. Each is a thread; more than the two cores can use only
/// adds wake-ups (measured in `BENCHMARKS.md`).
const SQLITE_READERS: usize = 4;

/// The SQLite readers: [`SQLITE_READERS`] of them.
#[derive(Debug)]
pub(crate) struct SqliteReaders {
    idle: Mutex<Vec<AnyConnection>>,
    permits: Semaphore,
}

impl SqliteReaders {
    /// Opens them all now, so that no request waits for a connection to be opened.
    pub(crate) async fn open(options: &AnyConnectOptions) -> Result<Self, StoreError> {
        let mut idle = Vec::with_capacity(SQLITE_READERS);
        for _ in 0..SQLITE_READERS {
            idle.push(crate::store::open_sqlite_connection(options).await?);
        }
        Ok(Self {
            idle: Mutex::new(idle),
            permits: Semaphore::new(SQLITE_READERS),
        })
    }

    pub(crate) async fn get(&self) -> Result<ReadLease<'_>, StoreError> {
        let permit = tokio::time::timeout(
            super::committer::WAIT_FOR_CONNECTION,
            self.permits.acquire(),
        )
        .await
        .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))?
        .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        // A permit and an idle connection go together: every lease gives its connection back
        // when dropped.
        let Some(conn) = idle else {
            return Err(StoreError::Database(sqlx::Error::Protocol(
                "a reading connection was not given back".into(),
            )));
        };
        Ok(Lent::new(
            conn,
            BackToReaders {
                readers: self,
                _permit: permit,
            },
        ))
    }

    /// Refuses new reads, then closes every connection once it is back.
    pub(crate) async fn close(&self) {
        let all = u32::try_from(SQLITE_READERS).unwrap_or(u32::MAX);
        let Ok(permits) = self.permits.acquire_many(all).await else {
            return; // closed already
        };
        self.permits.close();
        drop(permits);
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for conn in idle {
            let _ = conn.close().await;
        }
    }
}

/// A SQLite reader, lent until dropped.
pub(crate) type ReadLease<'a> = Lent<BackToReaders<'a>>;

/// The set a reader goes back to, with the permit it was lent under.
#[derive(Debug)]
pub(crate) struct BackToReaders<'a> {
    readers: &'a SqliteReaders,
    _permit: SemaphorePermit<'a>,
}

impl Home for BackToReaders<'_> {
    fn take_back(&mut self, conn: AnyConnection) {
        self.readers
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}
