//! Guarded writes: a conditional `UPDATE` that may happen at most once (a code consumed, a
//! refresh token rotated), then the rows that follow from it, all in one transaction.
//!
//! On PostgreSQL this is an ordinary transaction, statement by statement. On SQLite every
//! statement is a round trip to the connection's own thread, and those round trips (thread
//! wake-ups), not SQLite, set the token endpoint's rate (`BENCHMARKS.md`). There the whole
//! transaction is one script sent in one round trip: `BEGIN IMMEDIATE`, the guarded update
//! (`RETURNING 1` says whether it matched), each insert as `INSERT ... SELECT ... WHERE <the update
//! matched>`, `COMMIT`. The script runs on its own task, so a client that hangs up cannot cut it
//! in half; a statement that fails is followed by `ROLLBACK`.

use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

use super::{Backend, Store, StoreError};

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

    /// Runs it in `tx`.
    pub async fn execute(&self, tx: &mut sqlx::Transaction<'_, Any>) -> Result<(), StoreError> {
        self.execute_on(&mut **tx).await
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

impl GuardedWrite {
    /// The SQLite script: one transaction, one round trip.
    fn script(&self) -> (String, Vec<Param>) {
        let mut sql = format!("BEGIN IMMEDIATE; {} RETURNING 1;", self.update);
        let mut params = self.params.clone();
        for insert in &self.inserts {
            sql.push_str(&format!(
                " INSERT INTO {} ({}) SELECT {} WHERE {};",
                insert.table,
                insert.columns,
                insert.placeholders(params.len() + 1),
                self.applied
            ));
            params.extend(insert.values.iter().cloned());
        }
        sql.push_str(" COMMIT;");
        (sql, params)
    }
}

impl Store {
    /// Runs `write`; `Ok(false)` when its update matched nothing (then nothing is written).
    pub(super) async fn guarded_write(&self, write: GuardedWrite) -> Result<bool, StoreError> {
        match self.backend {
            Backend::Postgres => self.guarded_write_in_transaction(write).await,
            Backend::Sqlite => {
                let writer = self.writer.clone();
                let what = write
                    .inserts
                    .first()
                    .map(|i| i.what.clone())
                    .unwrap_or_default();
                tokio::spawn(async move {
                    let (sql, params) = write.script();
                    let mut conn = writer.acquire().await?;
                    match bind_all(sqlx::query(&sql), &params)
                        .fetch_all(&mut *conn)
                        .await
                    {
                        Ok(rows) => Ok(!rows.is_empty()),
                        Err(err) => {
                            // The script stopped at the failing statement, inside its
                            // transaction: end it, or drop the connection if even that fails.
                            if sqlx::query("ROLLBACK").execute(&mut *conn).await.is_err() {
                                drop(conn.detach());
                            }
                            Err(StoreError::from_write(err, &what))
                        }
                    }
                })
                .await
                .map_err(|e| StoreError::Corrupt(format!("write task failed: {e}")))?
            }
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
            insert.execute(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_numbers_every_insert_after_the_update() {
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
        let (sql, params) = write.script();
        assert_eq!(
            sql,
            "BEGIN IMMEDIATE; UPDATE t SET done = $2 WHERE id = $1 AND done IS NULL RETURNING 1; \
             INSERT INTO u (x, y) SELECT $3, $4 WHERE EXISTS (SELECT 1 FROM t WHERE id = $1 AND done = $2); \
             INSERT INTO v (z) SELECT $5 WHERE EXISTS (SELECT 1 FROM t WHERE id = $1 AND done = $2); COMMIT;"
        );
        assert_eq!(params.len(), 5);
        assert_eq!(
            write.inserts[0].sql(),
            "INSERT INTO u (x, y) VALUES ($1, $2)"
        );
    }
}
