//! The browser-session store: tower-sessions records kept in our own database through the same
//! pool and migrations as everything else (one query set for SQLite and PostgreSQL).
//!
//! A session id is a bearer secret (with the cookie key, it makes a valid cookie), so the
//! database holds only its SHA-256, like every other secret here: someone who reads the database
//! file cannot take over a signed-in browser. (Sessions stored before by their plain id are
//! simply never found again, and expire.)

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use super::Store;

/// [`Store`] as a tower-sessions [`SessionStore`].
#[derive(Debug, Clone)]
pub struct SessionStoreAdapter(pub Store);

/// The stored form of a session id: its hash.
fn stored(id: &Id) -> String {
    crate::domain::Secret::presented(&id.to_string())
        .hash()
        .as_str()
        .to_owned()
}

fn backend(err: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(err.to_string())
}

#[async_trait]
impl SessionStore for SessionStoreAdapter {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // A fresh id that collides with a live one gets another id, never the other's data.
        loop {
            let data = serde_json::to_string(&record.data)
                .map_err(|e| session_store::Error::Encode(e.to_string()))?;
            let inserted = sqlx::query(
                "INSERT INTO sessions (id, data, expires_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            )
            .bind(stored(&record.id))
            .bind(data)
            .bind(record.expiry_date.unix_timestamp())
            .execute(&mut *self.0.writer().await.map_err(backend)?)
            .await
            .map_err(backend)?;
            if inserted.rows_affected() == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_string(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        sqlx::query(
            "INSERT INTO sessions (id, data, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
        )
        .bind(stored(&record.id))
        .bind(data)
        .bind(record.expiry_date.unix_timestamp())
        .execute(&mut *self.0.writer().await.map_err(backend)?)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT data, expires_at FROM sessions WHERE id = $1 AND expires_at > $2",
        )
        .bind(stored(id))
        .bind(OffsetDateTime::now_utc().unix_timestamp())
        .fetch_optional(&mut *self.0.reader().await.map_err(backend)?)
        .await
        .map_err(backend)?;
        let Some((data, expires_at)) = row else {
            return Ok(None);
        };
        Ok(Some(Record {
            id: *id,
            data: serde_json::from_str(&data)
                .map_err(|e| session_store::Error::Decode(e.to_string()))?,
            expiry_date: OffsetDateTime::from_unix_timestamp(expires_at).map_err(backend)?,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(stored(id))
            .execute(&mut *self.0.writer().await.map_err(backend)?)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

impl Store {
    /// Deletes expired sessions; returns how many.
    pub async fn delete_expired_sessions(
        &self,
        now: OffsetDateTime,
    ) -> Result<u64, super::StoreError> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now.unix_timestamp())
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(done.rows_affected())
    }
}
