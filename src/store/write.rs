//! Guarded writes: a conditional `UPDATE` that may happen at most once (a code consumed, a
//! refresh token rotated), then the rows that follow from it, all in one transaction.
//!
//! On PostgreSQL this is an ordinary transaction, statement by statement. On SQLite every
//! statement is a round trip to the connection's own thread, and those round trips (thread
//! wake-ups) cost more than SQLite's own work did (`BENCHMARKS.md`). There the whole
//! transaction is one script sent in one round trip: `BEGIN IMMEDIATE`, the guarded update
//! (`RETURNING 1` says whether it matched), each insert as `INSERT ... SELECT ... WHERE <the update
//! matched>`, `COMMIT`.
//!
//! Better still, one script carries many writes: a single task (the committer) owns the writer
//! connection, and every guarded write waiting when it is free goes into the next transaction
//! (group commit), each update returning its place in the batch when it matched. Writes in one
//! batch see each other, in order, as in separate transactions: of two rotations of one token,
//! the second finds it rotated. If a batch fails, it is rolled back and its writes are retried
//! one by one, so only the write at fault fails. The committer runs apart from the requests, so
//! a client that hangs up cannot cut a transaction in half. Rows appended unconditionally (audit
//! events, one per MCP tool call) join the same batches.
//!
//! The committer holds the connection itself, not a pool's: a pool pings a SQLite connection
//! each time it is given back (one more round trip, measured at about a quarter of a batch's
//! time). Every other write on SQLite borrows the connection from the committer
//! ([`Store::writer`]), so the file still has one writer in this process.

use std::collections::{HashMap, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use sqlx::any::{AnyArguments, AnyConnectOptions};
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Executor, Row};
use tokio::sync::{mpsc, oneshot};

use super::lent::{Home, Lent};
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
    /// `$first, $first+1, ...` for the values.
    fn placeholders(&self, first: usize) -> String {
        (first..first + self.values.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The statement, its values numbered from `$first`.
    fn sql(&self, first: usize) -> String {
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.table,
            self.columns,
            self.placeholders(first)
        )
    }

    /// Runs it on `executor` (a pool: a transaction of its own).
    pub async fn execute_on<'e, E>(&self, executor: E) -> Result<(), StoreError>
    where
        E: sqlx::Executor<'e, Database = Any>,
    {
        let sql = self.sql(1);
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
    /// A condition, over the same parameters, that holds once the update has matched in this
    /// transaction (e.g. the row carries the value this update wrote).
    pub applied: &'static str,
    /// Rows to insert when it matched.
    pub inserts: Vec<Insert>,
}

/// One write the committer can put in a batch.
#[derive(Debug, Clone)]
pub(super) enum Write {
    /// Happens at most once (see [`GuardedWrite`]).
    Guarded(GuardedWrite),
    /// A row appended unconditionally (an audit event): batched so that a stream of them costs
    /// one commit per batch, not one each.
    Append(Insert),
}

impl Write {
    /// Writes of one shape sort together (their batch's script is then one of few).
    fn sort_key(&self) -> (&'static str, usize) {
        match self {
            Self::Guarded(w) => (w.update, w.inserts.len()),
            Self::Append(i) => (i.table, i.values.len()),
        }
    }

    /// What a unique violation of this write alone means.
    fn what(&self) -> &str {
        match self {
            Self::Guarded(w) => w
                .inserts
                .first()
                .map(|i| i.what.as_str())
                .unwrap_or("write"),
            Self::Append(i) => &i.what,
        }
    }
}

/// `sql` with every `$n` made `$(n + offset)`.
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while let Some(&(j, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = j + 1;
            chars.next();
        }
        if end > start {
            let n: usize = sql[start..end].parse().unwrap_or(0);
            out.push_str(&(n + offset).to_string());
        }
    }
    out
}

/// The SQLite script of a batch: one transaction, one round trip. Each update (or append) returns
/// its index in `writes` when it matched. The parameters are [`batch_params`].
fn batch_sql(writes: &[&Write]) -> String {
    let mut sql = String::with_capacity(64 + 512 * writes.len());
    sql.push_str("BEGIN IMMEDIATE;");
    let mut params = 0;
    for (index, write) in writes.iter().enumerate() {
        let write = match write {
            Write::Guarded(write) => write,
            Write::Append(insert) => {
                sql.push_str(&format!(" {} RETURNING {index};", insert.sql(params + 1)));
                params += insert.values.len();
                continue;
            }
        };
        let applied = renumber(write.applied, params);
        sql.push_str(&format!(
            " {} RETURNING {index};",
            renumber(write.update, params)
        ));
        params += write.params.len();
        for insert in &write.inserts {
            sql.push_str(&format!(
                " INSERT INTO {} ({}) SELECT {} WHERE {applied};",
                insert.table,
                insert.columns,
                insert.placeholders(params + 1),
            ));
            params += insert.values.len();
        }
    }
    sql.push_str(" COMMIT;");
    sql
}

/// The parameters of [`batch_sql`], in order.
fn batch_params(writes: &[&Write]) -> Vec<Param> {
    let mut params = Vec::new();
    for write in writes {
        match write {
            Write::Guarded(write) => {
                params.extend(write.params.iter().cloned());
                for insert in &write.inserts {
                    params.extend(insert.values.iter().cloned());
                }
            }
            Write::Append(insert) => params.extend(insert.values.iter().cloned()),
        }
    }
    params
}

/// What decides a batch's script: for each write, its statements, how many parameters its update
/// has and how many values each insert has. Texts are told apart by address: they are `'static`, so one address is one text
/// (two copies of one text only cost a second entry). An append has no update (address 0).
type Shape = Vec<(usize, usize, usize, Vec<(usize, usize, usize)>)>;

fn insert_shape(i: &Insert) -> (usize, usize, usize) {
    (
        i.table.as_ptr() as usize,
        i.columns.as_ptr() as usize,
        i.values.len(),
    )
}

fn shape(writes: &[&Write]) -> Shape {
    writes
        .iter()
        .map(|w| match w {
            Write::Guarded(w) => (
                w.update.as_ptr() as usize,
                w.applied.as_ptr() as usize,
                w.params.len(),
                w.inserts.iter().map(insert_shape).collect(),
            ),
            Write::Append(i) => (0, 0, 0, vec![insert_shape(i)]),
        })
        .collect()
}

/// Scripts already written, by shape: a batch's script was rewritten for every batch, some 40 µs
/// of the committer's time each, in which the writer waited.
#[derive(Debug, Default)]
struct Scripts(HashMap<Shape, Arc<str>>);

/// Most scripts kept (batches of one kind come in at most [`MAX_BATCH`] sizes).
const MAX_SCRIPTS: usize = 256;

impl Scripts {
    fn get(&mut self, writes: &[&Write]) -> Arc<str> {
        let key = shape(writes);
        if let Some(sql) = self.0.get(&key) {
            return sql.clone();
        }
        if self.0.len() >= MAX_SCRIPTS {
            self.0.clear();
        }
        let sql: Arc<str> = batch_sql(writes).into();
        self.0.insert(key, sql.clone());
        sql
    }
}

/// Why a batch failed.
#[derive(Debug)]
struct BatchError {
    /// The database's error.
    error: sqlx::Error,
    /// Whether one statement refused its data (a constraint): then one write is at fault, and
    /// the others may succeed alone. Otherwise (busy, I/O, a lost connection) all would fail.
    one_at_fault: bool,
}

impl BatchError {
    fn into_store_error(self, writes: &[&Write]) -> StoreError {
        let what = match writes {
            [one] => one.what(),
            _ => "batch",
        };
        StoreError::from_write(self.error, what)
    }
}

/// Largest batch whose script is kept prepared: smaller ones recur, and each kept script holds
/// a prepared statement per line, so this bounds the writer's statement cache.
const MAX_PREPARED_BATCH: usize = 16;

/// Runs one batch in one transaction; the indices of the writes whose update matched. On a
/// failure that leaves the connection in doubt, `conn` is emptied (the committer reconnects).
async fn commit_batch(
    conn: &mut Option<AnyConnection>,
    scripts: &mut Scripts,
    writes: &[&Write],
) -> Result<Vec<usize>, BatchError> {
    let failed = |error: sqlx::Error| BatchError {
        error,
        one_at_fault: false,
    };
    let Some(connection) = conn.as_mut() else {
        return Err(failed(sqlx::Error::PoolClosed));
    };
    let sql = scripts.get(writes);
    let outcome = bind(sqlx::query(&sql), batch_params(writes))
        .persistent(writes.len() <= MAX_PREPARED_BATCH)
        .fetch_all(&mut *connection)
        .await;
    match outcome {
        Ok(rows) => rows
            .iter()
            .map(|row| {
                let index: i64 = row.try_get(0).map_err(failed)?;
                usize::try_from(index).map_err(|_| failed(sqlx::Error::RowNotFound))
            })
            .collect(),
        Err(error) => {
            tracing::warn!(error = %error, writes = writes.len(), "a guarded write failed");
            // The script stopped at the failing statement, inside its transaction: end it. If
            // SQLite ended it already (or BEGIN itself failed) there is nothing to end; any
            // other failure leaves the connection in doubt, so it is dropped.
            if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *connection).await {
                let nothing_to_end = matches!(&rollback, sqlx::Error::Database(db)
                    if db.message().contains("no transaction is active"));
                if !nothing_to_end {
                    *conn = None;
                }
            }
            let one_at_fault = matches!(&error, sqlx::Error::Database(db) if matches!(
                db.kind(),
                sqlx::error::ErrorKind::UniqueViolation
                    | sqlx::error::ErrorKind::ForeignKeyViolation
                    | sqlx::error::ErrorKind::NotNullViolation
                    | sqlx::error::ErrorKind::CheckViolation
            ));
            Err(BatchError {
                error,
                one_at_fault,
            })
        }
    }
}

/// One write in a transaction of its own.
async fn commit_alone(
    conn: &mut Option<AnyConnection>,
    scripts: &mut Scripts,
    write: &Write,
) -> Result<bool, StoreError> {
    commit_batch(conn, scripts, &[write])
        .await
        .map(|matched| !matched.is_empty())
        .map_err(|e| e.into_store_error(&[write]))
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

/// The task that owns the SQLite writer connection: the one writer of the file in this process.
/// Guarded writes are committed in batches without any hand-over of the connection; other writes
/// borrow it in turn. Holding the connection itself, not a pool's, spares the ping sqlx makes on
/// every return to a pool (a round trip to the connection's thread, once per batch).
struct Committer {
    conn: Option<AnyConnection>,
    options: AnyConnectOptions,
    jobs: mpsc::Receiver<Job>,
    /// Jobs taken from the channel while a batch was gathered, to run after it.
    later: VecDeque<Job>,
    scripts: Scripts,
    /// Transactions run so far.
    transactions: u64,
    /// Wakes the checkpointer, which stops when this is dropped.
    checkpoint: mpsc::Sender<()>,
}

impl Committer {
    /// The connection, opened again if a failure dropped it.
    /// Opens the connection again if a failure dropped it.
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
        while batch.len() < MAX_BATCH {
            match self.jobs.try_recv() {
                Ok(Job::Write { write, done }) => batch.push((write, done)),
                Ok(other) => self.later.push_back(other),
                Err(_) => break,
            }
        }
        match self.open().await {
            Ok(()) => {}
            Err(e) => {
                let message = e.to_string();
                for (_, done) in batch {
                    let _ = done.send(Err(StoreError::Database(sqlx::Error::Protocol(
                        message.clone(),
                    ))));
                }
                return;
            }
        };
        // Writes of one shape together: the script of a batch is prepared once and cached.
        batch.sort_by_key(|(write, _)| write.sort_key());
        let writes: Vec<&Write> = batch.iter().map(|(write, _)| write).collect();
        match commit_batch(&mut self.conn, &mut self.scripts, &writes).await {
            Ok(matched) => {
                for (index, (_, done)) in batch.into_iter().enumerate() {
                    let _ = done.send(Ok(matched.contains(&index)));
                }
            }
            // One write refused its data: the others are retried alone, so only it fails.
            Err(err) if err.one_at_fault && batch.len() > 1 => {
                tracing::warn!(error = %err.error, writes = batch.len(), "retrying the writes of a failed batch one by one");
                for (write, done) in batch {
                    let outcome = match self.open().await {
                        Ok(()) => commit_alone(&mut self.conn, &mut self.scripts, &write).await,
                        Err(e) => Err(e),
                    };
                    let _ = done.send(outcome);
                }
            }
            // The database itself failed (or the only write did): every write of the batch
            // fails with it, at once, rather than each waiting out the same failure again.
            Err(err) if batch.len() == 1 => {
                if let Some((write, done)) = batch.pop() {
                    let _ = done.send(Err(err.into_store_error(&[&write])));
                }
            }
            Err(err) => {
                let message = err.error.to_string();
                for (_, done) in batch {
                    let error = StoreError::Database(sqlx::Error::Protocol(message.clone()));
                    let _ = done.send(Err(error));
                }
            }
        }
    }
}

/// How many transactions the committer runs between two checkpoints. Each adds a few pages to
/// the write-ahead log; a checkpoint copies the pages changed since the last one into the
/// database file, once each however often they changed.
const CHECKPOINT_EVERY: u64 = 64;

/// The writer's own settings. Its automatic checkpoint, in pages of log, is only a backstop for
/// a checkpointer that cannot keep up, since on the writer it would stop every write while it
/// runs. The log file, which SQLite reuses from its start after a complete checkpoint but never
/// shrinks by itself, is cut back to 64 MiB when that happens, whatever it grew to meanwhile.
pub(super) const WRITER_PRAGMAS: &str =
    "PRAGMA wal_autocheckpoint = 20000; PRAGMA journal_size_limit = 67108864;";

/// Starts the committer of a SQLite file on `conn`, its writer connection (`options` open it
/// again after a failure); writes are sent to the returned channel.
///
/// Checkpoints (copying the write-ahead log back into the database file, with an `fsync`) run
/// on a reading connection of `readers`, beside the writer rather than inside one of its
/// commits, where SQLite runs them by default: a passive checkpoint never blocks the writer.
/// With them on the writer, refreshes ran at 6,900-7,100/s; with none at all, 8,200-8,500/s
/// (`BENCHMARKS.md`).
pub(super) fn start_committer(
    conn: AnyConnection,
    options: AnyConnectOptions,
    readers: Arc<SqliteReaders>,
) -> mpsc::Sender<Job> {
    let (tx, jobs) = mpsc::channel::<Job>(1024);
    let (checkpoint, mut wanted) = mpsc::channel(1);
    let committer = Committer {
        conn: Some(conn),
        options,
        jobs,
        later: VecDeque::new(),
        scripts: Scripts::default(),
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
#[derive(Debug)]
pub(crate) enum WriteConnection {
    /// SQLite.
    Lent(Lease),
    /// PostgreSQL.
    Pooled(PoolConnection<Any>),
}

impl Deref for WriteConnection {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self {
            Self::Lent(lease) => lease,
            Self::Pooled(conn) => conn,
        }
    }
}

impl DerefMut for WriteConnection {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self {
            Self::Lent(lease) => lease,
            Self::Pooled(conn) => conn,
        }
    }
}

/// Where writes go.
#[derive(Debug, Clone)]
pub(super) enum Writer {
    /// SQLite: the committer task, which owns the one writer connection.
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
                Ok(WriteConnection::Lent(lease))
            }
            Writer::Pool(pool) => Ok(WriteConnection::Pooled(pool.acquire().await?)),
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
        match &self.writer {
            Writer::Committer(jobs) => commit(jobs, Write::Append(insert)).await.map(drop),
            Writer::Pool(_) => insert.execute_on(&mut *self.writer().await?).await,
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

    #[allow(clippy::unwrap_used)]
    async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        Store::open(&super::super::DatabaseUrl::parse(&url).unwrap())
            .await
            .unwrap()
    }

    /// The log file is cut back after a complete checkpoint (review: without a limit it stayed
    /// at whatever size a burst had grown it to).
    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn the_writer_limits_the_log_file_it_reuses() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = sqlite_store(&dir).await;
        let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
            .fetch_one(&mut *store.writer().await.unwrap())
            .await
            .unwrap();
        assert_eq!(limit, 64 * 1024 * 1024);
        store.close().await;
    }

    /// A write that needs the connection itself gives up, as a pool would, when another holds it
    /// (review: it used to wait without end).
    #[tokio::test(start_paused = true)]
    #[allow(clippy::unwrap_used)]
    async fn a_lease_not_given_back_makes_the_next_one_time_out() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = sqlite_store(&dir).await;
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

    #[test]
    fn a_batch_numbers_every_statement_after_the_ones_before() {
        let write = GuardedWrite {
            update: "UPDATE t SET done = $2 WHERE id = $1 AND done IS NULL",
            params: vec!["a".into(), 7.into()],
            applied: "EXISTS (SELECT 1 FROM t WHERE id = $1 AND done = $2)",
            inserts: vec![
                Insert {
                    table: "u",
                    columns: "x, y",
                    values: vec!["x".into(), 1.into()],
                    what: "u".into(),
                },
                Insert {
                    table: "v",
                    columns: "z",
                    values: vec![Param::MaybeText(None)],
                    what: "v".into(),
                },
            ],
        };
        let append = Write::Append(write.inserts[0].clone());
        let write = Write::Guarded(write);
        let sql = batch_sql(&[&write, &append, &write]);
        let params = batch_params(&[&write, &append, &write]);
        assert_eq!(
            sql,
            "BEGIN IMMEDIATE; UPDATE t SET done = $2 WHERE id = $1 AND done IS NULL RETURNING 0; \
             INSERT INTO u (x, y) SELECT $3, $4 WHERE EXISTS (SELECT 1 FROM t WHERE id = $1 AND done = $2); \
             INSERT INTO v (z) SELECT $5 WHERE EXISTS (SELECT 1 FROM t WHERE id = $1 AND done = $2); \
             INSERT INTO u (x, y) VALUES ($6, $7) RETURNING 1; \
             UPDATE t SET done = $9 WHERE id = $8 AND done IS NULL RETURNING 2; \
             INSERT INTO u (x, y) SELECT $10, $11 WHERE EXISTS (SELECT 1 FROM t WHERE id = $8 AND done = $9); \
             INSERT INTO v (z) SELECT $12 WHERE EXISTS (SELECT 1 FROM t WHERE id = $8 AND done = $9); COMMIT;"
        );
        assert_eq!(params.len(), 12);
        let Write::Guarded(write) = write else {
            unreachable!()
        };
        assert_eq!(
            renumber("a = $1 AND b = $12, '$'", 3),
            "a = $4 AND b = $15, '$'"
        );
        assert_eq!(
            write.inserts[0].sql(1),
            "INSERT INTO u (x, y) VALUES ($1, $2)"
        );
    }

    #[test]
    fn a_script_is_written_once_per_shape_and_never_reused_for_another() {
        let insert = |values: usize| Insert {
            table: "u",
            columns: "x, y",
            values: (0..values).map(|i| Param::Int(i as i64)).collect(),
            what: "u".into(),
        };
        let write = |values: usize| {
            Write::Guarded(GuardedWrite {
                update: "UPDATE t SET done = $2 WHERE id = $1 AND done IS NULL",
                params: vec!["a".into(), 7.into()],
                applied: "EXISTS (SELECT 1 FROM t WHERE id = $1 AND done = $2)",
                inserts: vec![insert(values)],
            })
        };
        let (two, other_values, three) = (write(2), write(2), write(3));
        let mut scripts = Scripts::default();
        let first = scripts.get(&[&two, &two]);
        // Same shape, other values: the same script.
        assert!(Arc::ptr_eq(&first, &scripts.get(&[&other_values, &two])));
        assert_eq!(&*first, batch_sql(&[&two, &two]));
        // Another count of writes or of values: its own script, as written from scratch.
        assert_eq!(&*scripts.get(&[&two]), batch_sql(&[&two]));
        assert_eq!(&*scripts.get(&[&two, &three]), batch_sql(&[&two, &three]));
        assert_ne!(batch_sql(&[&two, &three]), batch_sql(&[&two, &two]));
        // An append of the guarded write's insert is another shape.
        let append = Write::Append(insert(2));
        assert_eq!(&*scripts.get(&[&two, &append]), batch_sql(&[&two, &append]));
        assert_ne!(batch_sql(&[&two, &append]), batch_sql(&[&two, &two]));
        // So is an update with another count of parameters: what follows it is numbered after.
        let Write::Guarded(mut longer) = write(2) else {
            unreachable!()
        };
        longer.params.push(Param::Int(9));
        let longer = Write::Guarded(longer);
        assert_eq!(&*scripts.get(&[&longer, &two]), batch_sql(&[&longer, &two]));
        assert_ne!(batch_sql(&[&longer, &two]), batch_sql(&[&two, &two]));
        assert_eq!(scripts.0.len(), 5);
    }
}
