//! API tokens: created by a person (or an admin for them), stored as the hash of the whole
//! token, listed without it, revoked for good.

use time::OffsetDateTime;

use super::{Store, StoreError, from_unix};

/// An API token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    /// Its id (the part of the token after `gh_pat_`, before the secret).
    pub token_id: String,
    /// Whose it is.
    pub user_id: String,
    /// The name its owner gave it.
    pub name: String,
    /// SHA-256 of the whole token.
    pub secret_hash: String,
    /// Scopes it carries, space-separated.
    pub scopes: String,
    /// When it was created.
    pub created_at: OffsetDateTime,
    /// When it stops working; `None`: never.
    pub expires_at: Option<OffsetDateTime>,
    /// When `/mcp` last accepted it (to the minute).
    pub last_used_at: Option<OffsetDateTime>,
    /// When it was revoked.
    pub revoked_at: Option<OffsetDateTime>,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

const COLUMNS: &str = "token_id, user_id, name, secret_hash, scopes, created_at, expires_at, \
                       last_used_at, revoked_at";

fn record(row: Row) -> Result<ApiTokenRecord, StoreError> {
    let at = |t: Option<i64>| t.map(from_unix).transpose();
    Ok(ApiTokenRecord {
        token_id: row.0,
        user_id: row.1,
        name: row.2,
        secret_hash: row.3,
        scopes: row.4,
        created_at: from_unix(row.5)?,
        expires_at: at(row.6)?,
        last_used_at: at(row.7)?,
        revoked_at: at(row.8)?,
    })
}

impl Store {
    /// Stores a new API token.
    pub async fn insert_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO api_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .bind(&token.token_id)
        .bind(&token.user_id)
        .bind(&token.name)
        .bind(&token.secret_hash)
        .bind(&token.scopes)
        .bind(token.created_at.unix_timestamp())
        .bind(token.expires_at.map(OffsetDateTime::unix_timestamp))
        .bind(token.last_used_at.map(OffsetDateTime::unix_timestamp))
        .bind(token.revoked_at.map(OffsetDateTime::unix_timestamp))
        .execute(&mut *self.writer().await?)
        .await
        .map_err(|e| StoreError::from_write(e, "api token"))?;
        Ok(())
    }

    /// The API token with this id.
    pub async fn api_token(&self, token_id: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE token_id = $1"
        ))
        .bind(token_id)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        row.map(record).transpose()
    }

    /// API tokens of one user (or everyone's), newest first, revoked ones included.
    pub async fn api_tokens(
        &self,
        user_id: Option<&str>,
    ) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE ($1 IS NULL OR user_id = $1) \
             ORDER BY created_at DESC, token_id"
        ))
        .bind(user_id)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.into_iter().map(record).collect()
    }

    /// Revokes an API token (of `user_id`, when given): whether a live one was revoked.
    pub async fn revoke_api_token(
        &self,
        token_id: &str,
        user_id: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $3 WHERE token_id = $1 \
             AND ($2 IS NULL OR user_id = $2) AND revoked_at IS NULL",
        )
        .bind(token_id)
        .bind(user_id)
        .bind(at.unix_timestamp())
        .execute(&mut *self.writer().await?)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that `/mcp` accepted the token at `at`.
    pub async fn touch_api_token(
        &self,
        token_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE token_id = $1")
            .bind(token_id)
            .bind(at.unix_timestamp())
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(())
    }
}
