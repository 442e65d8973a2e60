//! The browser-session store: tower-sessions records kept in our own database through the same
//! pool and migrations as everything else (one query set for SQLite and PostgreSQL).
//!
//! A session id is a bearer secret (with the cookie key, it makes a valid cookie), so the
//! database holds only its SHA-256, like every other secret here: someone who reads the database
//! file cannot take over a signed-in browser. (Sessions stored before by their plain id are
//! simply never found again, and expire.)
//!
//! On SQLite, where this process is the only one serving the sessions in the file, a session it
//! read is kept in memory for a while ([`SessionCache`]): authorize with a remembered consent
//! reads the browser session on every call and changes nothing in it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use super::Store;

/// Most sessions kept in memory; beyond, expired ones go, then all (a miss costs one read).
const CACHE_CAPACITY: usize = 10_000;
/// How long a session read is kept.
const CACHE_TTL: Duration = Duration::from_secs(60);

/// Sessions read recently, by the hash of their id. Never written through: a write (or delete)
/// drops the key before and after it reaches the database, and a read made while any write was
/// in flight is not kept, so what is kept is never older than the database.
#[derive(Debug, Default)]
pub(super) struct SessionCache {
    /// Off where other processes serve the same sessions (PostgreSQL).
    enabled: bool,
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    records: HashMap<String, (Record, Instant)>,
    /// Writes begun or ended so far.
    writes: u64,
}

impl SessionCache {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The kept record of `key`, if it is recent and the session has not expired.
    fn get(&self, key: &str, now: OffsetDateTime) -> Option<Record> {
        if !self.enabled {
            return None;
        }
        self.inner()
            .records
            .get(key)
            .filter(|(record, at)| at.elapsed() < CACHE_TTL && record.expiry_date > now)
            .map(|(record, _)| record.clone())
    }

    /// The write count to hand to [`SessionCache::keep`] after a read.
    fn writes(&self) -> u64 {
        self.inner().writes
    }

    /// Keeps what a read begun at `writes` found, unless a write began or ended since.
    fn keep(&self, key: &str, record: &Record, writes: u64) {
        if !self.enabled {
            return;
        }
        let mut inner = self.inner();
        if inner.writes != writes {
            return;
        }
        if inner.records.len() >= CACHE_CAPACITY {
            let now = OffsetDateTime::now_utc();
            inner
                .records
                .retain(|_, (r, at)| at.elapsed() < CACHE_TTL && r.expiry_date > now);
            if inner.records.len() >= CACHE_CAPACITY {
                inner.records.clear();
            }
        }
        inner
            .records
            .insert(key.to_owned(), (record.clone(), Instant::now()));
    }

    /// Drops `key`, before a write to it and again after.
    fn drop_key(&self, key: &str) {
        let mut inner = self.inner();
        inner.writes = inner.writes.wrapping_add(1);
        inner.records.remove(key);
    }
}

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
            let key = stored(&record.id);
            self.0.sessions.drop_key(&key);
            let inserted = sqlx::query(
                "INSERT INTO sessions (id, data, expires_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&key)
            .bind(data)
            .bind(record.expiry_date.unix_timestamp())
            .execute(&mut *self.0.writer().await.map_err(backend)?)
            .await;
            self.0.sessions.drop_key(&key);
            if inserted.map_err(backend)?.rows_affected() == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_string(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let key = stored(&record.id);
        self.0.sessions.drop_key(&key);
        let saved = sqlx::query(
            "INSERT INTO sessions (id, data, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
        )
        .bind(&key)
        .bind(data)
        .bind(record.expiry_date.unix_timestamp())
        .execute(&mut *self.0.writer().await.map_err(backend)?)
        .await;
        self.0.sessions.drop_key(&key);
        saved.map_err(backend)?;
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let key = stored(id);
        let now = OffsetDateTime::now_utc();
        if let Some(record) = self.0.sessions.get(&key, now) {
            return Ok(Some(record));
        }
        let writes = self.0.sessions.writes();
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT data, expires_at FROM sessions WHERE id = $1 AND expires_at > $2",
        )
        .bind(&key)
        .bind(now.unix_timestamp())
        .fetch_optional(&mut *self.0.reader().await.map_err(backend)?)
        .await
        .map_err(backend)?;
        let Some((data, expires_at)) = row else {
            return Ok(None);
        };
        let record = Record {
            id: *id,
            data: serde_json::from_str(&data)
                .map_err(|e| session_store::Error::Decode(e.to_string()))?,
            expiry_date: OffsetDateTime::from_unix_timestamp(expires_at).map_err(backend)?,
        };
        self.0.sessions.keep(&key, &record, writes);
        Ok(Some(record))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let key = stored(id);
        self.0.sessions.drop_key(&key);
        let deleted = sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(&key)
            .execute(&mut *self.0.writer().await.map_err(backend)?)
            .await;
        self.0.sessions.drop_key(&key);
        deleted.map_err(backend)?;
        Ok(())
    }
}

impl Store {
    /// Deletes expired sessions; returns how many.
    pub async fn delete_expired_sessions(
        &self,
        now: OffsetDateTime,
    ) -> Result<u64, super::StoreError> {
        // Expired sessions are never served from memory either.
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now.unix_timestamp())
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: i64) -> Record {
        Record {
            id: Id(n.into()),
            data: HashMap::from([("n".to_owned(), serde_json::json!(n))]),
            expiry_date: OffsetDateTime::now_utc() + time::Duration::hours(1),
        }
    }

    #[test]
    fn a_read_overtaken_by_a_write_is_not_kept() {
        let cache = SessionCache::new(true);
        let now = OffsetDateTime::now_utc();
        // A read that began before a write to any session finished is not kept...
        let before = cache.writes();
        cache.drop_key("a");
        cache.keep("b", &record(1), before);
        assert!(cache.get("b", now).is_none());
        // ... nor one that began while it was in flight (the write's second drop).
        let during = cache.writes();
        cache.drop_key("a");
        cache.keep("a", &record(1), during);
        assert!(cache.get("a", now).is_none());
        // A read with no write since is kept until the next write to its key.
        let quiet = cache.writes();
        cache.keep("a", &record(2), quiet);
        assert_eq!(
            cache.get("a", now).map(|r| r.data["n"].clone()),
            Some(serde_json::json!(2))
        );
        cache.drop_key("a");
        assert!(cache.get("a", now).is_none());
    }

    #[test]
    fn expired_sessions_are_not_served_and_postgres_keeps_nothing() {
        let cache = SessionCache::new(true);
        let mut expired = record(1);
        expired.expiry_date = OffsetDateTime::now_utc() - time::Duration::seconds(1);
        cache.keep("a", &expired, cache.writes());
        assert!(cache.get("a", OffsetDateTime::now_utc()).is_none());

        let off = SessionCache::new(false);
        off.keep("a", &record(1), off.writes());
        assert!(off.get("a", OffsetDateTime::now_utc()).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = SessionCache::new(true);
        for n in 0..(CACHE_CAPACITY as i64 + 10) {
            cache.keep(&n.to_string(), &record(n), cache.writes());
        }
        assert!(cache.inner().records.len() <= CACHE_CAPACITY);
    }
}
