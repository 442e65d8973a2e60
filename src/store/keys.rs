//! The `signing_keys` table: public half and lifecycle state of each signing key.

use time::OffsetDateTime;

use super::{Store, StoreError, from_unix};
use crate::domain::SigningAlgorithm;
use crate::keys::KeyState;

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
            kid: row.kid,
            public_jwk: row.public_jwk,
        })
    }
}

const KEY_COLUMNS: &str =
    "kid, alg, state, public_jwk, created_at, activated_at, retire_after, retired_at";

impl Store {
    /// Inserts a key. A second `current` key, or a duplicate `kid`, is a [`StoreError::Conflict`].
    pub async fn insert_signing_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, state, public_jwk, created_at, activated_at, retire_after, retired_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&key.kid)
        .bind(key.alg.as_str())
        .bind(key.state.as_str())
        .bind(&key.public_jwk)
        .bind(key.created_at.unix_timestamp())
        .bind(key.activated_at.map(OffsetDateTime::unix_timestamp))
        .bind(key.retire_after.map(OffsetDateTime::unix_timestamp))
        .bind(key.retired_at.map(OffsetDateTime::unix_timestamp))
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::from_write(e, &format!("signing key {} (or a second current key)", key.kid)))?;
        Ok(())
    }

    /// Every key, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid");
        let rows: Vec<KeyRow> = sqlx::query_as(&sql).fetch_all(&self.pool).await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    /// One key by `kid`.
    pub async fn signing_key(&self, kid: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM signing_keys WHERE kid = $1");
        let row: Option<KeyRow> = sqlx::query_as(&sql)
            .bind(kid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(KeyRecord::try_from).transpose()
    }
}
