//! The committer: the one task that writes the SQLite file of this process.
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
//! (`Store::writer`): while one is lent, no batch runs, so the file has one writer in this
//! process at a time. (The lent connection's thread may still be rolling back what a borrower
//! dropped when the lease comes back; the next batch then finds the file busy and waits for it
//! off the runtime's thread, as for another process.) Holding that connection itself, not a
//! pool's, spares the ping sqlx makes on every return to a pool.

use std::collections::VecDeque;
use std::path::PathBuf;

use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection, Executor};
use tokio::sync::{mpsc, oneshot};

use super::engine::{Checkpointed, Checkpointer, Engine, Failure};
use super::lent::{Home, Lent};
use crate::store::StoreError;
use crate::store::write::Write;

/// Most writes in one transaction.
const MAX_BATCH: usize = 64;

/// Work for the committer.
#[derive(Debug)]
pub(crate) enum Job {
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
            let mut conn = crate::store::open_sqlite_connection(&self.options).await?;
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
pub(crate) const WRITER_PRAGMAS: &str =
    "PRAGMA wal_autocheckpoint = 20000; PRAGMA journal_size_limit = 67108864;";

/// Log frames (pages) past which a checkpoint has the log start over: 16 MiB of log at
/// SQLite's default page size.
const RESTART_AFTER_FRAMES: i64 = 4096;

/// Starts the committer of the SQLite file at `path`, with `engine` to run its batches and `conn`
/// as the connection it lends (`path` and `options` open them again after a failure); writes are
/// sent to the returned channel.
///
/// Checkpoints (copying the write-ahead log back into the database file, with an `fsync`) run
/// on a connection of their own on a blocking thread, beside the writer rather than inside one
/// of its commits, where SQLite runs them by default: a passive checkpoint never blocks the
/// writer. With them on the writer, refreshes ran at 6,900-7,100/s; with none at all,
/// 8,200-8,500/s (`BENCHMARKS.md`). They also keep the log from growing without bound
/// ([`Checkpointer::checkpoint`]).
pub(crate) fn start_committer(
    engine: Engine,
    path: PathBuf,
    conn: AnyConnection,
    options: AnyConnectOptions,
) -> mpsc::Sender<Job> {
    let (tx, jobs) = mpsc::channel::<Job>(1024);
    let (checkpoint, wanted) = mpsc::channel(1);
    let committer = Committer {
        engine: Some(engine),
        path: path.clone(),
        conn: Some(conn),
        options,
        jobs,
        later: VecDeque::new(),
        transactions: 0,
        checkpoint,
    };
    tokio::spawn(committer.run());
    tokio::spawn(checkpoints(path, wanted));
    tx
}

/// Runs a checkpoint each time the committer asks, until it stops.
async fn checkpoints(path: PathBuf, mut wanted: mpsc::Receiver<()>) {
    // Opened when first needed, and again after a failure.
    let mut checkpointer: Option<Checkpointer> = None;
    while wanted.recv().await.is_some() {
        let path = path.clone();
        let kept = checkpointer.take();
        let run = tokio::task::spawn_blocking(move || {
            let opened = match kept {
                Some(c) => c,
                None => Checkpointer::open(&path)?,
            };
            let done = opened.checkpoint(RESTART_AFTER_FRAMES)?;
            Ok::<_, rusqlite::Error>((opened, done))
        })
        .await;
        match run {
            Ok(Ok((kept, done))) => {
                checkpointer = Some(kept);
                if done == Checkpointed::ReadersInTheWay {
                    tracing::debug!("readers held the write-ahead log; it starts over next time");
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "checkpoint of the SQLite write-ahead log failed");
            }
            Err(join) => {
                tracing::warn!(error = %join, "checkpoint of the SQLite write-ahead log failed");
            }
        }
    }
}

/// Hands `write` to the committer and waits for its batch.
pub(crate) async fn commit(jobs: &mpsc::Sender<Job>, write: Write) -> Result<bool, StoreError> {
    let (done, outcome) = oneshot::channel();
    jobs.send(Job::Write { write, done })
        .await
        .map_err(|_| stopped())?;
    outcome.await.map_err(|_| stopped())?
}

/// How long a write that needs the connection itself, or a read, waits for one before failing
/// (as long as sqlx's pools wait). Guarded writes and appends wait for their batch without a
/// limit: one that gave up could still be committed after its caller had answered an error.
pub(crate) const WAIT_FOR_CONNECTION: std::time::Duration = std::time::Duration::from_secs(10);

/// The error of a write sent to a committer that has stopped.
pub(crate) fn stopped() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}
