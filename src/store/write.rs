//! Guarded writes: a conditional `UPDATE` that may happen at most once (a code consumed, a
//! refresh token rotated), then the rows that follow from it, all in one transaction.
//!
//! On PostgreSQL this is an ordinary transaction, statement by statement, on a pooled connection.
//!
//! On SQLite a single task (the committer) owns the writing, and every guarded write waiting when
//! it is free goes into its next transaction (group commit). Writes in one batch see each other,
//! in order, as in separate transactions: of two rotations of one token, the second finds it
//! rotated. If a write's data is refused (a constraint), the batch is rolled back and run again
//! without it, so only the write at fault fails. The committer runs apart from the requests, so a
//! client that hangs up cannot cut a transaction in half. Rows appended unconditionally (audit
//! events, one per MCP tool call) join the same batches.
//!
//! The committer runs its batches on a connection of its own, called directly from its task
//! (`engine.rs`), and holds the sqlx connection every other SQLite write borrows from it
//! ([`Store::writer`]): while one is lent, no batch runs, so the file has one writer in this
//! process at a time. (The lent connection's thread may still be rolling back what a borrower
//! dropped when the lease comes back; the next batch then finds the file busy and waits for it
//! off the runtime's thread, as for another process.) Holding that connection itself, not a
//! pool's, spares the ping sqlx makes on every return to a pool.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use sqlx::any::{AnyArguments, AnyConnectOptions};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use super::engine::{Engine, Failure};
use super::lent::{Borrowed, Home, Lent};
use super::read::SqliteReaders;
use super::{Store, StoreError};

/// One value to bind.
#[derive(Debug, Clone)]
pub(super) enum Param {
    Text(String),
    MaybeText(Option<String>),
    Int(i64),
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        Self::MaybeText(v.map(str::to_owned))
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

/// `query` with `params` bound in order.
fn bind<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    params: impl IntoIterator<Item = Param>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for p in params {
        query = match p {
            Param::Text(v) => query.bind(v),
            Param::MaybeText(v) => query.bind(v),
            Param::Int(v) => query.bind(v),
        };
    }
    query
}

/// A row to insert.
#[derive(Debug, Clone)]
pub(super) struct Insert {
    /// Table.
    pub table: &'static str,
    /// Column list, comma-separated, in the order of `values`.
    pub columns: &'static str,
    /// One value per column.
    pub values: Vec<Param>,
    /// What a unique violation means, for [`StoreError::Conflict`].
    pub what: String,
}

impl Insert {
    /// The statement, its values as `$1, $2, ...`.
    pub(super) fn sql(&self) -> String {
        let placeholders = (1..=self.values.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {} ({}) VALUES ({placeholders})",
            self.table, self.columns
        )
    }

    /// Runs it on `executor` (a pool: a transaction of its own).
    pub async fn execute_on<'e, E>(&self, executor: E) -> Result<(), StoreError>
    where
        E: sqlx::Executor<'e, Database = Any>,
    {
        let sql = self.sql();
        bind(sqlx::query(&sql), self.values.iter().cloned())
            .execute(executor)
            .await
            .map_err(|e| StoreError::from_write(e, &self.what))?;
        Ok(())
    }
}

/// An update that matches at most once, and what follows when it does.
#[derive(Debug, Clone)]
pub(super) struct GuardedWrite {
    /// `UPDATE ... WHERE <not yet done>`, with parameters `$1..` from `params`.
    pub update: &'static str,
    /// Its parameters.
    pub params: Vec<Param>,
    /// Rows to insert when it matched.
    pub inserts: Vec<Insert>,
}

/// One write the committer can put in a batch.
#[derive(Debug, Clone)]
pub(super) enum Write {
    /// Happens at most once (see [`GuardedWrite`]).
    Guarded(GuardedWrite),
    /// Rows appended unconditionally, all or none (an audit event; a code with its own):
    /// batched so that a stream of them costs one commit per batch, not one each.
    Append(Vec<Insert>),
}

/// Most writes in one transaction.
const MAX_BATCH: usize = 64;

/// Work for the committer.
#[derive(Debug)]
pub(super) enum Job {
    /// A guarded write or an append, committed with whichever others are waiting.
    Write {
        write: Write,
        done: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Any other write: the connection is lent to the caller until its [`Lease`] is dropped.
    Lend(oneshot::Sender<Result<Lease, StoreError>>),
    /// Close the connection and stop.
    Close(oneshot::Sender<()>),
}

/// The SQLite writer connection, lent by the committer to one caller until dropped.
pub(crate) type Lease = Lent<BackToCommitter>;

/// The committer waiting for its lent connection.
#[derive(Debug)]
pub(crate) struct BackToCommitter(Option<oneshot::Sender<AnyConnection>>);

impl Home for BackToCommitter {
    fn take_back(&mut self, conn: AnyConnection) {
        if let Some(back) = self.0.take() {
            // If the committer is gone, the connection simply closes.
            let _ = back.send(conn);
        }
    }
}

/// The task that does the SQLite writing of this process: batches on its own connection, and every
/// other write on the connection it lends, one at a time.
struct Committer {
    /// Where batches run; `None` after a failure that left it in doubt (opened again when next
    /// needed).
    engine: Option<Engine>,
    /// The file, to open the engine again.
    path: PathBuf,
    /// The connection lent to other writes; `None` likewise.
    conn: Option<AnyConnection>,
    /// To open it again.
    options: AnyConnectOptions,
    jobs: mpsc::Receiver<Job>,
    /// Jobs taken from the channel while a batch was gathered, to run after it.
    later: VecDeque<Job>,
    /// Transactions run so far.
    transactions: u64,
    /// Wakes the checkpointer, which stops when this is dropped.
    checkpoint: mpsc::Sender<()>,
}

impl Committer {
    /// Opens the lent connection again if a failure dropped it.
    async fn open(&mut self) -> Result<(), StoreError> {
        if self.conn.is_none() {
            let mut conn = super::open_sqlite_connection(&self.options).await?;
            conn.execute(WRITER_PRAGMAS).await?;
            self.conn = Some(conn);
        }
        Ok(())
    }

    async fn run(mut self) {
        loop {
            let job = match self.later.pop_front() {
                Some(job) => job,
                None => match self.jobs.recv().await {
                    Some(job) => job,
                    None => break,
                },
            };
            self.transactions += 1;
            if self.transactions % CHECKPOINT_EVERY == 0 {
                // Full: one is pending already.
                let _ = self.checkpoint.try_send(());
            }
            match job {
                Job::Write { write, done } => self.batch(write, done).await,
                Job::Lend(reply) => self.lend(reply).await,
                Job::Close(done) => {
                    // The last connection to close checkpoints the whole log itself.
                    drop(self.engine.take());
                    if let Some(conn) = self.conn.take() {
                        let _ = conn.close().await;
                    }
                    let _ = done.send(());
                    break;
                }
            }
        }
    }

    async fn lend(&mut self, reply: oneshot::Sender<Result<Lease, StoreError>>) {
        let conn = match self.open().await.map(|()| self.conn.take()) {
            Ok(Some(conn)) => conn,
            Ok(None) => return, // `open` leaves a connection; not reached
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let (back, returned) = oneshot::channel();
        // If the caller went away, the lease comes back at once as it is dropped.
        let _ = reply.send(Ok(Lent::new(conn, BackToCommitter(Some(back)))));
        // A lease dropped without its connection cannot happen; if it did, the next job
        // reconnects.
        self.conn = returned.await.ok();
    }

    async fn batch(&mut self, first: Write, first_done: oneshot::Sender<Result<bool, StoreError>>) {
        let mut batch = vec![(first, first_done)];
        // The batch runs on this thread as soon as it is gathered, so before gathering, the tasks
        // ready to run go first: those about to write join this batch instead of waiting for the
        // next. Each commit writes the pages it changed, the shared ones (the ends of the
        // tables and indexes that grow) again each time: with this, MCP tool calls, one audit
        // event each, wrote a third of the log pages and ran 40% faster (`BENCHMARKS.md`).
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match self.jobs.try_recv() {
                Ok(Job::Write { write, done }) => batch.push((write, done)),
                Ok(other) => self.later.push_back(other),
                Err(_) => break,
            }
        }
        // A write whose data is refused fails alone: the batch runs again without it.
        while !batch.is_empty() {
            let writes: Vec<&Write> = batch.iter().map(|(write, _)| write).collect();
            match self.commit(&writes).await {
                Ok(applied) => {
                    for ((_, done), applied) in batch.into_iter().zip(applied) {
                        let _ = done.send(Ok(applied));
                    }
                    return;
                }
                Err(failure) => match failure.at_fault {
                    Some(index) if index < batch.len() => {
                        tracing::warn!(error = %failure.error, what = %failure.what, "a write of a batch was refused; the others run again without it");
                        let (_, done) = batch.remove(index);
                        let _ = done.send(Err(store_error(failure)));
                        // Let the runtime's other tasks run between two attempts.
                        tokio::task::yield_now().await;
                    }
                    // The database itself failed: every write of the batch fails with it, at
                    // once, rather than each waiting out the same failure again.
                    _ => {
                        tracing::warn!(error = %failure.error, writes = batch.len(), "a batch of writes failed");
                        let message = failure.error.to_string();
                        for (_, done) in batch {
                            let _ = done.send(Err(StoreError::Engine(message.clone())));
                        }
                        return;
                    }
                },
            }
        }
    }

    /// Runs one batch in one transaction: here, or on a blocking thread if another process holds
    /// the write lock.
    async fn commit(&mut self, writes: &[&Write]) -> Result<Vec<bool>, Failure> {
        let engine = match self.engine.take() {
            Some(engine) => engine,
            // Opening may wait for another process (SQLite's recovery of the log): not here.
            None => {
                let path = self.path.clone();
                match tokio::task::spawn_blocking(move || Engine::open(&path)).await {
                    Ok(opened) => opened.map_err(Failure::whole)?,
                    Err(join) => return Err(Failure::whole(thread_failed(join))),
                }
            }
        };
        let (engine, outcome) = match engine.run(writes, false) {
            (Some(engine), Err(failure)) if failure.busy() => {
                let owned: Vec<Write> = writes.iter().map(|w| (*w).clone()).collect();
                let waited = tokio::task::spawn_blocking(move || {
                    let writes: Vec<&Write> = owned.iter().collect();
                    engine.run(&writes, true)
                })
                .await;
                match waited {
                    Ok(done) => done,
                    // The thread panicked: the connection went with it.
                    Err(join) => (None, Err(Failure::whole(thread_failed(join)))),
                }
            }
            done => done,
        };
        self.engine = engine;
        outcome
    }
}

/// The error of a blocking thread that panicked.
fn thread_failed(join: tokio::task::JoinError) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERNAL),
        Some(format!("the batch's thread failed: {join}")),
    )
}

/// The error a write's caller gets for its part in a failed batch.
fn store_error(failure: Failure) -> StoreError {
    if failure.unique_violation() {
        StoreError::Conflict(failure.what)
    } else {
        StoreError::Engine(failure.error.to_string())
    }
}

/// How many transactions the committer runs between two checkpoints. Each adds a few pages to
/// the write-ahead log; a checkpoint copies the pages changed since the last one into the
/// database file, once each however often they changed.
const CHECKPOINT_EVERY: u64 = 64;

/// The writers' own settings. The automatic checkpoint, in pages of log, is only a backstop for
/// a checkpointer that cannot keep up, since on a writer it would stop every write while it runs;
/// the engine turns it off, as there it would also stop a runtime thread, and the backstop is the
/// lent connection's alone. The log file, which SQLite reuses from its start after a complete
/// checkpoint but never shrinks by itself, is cut back to 64 MiB when that happens, whatever it
/// grew to meanwhile.
pub(super) const WRITER_PRAGMAS: &str =
    "PRAGMA wal_autocheckpoint = 20000; PRAGMA journal_size_limit = 67108864;";

/// Starts the committer of the SQLite file at `path`, with `engine` to run its batches and `conn`
/// as the connection it lends (`path` and `options` open them again after a failure); writes are
/// sent to the returned channel.
///
/// Checkpoints (copying the write-ahead log back into the database file, with an `fsync`) run
/// on a reading connection of `readers`, beside the writer rather than inside one of its
/// commits, where SQLite runs them by default: a passive checkpoint never blocks the writer.
/// With them on the writer, refreshes ran at 6,900-7,100/s; with none at all, 8,200-8,500/s
/// (`BENCHMARKS.md`).
pub(super) fn start_committer(
    engine: Engine,
    path: PathBuf,
    conn: AnyConnection,
    options: AnyConnectOptions,
    readers: Arc<SqliteReaders>,
) -> mpsc::Sender<Job> {
    let (tx, jobs) = mpsc::channel::<Job>(1024);
    let (checkpoint, mut wanted) = mpsc::channel(1);
    let committer = Committer {
        engine: Some(engine),
        path,
        conn: Some(conn),
        options,
        jobs,
        later: VecDeque::new(),
        transactions: 0,
        checkpoint,
    };
    tokio::spawn(committer.run());
    tokio::spawn(async move {
        while wanted.recv().await.is_some() {
            let checkpoint = match readers.get().await {
                Ok(mut conn) => sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&mut *conn)
                    .await
                    .map(drop)
                    .map_err(StoreError::from),
                Err(e) => Err(e),
            };
            if let Err(error) = checkpoint {
                tracing::warn!(%error, "checkpoint of the SQLite write-ahead log failed");
            }
        }
    });
    tx
}

/// Hands `write` to the committer and waits for its batch.
async fn commit(jobs: &mpsc::Sender<Job>, write: Write) -> Result<bool, StoreError> {
    let (done, outcome) = oneshot::channel();
    jobs.send(Job::Write { write, done })
        .await
        .map_err(|_| stopped())?;
    outcome.await.map_err(|_| stopped())?
}

/// How long a write that needs the connection itself, or a read, waits for one before failing
/// (as long as sqlx's pools wait). Guarded writes and appends wait for their batch without a
/// limit: one that gave up could still be committed after its caller had answered an error.
pub(super) const WAIT_FOR_CONNECTION: std::time::Duration = std::time::Duration::from_secs(10);

/// The error of a write sent to a committer that has stopped.
fn stopped() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

/// A connection to write on: the SQLite writer lent by the committer, or one from the
/// PostgreSQL pool.
pub(crate) type WriteConnection = Borrowed<BackToCommitter>;

/// Where writes go.
#[derive(Debug, Clone)]
pub(super) enum Writer {
    /// SQLite: the committer task, which does all the writing (see the module's account).
    Committer(mpsc::Sender<Job>),
    /// PostgreSQL: the pool, where transactions run side by side.
    Pool(AnyPool),
}

impl Writer {
    /// Stops writing: closes the SQLite writer connection (waiting for a lent one to come back).
    pub(super) async fn close(&self) {
        match self {
            Self::Committer(jobs) => {
                let (done, closed) = oneshot::channel();
                if jobs.send(Job::Close(done)).await.is_ok() {
                    let _ = closed.await;
                }
            }
            Self::Pool(pool) => pool.close().await,
        }
    }
}

impl Store {
    /// A connection for a write that is not a guarded one. Hold it only for that write: on
    /// SQLite every other write waits for it.
    pub(super) async fn writer(&self) -> Result<WriteConnection, StoreError> {
        match &self.writer {
            Writer::Committer(jobs) => {
                // As long as a pool would wait for a connection. Nothing has happened yet, so
                // giving up is safe: a lease sent later comes straight back.
                let lend = async {
                    let (reply, lease) = oneshot::channel();
                    jobs.send(Job::Lend(reply)).await.map_err(|_| stopped())?;
                    lease.await.map_err(|_| stopped())?
                };
                let lease = tokio::time::timeout(WAIT_FOR_CONNECTION, lend)
                    .await
                    .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))??;
                Ok(Borrowed::Lent(lease))
            }
            Writer::Pool(pool) => Ok(Borrowed::Pooled(pool.acquire().await?)),
        }
    }

    /// Runs `write`; `Ok(false)` when its update matched nothing (then nothing is written).
    pub(super) async fn guarded_write(&self, write: GuardedWrite) -> Result<bool, StoreError> {
        match &self.writer {
            Writer::Committer(jobs) => commit(jobs, Write::Guarded(write)).await,
            Writer::Pool(_) => self.guarded_write_in_transaction(write).await,
        }
    }

    /// Appends a row (on SQLite, in the committer's next batch).
    pub(super) async fn append(&self, insert: Insert) -> Result<(), StoreError> {
        self.append_all(vec![insert]).await
    }

    /// Appends rows together, all or none (on SQLite, in the committer's next batch).
    pub(super) async fn append_all(&self, inserts: Vec<Insert>) -> Result<(), StoreError> {
        match &self.writer {
            Writer::Committer(jobs) => commit(jobs, Write::Append(inserts)).await.map(drop),
            Writer::Pool(_) => {
                let mut conn = self.writer().await?;
                let mut tx = conn.begin().await?;
                for insert in &inserts {
                    insert.execute_on(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    }

    async fn guarded_write_in_transaction(&self, write: GuardedWrite) -> Result<bool, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let matched = bind(sqlx::query(write.update), write.params.iter().cloned())
            .execute(&mut *tx)
            .await?;
        if matched.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for insert in &write.inserts {
            insert.execute_on(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log file is cut back after a complete checkpoint (review: without a limit it stayed
    /// at whatever size a burst had grown it to).
    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn the_writer_limits_the_log_file_it_reuses() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = super::super::sqlite_store_in(&dir).await;
        let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
            .fetch_one(&mut *store.writer().await.unwrap())
            .await
            .unwrap();
        assert_eq!(limit, 64 * 1024 * 1024);
        store.close().await;
    }

    /// Another process holding the write lock (a CLI command) makes a batch wait off the
    /// runtime's thread: on this one-thread runtime the test itself must run while the write
    /// waits, to let the lock go. Waiting on the runtime's thread would have kept it from running,
    /// and the write would have failed busy.
    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn a_batch_waits_for_another_process_without_holding_up_the_runtime() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = super::super::sqlite_store_in(&dir).await;
        let other = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        other
            .execute_batch(
                "BEGIN IMMEDIATE; INSERT INTO audit_events (at, kind, outcome, detail) \
                 VALUES (1, 'other.process', 'success', '{}');",
            )
            .unwrap();
        let event = |kind: &str| Insert {
            table: "audit_events",
            columns: "at, kind, outcome, detail",
            values: vec![2.into(), kind.into(), "success".into(), "{}".into()],
            what: "audit event".into(),
        };
        let waiting = tokio::spawn({
            let store = store.clone();
            let event = event("this.process");
            async move { store.append(event).await }
        });
        let started = std::time::Instant::now();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // Not a speed check: a runtime thread held in SQLite's busy wait comes back only after
        // the whole wait, 25 times longer.
        assert!(started.elapsed() < super::super::engine::BUSY_WAIT);
        assert!(!waiting.is_finished(), "{:?}", waiting.await);
        other.execute_batch("COMMIT").unwrap();
        waiting.await.unwrap().unwrap();
        // The connection is back from its thread, with its timeout of zero, and still writes.
        store.append(event("after")).await.unwrap();
        let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM audit_events ORDER BY id")
            .fetch_all(&mut *store.writer().await.unwrap())
            .await
            .unwrap();
        assert_eq!(kinds, ["other.process", "this.process", "after"]);
        store.close().await;
    }

    /// A write that needs the connection itself gives up, as a pool would, when another holds it
    /// (review: it used to wait without end).
    #[tokio::test(start_paused = true)]
    #[allow(clippy::unwrap_used)]
    async fn a_lease_not_given_back_makes_the_next_one_time_out() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = super::super::sqlite_store_in(&dir).await;
        let held = store.writer().await.unwrap();
        let second = store.writer().await;
        assert!(
            matches!(second, Err(StoreError::Database(sqlx::Error::PoolTimedOut))),
            "{second:?}"
        );
        drop(held);
        store.writer().await.unwrap();
        store.close().await;
    }
}
