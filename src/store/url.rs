//! The `database_url` setting, checked before anything connects.

use std::fmt;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;

use super::Backend;

/// A database URL that sqlx accepts, for one of the two supported engines.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    raw: String,
    backend: Backend,
}

impl DatabaseUrl {
    /// Parses `sqlite:...` or `postgres://...` / `postgresql://...`. The error is one line and
    /// never repeats the URL (it may hold a password).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let lower = raw.to_ascii_lowercase();
        let backend = if lower.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(raw)
                .map_err(|e| format!("database_url is not a valid SQLite URL: {e}"))?;
            if lower.contains(":memory:") || lower.contains("mode=memory") {
                return Err("database_url: an in-memory SQLite database would lose every grant on restart; name a file, e.g. sqlite://gatehouse.db".to_owned());
            }
            // The store's connections are sqlx's and the committer's own (rusqlite), which opens
            // the file with SQLite's default VFS. Another VFS would give them different locks
            // (and the dot-file ones no write-ahead log), so they could write at once.
            if lower.contains("vfs=") {
                return Err("database_url: the vfs parameter is not supported; Gatehouse opens SQLite files with the default VFS".to_owned());
            }
            Backend::Sqlite
        } else if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            PgConnectOptions::from_str(raw)
                .map_err(|e| format!("database_url is not a valid PostgreSQL URL: {e}"))?;
            Backend::Postgres
        } else {
            return Err(
                "database_url must start with sqlite:// (embedded file) or postgres:// (shared server)"
                    .to_owned(),
            );
        };
        Ok(Self {
            raw: raw.to_owned(),
            backend,
        })
    }

    /// Which engine the URL names.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The string handed to sqlx: a SQLite file is created on first start (`mode=rwc`).
    pub(crate) fn connect_string(&self) -> String {
        if self.backend == Backend::Sqlite && !self.raw.contains("mode=") {
            let sep = if self.raw.contains('?') { '&' } else { '?' };
            format!("{}{sep}mode=rwc", self.raw)
        } else {
            self.raw.clone()
        }
    }

    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted(&self) -> String {
        let Ok(mut u) = url::Url::parse(&self.raw) else {
            return self.raw.clone();
        };
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        // libpq-style parameters can carry secrets too (`?password=`, `?sslpassword=`).
        let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
        if pairs
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().contains("pass"))
        {
            let mut query = u.query_pairs_mut();
            query.clear();
            for (k, v) in &pairs {
                let secret = k.to_ascii_lowercase().contains("pass");
                query.append_pair(k, if secret { "***" } else { v });
            }
        }
        u.to_string()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_and_errors() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://gatehouse.db").map(|u| u.backend()),
            Ok(Backend::Sqlite)
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://u:p@db.internal/gh").map(|u| u.backend()),
            Ok(Backend::Postgres)
        );
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        assert!(DatabaseUrl::parse("sqlite::memory:").is_err());
        assert!(DatabaseUrl::parse("sqlite://gatehouse.db?vfs=unix-dotfile").is_err());
        let err = DatabaseUrl::parse("postgres://u:secret@db:notaport/gh").expect_err("bad port");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn query_string_password_is_redacted() {
        let url =
            DatabaseUrl::parse("postgres://gh@db.internal/gh?password=hunter2&sslmode=require")
                .unwrap_or_else(|e| panic!("{e}"));
        let shown = url.redacted();
        assert!(
            !shown.contains("hunter2") && shown.contains("sslmode=require"),
            "{shown}"
        );
    }

    #[test]
    fn password_is_redacted() {
        let url = DatabaseUrl::parse("postgres://gh:hunter2@db.internal/gh")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!format!("{url:?} {url}").contains("hunter2"));
    }

    #[test]
    fn sqlite_file_is_created_on_first_start() {
        let url = DatabaseUrl::parse("sqlite://gatehouse.db").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(url.connect_string(), "sqlite://gatehouse.db?mode=rwc");
    }
}
