//! The `signing_keys` table: public half and lifecycle state of each signing key.

use time::OffsetDateTime;

use sqlx::Connection;

use super::{Store, StoreError, from_unix};
use crate::domain::KeyState;
use crate::domain::SigningAlgorithm;

/// A signing key as stored: everything but the private half.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// Signing algorithm.
    pub alg: SigningAlgorithm,
    /// Lifecycle state.
    pub state: KeyState,
    /// The public JWK as JSON text.
    pub public_jwk: String,
    /// When the key was generated.
    pub created_at: OffsetDateTime,
    /// When it started signing.
    pub activated_at: Option<OffsetDateTime>,
    /// When it may be retired (after the longest token it signed has expired).
    pub retire_after: Option<OffsetDateTime>,
    /// When it was retired.
    pub retired_at: Option<OffsetDateTime>,
    /// For a `next` key: when it starts signing.
    pub activate_after: Option<OffsetDateTime>,
    /// The private JWK sealed under the key-encryption passphrase, when one is configured, so
    /// every instance sharing the database can load it. Never the private key in clear.
    pub private_sealed: Option<String>,
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    kid: String,
    alg: String,
    state: String,
    public_jwk: String,
    created_at: i64,
    activated_at: Option<i64>,
    retire_after: Option<i64>,
    retired_at: Option<i64>,
    activate_after: Option<i64>,
    private_sealed: Option<String>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StoreError;
    fn try_from(row: KeyRow) -> Result<Self, StoreError> {
        Ok(Self {
            alg: SigningAlgorithm::parse(&row.alg).ok_or_else(|| {
                StoreError::Corrupt(format!("key {}: algorithm {:?}", row.kid, row.alg))
            })?,
            state: KeyState::parse(&row.state).ok_or_else(|| {
                StoreError::Corrupt(format!("key {}: state {:?}", row.kid, row.state))
            })?,
            created_at: from_unix(row.created_at)?,
            activated_at: row.activated_at.map(from_unix).transpose()?,
            retire_after: row.retire_after.map(from_unix).transpose()?,
            retired_at: row.retired_at.map(from_unix).transpose()?,
            activate_after: row.activate_after.map(from_unix).transpose()?,
            private_sealed: row.private_sealed,
            kid: row.kid,
            public_jwk: row.public_jwk,
        })
    }
}

const KEY_COLUMNS: &str = "kid, alg, state, public_jwk, created_at, activated_at, retire_after, \
     retired_at, activate_after, private_sealed";

fn unix(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(OffsetDateTime::unix_timestamp)
}

impl Store {
    /// Inserts a key. A second `current` or `next` key, or a duplicate `kid`, is a
    /// [`StoreError::Conflict`].
    pub async fn insert_signing_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        );
        sqlx::query(&sql)
            .bind(&key.kid)
            .bind(key.alg.as_str())
            .bind(key.state.as_str())
            .bind(&key.public_jwk)
            .bind(key.created_at.unix_timestamp())
            .bind(unix(key.activated_at))
            .bind(unix(key.retire_after))
            .bind(unix(key.retired_at))
            .bind(unix(key.activate_after))
            .bind(&key.private_sealed)
            .execute(&mut *self.writer().await?)
            .await
            .map_err(|e| {
                StoreError::from_write(
                    e,
                    &format!(
                        "signing key {} (or a second {} key)",
                        key.kid,
                        key.state.as_str()
                    ),
                )
            })?;
        Ok(())
    }

    /// Makes `next_kid` the signing key and `current_kid` a previous key that may be retired
    /// after `retire_after`, in one transaction. Both rows must still be in the state the caller
    /// saw: when another instance (or the CLI) got there first, nothing changes and the answer
    /// is `false`.
    pub async fn promote_signing_key(
        &self,
        current_kid: &str,
        next_kid: &str,
        now: OffsetDateTime,
        retire_after: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        // The old key steps down first: the unique index admits one current key at a time.
        let demoted = sqlx::query(
            "UPDATE signing_keys SET state = 'previous', retire_after = $1 \
             WHERE kid = $2 AND state = 'current'",
        )
        .bind(retire_after.unix_timestamp())
        .bind(current_kid)
        .execute(&mut *tx)
        .await?;
        let promoted = sqlx::query(
            "UPDATE signing_keys SET state = 'current', activated_at = $1, activate_after = NULL \
             WHERE kid = $2 AND state = 'next'",
        )
        .bind(now.unix_timestamp())
        .bind(next_kid)
        .execute(&mut *tx)
        .await?;
        if demoted.rows_affected() != 1 || promoted.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Withdraws a key that does not sign (`next` or `previous`): tokens it signed stop
    /// verifying. `false` when the key is not in one of those states (any more).
    pub async fn retire_signing_key(
        &self,
        kid: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE signing_keys SET state = 'retired', retired_at = $1, activate_after = NULL, \
             private_sealed = NULL WHERE kid = $2 AND state IN ('next', 'previous')",
        )
        .bind(now.unix_timestamp())
        .bind(kid)
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes a retired key's record. `false` when it is not retired.
    pub async fn delete_retired_signing_key(&self, kid: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM signing_keys WHERE kid = $1 AND state = 'retired'")
            .bind(kid)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every key, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid");
        let rows: Vec<KeyRow> = sqlx::query_as(&sql)
            .fetch_all(&mut *self.reader().await?)
            .await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    /// One key by `kid`.
    pub async fn signing_key(&self, kid: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM signing_keys WHERE kid = $1");
        let row: Option<KeyRow> = sqlx::query_as(&sql)
            .bind(kid)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.map(KeyRecord::try_from).transpose()
    }
}
