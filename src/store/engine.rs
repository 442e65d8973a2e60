//! The connection the committer runs its batches on, called directly from the committer's task.
//!
//! sqlx runs every SQLite connection on a thread of its own, and each statement is a hand-over to
//! that thread and back. Every rotation and code exchange waits for a batch, and on two cores that
//! thread was a third busy one: a batch took about 620 µs, of which the thread ran about 300 µs
//! and waited for a core the rest (`BENCHMARKS.md`). So batches run here instead, on a connection
//! of the committer's own (rusqlite, over the same SQLite library sqlx links), on whichever
//! runtime thread runs the committer, statement by statement from prepared statements.
//!
//! The runtime thread never waits for a lock here: the connection's busy timeout is zero. A write
//! lock held by another process (a CLI command) sends the batch to a blocking thread, where it
//! waits as long as any other connection of this store would ([`BUSY_WAIT`]).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::write::{Insert, Param, Write};

/// How long a batch waits for another process's write lock: the busy timeout of every other
/// connection (`SQLITE_PRAGMAS`).
pub(super) const BUSY_WAIT: Duration = Duration::from_secs(5);

/// Prepared statements kept: every kind of guarded write and append, with room to spare.
const STATEMENTS: usize = 32;

/// Why a batch failed. The transaction was rolled back: nothing of the batch was written.
#[derive(Debug)]
pub(super) struct Failure {
    /// The database's error.
    pub error: rusqlite::Error,
    /// The write whose statement refused its data (a constraint), if that was the failure: the
    /// other writes may succeed without it. Otherwise (busy, I/O) all would fail alike.
    pub at_fault: Option<usize>,
    /// What the failing statement writes, for [`super::StoreError::Conflict`].
    pub what: String,
}

impl Failure {
    /// Whether another process held the write lock (nothing was tried).
    pub(super) fn busy(&self) -> bool {
        self.error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
    }

    /// Whether a uniqueness rule refused the data.
    pub(super) fn unique_violation(&self) -> bool {
        matches!(
            &self.error,
            rusqlite::Error::SqliteFailure(e, _) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    }
}

/// The committer's connection.
#[derive(Debug)]
pub(super) struct Engine {
    conn: Connection,
}

impl Engine {
    /// Opens the SQLite file at `path`, which the store has created and migrated.
    pub(super) fn open(path: &Path) -> Result<Self, rusqlite::Error> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch(super::SQLITE_PRAGMAS)?;
        conn.execute_batch(super::write::WRITER_PRAGMAS)?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(Self { conn })
    }

    /// Runs `writes` in one transaction, in order (each sees the ones before); for each, whether
    /// it took effect (a guarded write's update matched; an append always does). With `wait`,
    /// waits up to [`BUSY_WAIT`] for another process's write lock; without, fails at once.
    ///
    /// `Err` with `Ok(self)`: the batch was rolled back and the connection is fine. `Err(None)`
    /// inside: the rollback itself failed, and the connection is dropped (the committer opens
    /// another).
    pub(super) fn run(
        self,
        writes: &[&Write],
        wait: bool,
    ) -> (Option<Self>, Result<Vec<bool>, Failure>) {
        if wait {
            if let Err(error) = self.conn.busy_timeout(BUSY_WAIT) {
                return (Some(self), Err(whole(error)));
            }
        }
        let outcome = self.transaction(writes);
        if wait {
            // A connection that cannot be set back would wait on the runtime's thread.
            if self.conn.busy_timeout(Duration::ZERO).is_err() {
                return (None, outcome);
            }
        }
        if outcome.is_ok() || self.conn.is_autocommit() {
            return (Some(self), outcome);
        }
        // A statement failed inside the transaction (SQLite may have ended it already).
        match self.conn.execute_batch("ROLLBACK") {
            Ok(()) => (Some(self), outcome),
            Err(_) => (None, outcome),
        }
    }

    fn transaction(&self, writes: &[&Write]) -> Result<Vec<bool>, Failure> {
        self.statement("BEGIN IMMEDIATE", &[]).map_err(whole)?;
        let mut applied = Vec::with_capacity(writes.len());
        for (index, write) in writes.iter().enumerate() {
            let at = |what: &str| {
                let what = what.to_owned();
                move |error: rusqlite::Error| Failure {
                    at_fault: constraint(&error).then_some(index),
                    error,
                    what,
                }
            };
            match write {
                Write::Guarded(write) => {
                    let matched = self
                        .statement(write.update, &write.params)
                        .map_err(at("update"))?;
                    if matched == 1 {
                        for insert in &write.inserts {
                            self.insert(insert).map_err(at(&insert.what))?;
                        }
                    }
                    applied.push(matched == 1);
                }
                Write::Append(insert) => {
                    self.insert(insert).map_err(at(&insert.what))?;
                    applied.push(true);
                }
            }
        }
        self.statement("COMMIT", &[]).map_err(whole)?;
        Ok(applied)
    }

    fn insert(&self, insert: &Insert) -> Result<usize, rusqlite::Error> {
        self.statement(&insert.sql(1), &insert.values)
    }

    /// Runs one statement from the cache of prepared ones; the rows it changed. The statements
    /// are written for both engines with `$n` parameters, which SQLite reads as names and would
    /// number by first appearance: `?n` numbers them as written.
    fn statement(&self, sql: &str, params: &[Param]) -> Result<usize, rusqlite::Error> {
        let sql = sql.replace('$', "?");
        let mut statement = self.conn.prepare_cached(&sql)?;
        statement.execute(rusqlite::params_from_iter(params.iter().map(value)))
    }
}

fn value(param: &Param) -> &dyn rusqlite::ToSql {
    match param {
        Param::Text(v) => v,
        Param::MaybeText(v) => v,
        Param::Int(v) => v,
    }
}

/// Whether the data was refused by a constraint (unique, foreign key, not null, check).
fn constraint(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

/// A failure of the transaction itself (`BEGIN`, `COMMIT`), not of one write's data.
fn whole(error: rusqlite::Error) -> Failure {
    Failure {
        error,
        at_fault: None,
        what: "batch".to_owned(),
    }
}
