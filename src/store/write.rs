//! Guarded writes: a conditional `UPDATE` that may happen at most once (a code consumed, a
//! refresh token rotated), then the rows that follow from it, all in one transaction.
//!
//! On PostgreSQL this is an ordinary transaction, statement by statement. On SQLite every
//! statement is a round trip to the connection's own thread, and those round trips (thread
//! wake-ups), not SQLite, set the token endpoint's rate (`BENCHMARKS.md`). There the whole
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
//! a client that hangs up cannot cut a transaction in half.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

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

fn bind_all<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    params: &[Param],
) -> Query<'q, Any, AnyArguments<'q>> {
    for p in params {
        query = match p {
            Param::Text(v) => query.bind(v.clone()),
            Param::MaybeText(v) => query.bind(v.clone()),
            Param::Int(v) => query.bind(*v),
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

    /// The statement on its own.
    fn sql(&self) -> String {
        format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.table,
            self.columns,
            self.placeholders(1)
        )
    }

    /// Runs it on `executor` (a pool: a transaction of its own).
    pub async fn execute_on<'e, E>(&self, executor: E) -> Result<(), StoreError>
    where
        E: sqlx::Executor<'e, Database = Any>,
    {
        let sql = self.sql();
        bind_all(sqlx::query(&sql), &self.values)
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

/// The SQLite script of a batch: one transaction, one round trip. Each update returns its index
/// in `writes` when it matched.
fn batch_script(writes: &[&GuardedWrite]) -> (String, Vec<Param>) {
    let mut sql = String::from("BEGIN IMMEDIATE;");
    let mut params = Vec::new();
    for (index, write) in writes.iter().enumerate() {
        let base = params.len();
        let applied = renumber(write.applied, base);
        sql.push_str(&format!(
            " {} RETURNING {index};",
            renumber(write.update, base)
        ));
        params.extend(write.params.iter().cloned());
        for insert in &write.inserts {
            sql.push_str(&format!(
                " INSERT INTO {} ({}) SELECT {} WHERE {applied};",
                insert.table,
                insert.columns,
                insert.placeholders(params.len() + 1),
            ));
            params.extend(insert.values.iter().cloned());
        }
    }
    sql.push_str(" COMMIT;");
    (sql, params)
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
    fn into_store_error(self, writes: &[&GuardedWrite]) -> StoreError {
        let what = match writes {
            [one] => one
                .inserts
                .first()
                .map(|i| i.what.as_str())
                .unwrap_or("write"),
            _ => "batch",
        };
        StoreError::from_write(self.error, what)
    }
}

/// Largest batch whose script is kept prepared: smaller ones recur, and each kept script holds
/// a prepared statement per line, so this bounds the writer's statement cache.
const MAX_PREPARED_BATCH: usize = 16;

/// Runs one batch in one transaction; the indices of the writes whose update matched.
async fn commit_batch(
    writer: &AnyPool,
    writes: &[&GuardedWrite],
) -> Result<Vec<usize>, BatchError> {
    let failed = |error: sqlx::Error| BatchError {
        error,
        one_at_fault: false,
    };
    let (sql, params) = batch_script(writes);
    let mut conn = writer.acquire().await.map_err(failed)?;
    let outcome = bind_all(sqlx::query(&sql), &params)
        .persistent(writes.len() <= MAX_PREPARED_BATCH)
        .fetch_all(&mut *conn)
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
            if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                let nothing_to_end = matches!(&rollback, sqlx::Error::Database(db)
                    if db.message().contains("no transaction is active"));
                if !nothing_to_end {
                    drop(conn.detach());
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
async fn commit_alone(writer: &AnyPool, write: &GuardedWrite) -> Result<bool, StoreError> {
    commit_batch(writer, &[write])
        .await
        .map(|matched| !matched.is_empty())
        .map_err(|e| e.into_store_error(&[write]))
}

/// One write alone, on a task of its own so that a caller that goes away cannot stop the script
/// between `BEGIN` and `COMMIT`.
async fn commit_one(writer: &AnyPool, write: GuardedWrite) -> Result<bool, StoreError> {
    let writer = writer.clone();
    tokio::spawn(async move { commit_alone(&writer, &write).await })
        .await
        .map_err(|e| StoreError::Corrupt(format!("write task failed: {e}")))?
}

/// Most writes in one transaction.
const MAX_BATCH: usize = 64;

/// A write waiting for the committer.
#[derive(Debug)]
pub(super) struct Job {
    write: GuardedWrite,
    done: oneshot::Sender<Result<bool, StoreError>>,
}

/// Starts the committer of a SQLite writer pool; writes are sent to the returned channel.
pub(super) fn start_committer(writer: AnyPool) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(1024);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            // Writes of one shape together: the script of a batch is prepared once and cached.
            batch.sort_by_key(|job| (job.write.update, job.write.inserts.len()));
            let writes: Vec<&GuardedWrite> = batch.iter().map(|job| &job.write).collect();
            match commit_batch(&writer, &writes).await {
                Ok(matched) => {
                    for (index, job) in batch.into_iter().enumerate() {
                        let _ = job.done.send(Ok(matched.contains(&index)));
                    }
                }
                // One write refused its data: the others are retried alone, so only it fails.
                Err(err) if err.one_at_fault && batch.len() > 1 => {
                    tracing::warn!(error = %err.error, writes = batch.len(), "retrying the writes of a failed batch one by one");
                    for job in batch {
                        let outcome = commit_alone(&writer, &job.write).await;
                        let _ = job.done.send(outcome);
                    }
                }
                // The database itself failed (or the only write did): every write of the batch
                // fails with it, at once, rather than each waiting out the same failure again.
                Err(err) if batch.len() == 1 => {
                    if let Some(job) = batch.pop() {
                        let error = err.into_store_error(&[&job.write]);
                        let _ = job.done.send(Err(error));
                    }
                }
                Err(err) => {
                    let message = err.error.to_string();
                    for job in batch {
                        let error = StoreError::Database(sqlx::Error::Protocol(message.clone()));
                        let _ = job.done.send(Err(error));
                    }
                }
            }
        }
    });
    tx
}

impl Store {
    /// Runs `write`; `Ok(false)` when its update matched nothing (then nothing is written).
    pub(super) async fn guarded_write(&self, write: GuardedWrite) -> Result<bool, StoreError> {
        let Some(committer) = &self.committer else {
            return self.guarded_write_in_transaction(write).await;
        };
        let (done, outcome) = oneshot::channel();
        match committer.send(Job { write, done }).await {
            Ok(()) => outcome
                .await
                .map_err(|_| StoreError::Corrupt("the committer stopped".into()))?,
            // The committer's runtime has ended (a store used from another runtime): commit
            // alone.
            Err(mpsc::error::SendError(job)) => commit_one(&self.writer, job.write).await,
        }
    }

    async fn guarded_write_in_transaction(&self, write: GuardedWrite) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let matched = bind_all(sqlx::query(write.update), &write.params)
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
        let (sql, params) = batch_script(&[&write, &write]);
        assert_eq!(
            sql,
            "BEGIN IMMEDIATE; UPDATE t SET done = $2 WHERE id = $1 AND done IS NULL RETURNING 0; \
             INSERT INTO u (x, y) SELECT $3, $4 WHERE EXISTS (SELECT 1 FROM t WHERE id = $1 AND done = $2); \
             INSERT INTO v (z) SELECT $5 WHERE EXISTS (SELECT 1 FROM t WHERE id = $1 AND done = $2); \
             UPDATE t SET done = $7 WHERE id = $6 AND done IS NULL RETURNING 1; \
             INSERT INTO u (x, y) SELECT $8, $9 WHERE EXISTS (SELECT 1 FROM t WHERE id = $6 AND done = $7); \
             INSERT INTO v (z) SELECT $10 WHERE EXISTS (SELECT 1 FROM t WHERE id = $6 AND done = $7); COMMIT;"
        );
        assert_eq!(params.len(), 10);
        assert_eq!(
            renumber("a = $1 AND b = $12, '$'", 3),
            "a = $4 AND b = $15, '$'"
        );
        assert_eq!(
            write.inserts[0].sql(),
            "INSERT INTO u (x, y) VALUES ($1, $2)"
        );
    }
}
