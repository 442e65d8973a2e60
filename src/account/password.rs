//! Password hashing with argon2id (RFC 9106 parameters of the argon2 crate: m=19456 KiB, t=2,
//! p=1), always off the async worker threads: one hash costs ~18 ms of a core.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// Shortest and longest accepted passwords.
pub const MIN_LEN: usize = 8;
/// Longest accepted password (bounds the hashing work an attacker can ask for).
pub const MAX_LEN: usize = 1024;

/// Why a password could not be set.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Too short or too long.
    #[error("the password must be {MIN_LEN} to {MAX_LEN} characters long")]
    Length,
    /// The hasher failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hashes a new password (argon2id, random salt) on a blocking thread.
pub async fn hash(password: String) -> Result<String, PasswordError> {
    if !(MIN_LEN..=MAX_LEN).contains(&password.chars().count()) {
        return Err(PasswordError::Length);
    }
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| PasswordError::Hash(e.to_string()))?
}

/// A real argon2id hash of a random password nobody knows, verified against when the user does
/// not exist, so an unknown name costs the same time as a wrong password. Made once.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let random = crate::domain::random_token(32).unwrap_or_else(|_| "x".repeat(43));
            Argon2::default()
                .hash_password(random.as_bytes())
                .map(|h| h.to_string())
                .unwrap_or_default()
        })
        .clone()
}

/// Checks `password` against `stored` (or against a dummy hash when there is no such user) on a
/// blocking thread. Over-long passwords are refused without hashing.
pub async fn verify(password: String, stored: Option<String>) -> bool {
    if password.chars().count() > MAX_LEN {
        return false;
    }
    let exists = stored.is_some();
    let ok = tokio::task::spawn_blocking(move || {
        let hash = stored.unwrap_or_else(dummy_hash);
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false);
    ok && exists
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let stored = hash("correct horse".to_owned()).await.expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify("correct horse".to_owned(), Some(stored.clone())).await);
        assert!(!verify("wrong horse".to_owned(), Some(stored)).await);
        assert!(!verify("correct horse".to_owned(), None).await);
        assert!(matches!(
            hash("short".to_owned()).await,
            Err(PasswordError::Length)
        ));
    }
}
