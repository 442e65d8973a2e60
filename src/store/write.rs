//! Guarded writes: a conditional `UPDATE` that may happen at most once (a code consumed, a
//! refresh token rotated), then the rows that follow from it, all in one transaction.
//!
//! On PostgreSQL a guarded write, and a set of appended rows, is one statement (data-modifying
//! `WITH` clauses, atomic as one statement is): one round trip and one commit, where a
//! transaction statement by statement took a round trip for each statement, `BEGIN` and
//! `COMMIT` included.
//!
//! On SQLite the committer (`sqlite/committer.rs`) runs them, batched; see `sqlite/mod.rs`.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyPool};
use tokio::sync::{mpsc, oneshot};

use super::sqlite::committer::{BackToCommitter, Job, WAIT_FOR_CONNECTION, commit, stopped};
use super::sqlite::lent::Borrowed;
use super::{Store, StoreError};

/// One value to bind.
#[derive(Debug, Clone)]
pub(super) enum Param {
    Text(String),
    MaybeText(Option<String>),
    Int(i64),
    MaybeInt(Option<i64>),
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

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Self::MaybeInt(v)
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
            Param::MaybeInt(v) => query.bind(v),
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

/// `$from, $from+1, ...`, `n` of them.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Insert {
    /// The statement, its values as `$1, $2, ...`.
    pub(super) fn sql(&self) -> String {
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.table,
            self.columns,
            placeholders(1, self.values.len())
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

/// `write` as one PostgreSQL statement: the update in a `WITH` clause that returns a row when
/// it matched, each insert taking its values only from such a row (so nothing is inserted when
/// the update matched nothing), and the number of rows the update matched as its answer. The
/// parameters are the update's, then each insert's, in order.
fn one_statement(write: &GuardedWrite) -> (String, Vec<Param>) {
    let mut sql = format!("WITH guard AS ({} RETURNING 1)", write.update);
    let mut params = write.params.clone();
    for (i, insert) in write.inserts.iter().enumerate() {
        sql.push_str(&format!(
            ", insert{i} AS (INSERT INTO {} ({}) SELECT {} FROM (SELECT 1 FROM guard LIMIT 1) AS once)",
            insert.table,
            insert.columns,
            placeholders(params.len() + 1, insert.values.len())
        ));
        params.extend(insert.values.iter().cloned());
    }
    sql.push_str(" SELECT count(*) FROM guard");
    (sql, params)
}

/// `inserts` as one PostgreSQL statement, all or none.
fn appended(inserts: &[Insert]) -> (String, Vec<Param>) {
    let mut clauses = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    for (i, insert) in inserts.iter().enumerate() {
        clauses.push(format!(
            "insert{i} AS (INSERT INTO {} ({}) VALUES ({}))",
            insert.table,
            insert.columns,
            placeholders(params.len() + 1, insert.values.len())
        ));
        params.extend(insert.values.iter().cloned());
    }
    (format!("WITH {} SELECT 1", clauses.join(", ")), params)
}

/// A failed statement that wrote `inserts`: a unique violation names the insert of the table it
/// happened in (as a statement per insert did).
fn write_error(err: sqlx::Error, inserts: &[Insert]) -> StoreError {
    let table = match &err {
        sqlx::Error::Database(db) => db.table().map(str::to_owned),
        _ => None,
    };
    let what = inserts
        .iter()
        .find(|i| Some(i.table) == table.as_deref())
        .or(inserts.first())
        .map_or("row", |i| i.what.as_str());
    StoreError::from_write(err, what)
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
        let started = std::time::Instant::now();
        let conn = self.lend_writer().await?;
        super::timing::observe(&self.timings, "write_connection", started);
        Ok(conn)
    }

    async fn lend_writer(&self) -> Result<WriteConnection, StoreError> {
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
        let started = std::time::Instant::now();
        let done = match &self.writer {
            Writer::Committer(jobs) => commit(jobs, Write::Guarded(write)).await,
            Writer::Pool(_) => self.guarded_write_in_transaction(write).await,
        };
        super::timing::observe(&self.timings, "guarded_write", started);
        done
    }

    /// Appends a row (on SQLite, in the committer's next batch).
    pub(super) async fn append(&self, insert: Insert) -> Result<(), StoreError> {
        self.append_all(vec![insert]).await
    }

    /// Appends rows together, all or none (on SQLite, in the committer's next batch).
    pub(super) async fn append_all(&self, inserts: Vec<Insert>) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let done = self.append_all_now(inserts).await;
        super::timing::observe(&self.timings, "append", started);
        done
    }

    async fn append_all_now(&self, inserts: Vec<Insert>) -> Result<(), StoreError> {
        match &self.writer {
            Writer::Committer(jobs) => commit(jobs, Write::Append(inserts)).await.map(drop),
            Writer::Pool(_) => {
                let mut conn = self.writer().await?;
                match inserts.as_slice() {
                    [] => Ok(()),
                    [one] => one.execute_on(&mut *conn).await,
                    all => {
                        let (sql, params) = appended(all);
                        bind(sqlx::query(&sql), params)
                            .execute(&mut *conn)
                            .await
                            .map_err(|e| write_error(e, all))?;
                        Ok(())
                    }
                }
            }
        }
    }

    async fn guarded_write_in_transaction(&self, write: GuardedWrite) -> Result<bool, StoreError> {
        let mut conn = self.writer().await?;
        let (sql, params) = one_statement(&write);
        let row = bind(sqlx::query(&sql), params)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| write_error(e, &write.inserts))?;
        let matched: i64 = sqlx::Row::try_get(&row, 0)?;
        Ok(matched > 0)
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
        assert!(started.elapsed() < super::super::sqlite::engine::BUSY_WAIT);
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
