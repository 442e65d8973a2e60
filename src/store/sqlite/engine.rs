//! The connection the committer runs its batches on, called directly from the committer's task.
//!
//! sqlx runs every SQLite connection on a thread of its own, and each statement is a hand-over to
//! that thread and back. Every rotation and code exchange waits for a batch, and on two cores that
//! thread was a third busy one: a batch spent much of its time waiting for a core
//! (`BENCHMARKS.md`). So batches run here instead, on a connection of the committer's own
//! (rusqlite, over the same SQLite library sqlx links), on whichever runtime thread runs the
//! committer, statement by statement from prepared statements.
//!
//! The runtime thread never waits here: the connection's busy timeout is zero, and a write lock
//! held by another connection (a CLI command's, or the lent one still rolling back what its
//! borrower left) sends the batch to a blocking thread, where it waits as long as any other
//! connection of this store would ([`BUSY_WAIT`]). Opening the connection again after a failure
//! happens there too, and the connection runs no automatic checkpoint (the checkpointer does).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::store::write::{Insert, Param, Write};

/// How long a batch waits for another process's write lock: the busy timeout of every other
/// connection (`SQLITE_PRAGMAS`).
pub(crate) const BUSY_WAIT: Duration = Duration::from_secs(5);

/// The busy handler of a wait off the runtime's threads: retries every millisecond, up to
/// [`BUSY_WAIT`]. SQLite's own busy timeout sleeps in growing steps (up to 100 ms), so a write
/// that met a lock held for 3 ms could sleep 25.
fn wait_a_millisecond(tries: i32) -> bool {
    let waited = Duration::from_millis(u64::try_from(tries).unwrap_or(0));
    if waited >= BUSY_WAIT {
        return false;
    }
    std::thread::sleep(Duration::from_millis(1));
    true
}

/// Prepared statements kept: every kind of guarded write and append, with room to spare.
const STATEMENTS: usize = 32;

/// Why a batch failed. The transaction was rolled back: nothing of the batch was written.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The database's error.
    pub error: rusqlite::Error,
    /// The write whose statement refused its data (a constraint), if that was the failure: the
    /// other writes may succeed without it. Otherwise (busy, I/O) all would fail alike.
    pub at_fault: Option<usize>,
    /// What the failing statement writes, for [`super::StoreError::Conflict`].
    pub what: String,
}

impl Failure {
    /// A failure of the batch as a whole (the connection, `BEGIN`, `COMMIT`), no write's data.
    pub(crate) fn whole(error: rusqlite::Error) -> Self {
        Self {
            error,
            at_fault: None,
            what: "batch".to_owned(),
        }
    }

    /// Whether another connection held the write lock. Usually another process (a CLI command);
    /// it can also be this process's lent connection, whose thread may still be ending what its
    /// borrower left (a transaction dropped without commit is rolled back there, after the lease
    /// is back). Either way the batch was rolled back and may run again.
    pub(crate) fn busy(&self) -> bool {
        self.error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
    }

    /// Whether a uniqueness rule refused the data.
    pub(crate) fn unique_violation(&self) -> bool {
        matches!(
            &self.error,
            rusqlite::Error::SqliteFailure(e, _) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    }
}

/// The committer's connection.
#[derive(Debug)]
pub(crate) struct Engine {
    conn: Connection,
}

impl Engine {
    /// Opens the SQLite file at `path`, which the store has created and migrated.
    pub(crate) fn open(path: &Path) -> Result<Self, rusqlite::Error> {
        let conn = open_without_autocheckpoint(path)?;
        conn.execute_batch(super::committer::WRITER_PRAGMAS)?;
        // WRITER_PRAGMAS set the lent connection's backstop; here it would run inside a commit,
        // on the runtime's thread.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
        conn.busy_timeout(Duration::ZERO)?;
        conn.set_prepared_statement_cache_capacity(STATEMENTS);
        Ok(Self { conn })
    }

    /// Runs `writes` in one transaction, in order (each sees the ones before); for each, whether
    /// it took effect (a guarded write's update matched; an append always does). With `wait`,
    /// waits up to [`BUSY_WAIT`] for another process's write lock; without, fails at once.
    ///
    /// Returns the connection with the outcome, or `None` in its place when it is in doubt and
    /// dropped (a rollback, or setting the busy timeout back, failed); the committer opens
    /// another. After an `Err` the batch was rolled back: nothing of it was written.
    pub(crate) fn run(
        self,
        writes: &[&Write],
        wait: bool,
    ) -> (Option<Self>, Result<Vec<bool>, Failure>) {
        if wait {
            if let Err(error) = self.conn.busy_handler(Some(wait_a_millisecond)) {
                return (Some(self), Err(Failure::whole(error)));
            }
        }
        let outcome = self.transaction(writes);
        if wait {
            // A connection that cannot be set back would wait on the runtime's thread. (A busy
            // timeout replaces the handler.)
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
        self.statement("BEGIN IMMEDIATE", &[])
            .map_err(Failure::whole)?;
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
                Write::Append(inserts) => {
                    for insert in inserts {
                        self.insert(insert).map_err(at(&insert.what))?;
                    }
                    applied.push(true);
                }
            }
        }
        self.statement("COMMIT", &[]).map_err(Failure::whole)?;
        Ok(applied)
    }

    fn insert(&self, insert: &Insert) -> Result<usize, rusqlite::Error> {
        self.statement(&insert.sql(), &insert.values)
    }

    /// Runs one statement from the cache of prepared ones; the rows it changed. The statements
    /// are written for both engines with `$n` parameters, which SQLite reads as names and would
    /// number by first appearance: `?n` numbers them as written. Every statement that comes here
    /// is the store's own (`grants.rs`, [`Insert::sql`]) and has no other `$` (no literal holds
    /// one).
    fn statement(&self, sql: &str, params: &[Param]) -> Result<usize, rusqlite::Error> {
        let sql = sql.replace('$', "?");
        let mut statement = self.conn.prepare_cached(&sql)?;
        statement.execute(rusqlite::params_from_iter(params.iter().map(value)))
    }
}

/// A connection to the SQLite file at `path` (created and migrated by the store) with the
/// store's settings, that never checkpoints by itself: the checkpointer does, beside the writer.
fn open_without_autocheckpoint(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(crate::store::SQLITE_PRAGMAS)?;
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0;")?;
    Ok(conn)
}

/// The checkpointer's connection: copies the write-ahead log back into the database file, beside
/// the committer (on a blocking thread of its own, never the runtime's).
#[derive(Debug)]
pub(crate) struct Checkpointer {
    conn: Connection,
}

/// What a checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checkpointed {
    /// Copied what it could; the log is below the bound and goes on growing.
    Copied,
    /// The log had grown past the bound: it was copied whole and is reused from its start.
    Restarted,
    /// The log had grown past the bound, but readers kept using it: tried again next time.
    ReadersInTheWay,
}

impl Checkpointer {
    /// Opens the SQLite file at `path`, which the store has created and migrated. It waits for
    /// locks in steps of a millisecond ([`wait_a_millisecond`]).
    pub(crate) fn open(path: &Path) -> Result<Self, rusqlite::Error> {
        let conn = open_without_autocheckpoint(path)?;
        conn.busy_handler(Some(wait_a_millisecond))?;
        Ok(Self { conn })
    }

    /// Copies what it can of the log without waiting for anyone (`PASSIVE`: the committer goes
    /// on writing, readers go on reading). SQLite reuses the log from its start only once every
    /// frame is copied while no reader is using it, which never happens while reads and writes
    /// keep coming: the log then grows without bound (2.5 GB after 20 s of code flows,
    /// `BENCHMARKS.md`). So when more than `bound` frames remain in it, a second checkpoint
    /// (`RESTART`) copies the few frames written since, waits for the readers still on the log
    /// (each a single lookup) and has the next write start the log over. Only that second step
    /// holds the committer back, and the committer waits for it in millisecond steps.
    pub(crate) fn checkpoint(&self, bound: i64) -> Result<Checkpointed, rusqlite::Error> {
        // (busy, frames in the log, frames copied)
        let frames: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))?;
        if frames <= bound {
            return Ok(Checkpointed::Copied);
        }
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| row.get(0))?;
        Ok(if busy == 0 {
            Checkpointed::Restarted
        } else {
            Checkpointed::ReadersInTheWay
        })
    }
}

fn value(param: &Param) -> &dyn rusqlite::ToSql {
    match param {
        Param::Text(v) => v,
        Param::MaybeText(v) => v,
        Param::Int(v) => v,
        Param::MaybeInt(v) => v,
    }
}

/// Whether the data was refused by a constraint (unique, foreign key, not null, check).
fn constraint(error: &rusqlite::Error) -> bool {
    error.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::write::GuardedWrite;

    fn engine(dir: &tempfile::TempDir) -> Engine {
        let path = dir.path().join("e.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE t (id TEXT PRIMARY KEY, done INTEGER);
                 CREATE TABLE u (x TEXT PRIMARY KEY, y INTEGER);
                 INSERT INTO t (id) VALUES ('a'), ('b');",
            )
            .unwrap();
        Engine::open(&path).unwrap()
    }

    fn pragma(engine: &Engine, name: &str) -> i64 {
        engine
            .conn
            .query_row(&format!("PRAGMA {name}"), [], |row| row.get(0))
            .unwrap()
    }

    fn append(x: &str) -> Write {
        Write::Append(vec![Insert {
            table: "u",
            columns: "x, y",
            values: vec![x.into(), 1.into()],
            what: format!("u {x}"),
        }])
    }

    /// Frames in the log, from a checkpoint that copies nothing new and waits for no one.
    fn frames_in_log(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
            .unwrap()
    }

    /// Writes, with a reader on the log in the middle of them, then a checkpoint under `bound`
    /// while that reader finishes, then one more write: the frames in the log after it, and how
    /// long the checkpoint took.
    fn frames_after_a_reader(bound: i64) -> (Checkpointed, i64, Duration) {
        let dir = tempfile::TempDir::new().unwrap();
        let mut engine = Some(engine(&dir));
        let checkpointer = Checkpointer::open(&dir.path().join("e.db")).unwrap();
        let mut write = |x: String| {
            let taken = engine.take().unwrap();
            engine = taken.run(&[&append(&x)], false).0;
        };
        for i in 0..50 {
            write(format!("a{i}"));
        }
        let reader = Connection::open(dir.path().join("e.db")).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM u;")
            .unwrap();
        for i in 0..20 {
            write(format!("b{i}"));
        }
        let letting_go = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            reader.execute_batch("COMMIT").unwrap();
        });
        let started = std::time::Instant::now();
        let done = checkpointer.checkpoint(bound).unwrap();
        let took = started.elapsed();
        letting_go.join().unwrap();
        write("c".to_owned());
        (done, frames_in_log(&checkpointer.conn), took)
    }

    /// A reader on the log keeps a passive checkpoint from copying all of it, and SQLite then
    /// does not start the log over: under steady reads and writes it grew to gigabytes. Past
    /// its bound, the checkpointer waits for the readers on the log, and the next write starts
    /// it over.
    #[test]
    fn past_its_bound_the_log_starts_over_once_readers_let_go() {
        let (done, frames, _) = frames_after_a_reader(1_000);
        assert_eq!(done, Checkpointed::Copied);
        assert!(
            frames > 100,
            "below the bound the log goes on: {frames} frames"
        );

        let (done, frames, took) = frames_after_a_reader(10);
        assert_eq!(done, Checkpointed::Restarted);
        assert!(
            took >= Duration::from_millis(50),
            "waited for the reader: {took:?}"
        );
        assert!(frames < 10, "the log started over: {frames} frames");
    }

    /// The connection the runtime's thread calls never waits for a lock and never checkpoints
    /// (review: the automatic checkpoint would have run inside a commit on that thread).
    #[test]
    fn the_engine_neither_waits_nor_checkpoints_in_a_commit() {
        let dir = tempfile::TempDir::new().unwrap();
        let engine = engine(&dir);
        assert_eq!(pragma(&engine, "busy_timeout"), 0);
        assert_eq!(pragma(&engine, "wal_autocheckpoint"), 0);
        assert_eq!(pragma(&engine, "journal_size_limit"), 64 * 1024 * 1024);
        assert_eq!(pragma(&engine, "foreign_keys"), 1);
    }

    fn mark(id: &str, x: &str) -> Write {
        Write::Guarded(GuardedWrite {
            // `$2` before `$1`: numbered as written, not by first appearance.
            update: "UPDATE t SET done = $2 WHERE id = $1 AND done IS NULL",
            params: vec![id.into(), 7.into()],
            inserts: vec![Insert {
                table: "u",
                columns: "x, y",
                values: vec![x.into(), 1.into()],
                what: format!("u {x}"),
            }],
        })
    }

    /// Writes run in order, each seeing the ones before; a refused insert names itself and its
    /// write, and rolls back the whole batch.
    #[test]
    fn a_batch_applies_in_order_and_a_refused_write_undoes_it_all() {
        let dir = tempfile::TempDir::new().unwrap();
        let engine = engine(&dir);
        let (first, again, other) = (mark("a", "1"), mark("a", "2"), mark("b", "3"));
        let (engine, outcome) = engine.run(&[&first, &again, &other], false);
        let engine = engine.unwrap();
        assert_eq!(outcome.unwrap(), [true, false, true]);
        let count = |engine: &Engine, sql: &str| -> i64 {
            engine.conn.query_row(sql, [], |row| row.get(0)).unwrap()
        };
        assert_eq!(count(&engine, "SELECT count(*) FROM t WHERE done = 7"), 2);
        assert_eq!(count(&engine, "SELECT count(*) FROM u"), 2);

        engine
            .conn
            .execute_batch("INSERT INTO t (id) VALUES ('c'), ('d')")
            .unwrap();
        let (fine, taken) = (mark("c", "4"), mark("d", "1"));
        let (engine, outcome) = engine.run(&[&fine, &taken], false);
        let engine = engine.unwrap();
        let failure = outcome.unwrap_err();
        assert_eq!(failure.at_fault, Some(1));
        assert_eq!(failure.what, "u 1");
        assert!(failure.unique_violation() && !failure.busy());
        assert!(engine.conn.is_autocommit(), "rolled back");
        assert_eq!(count(&engine, "SELECT count(*) FROM t WHERE done = 7"), 2);
        assert_eq!(count(&engine, "SELECT count(*) FROM u"), 2);
    }
}
