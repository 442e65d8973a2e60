//! Users and user names.

use std::fmt;

use time::OffsetDateTime;

/// A user name: 1 to 64 characters from `A-Z a-z 0-9 . _ @ + -`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Username(String);

/// Why a user name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user name {0:?} must be 1 to 64 characters of letters, digits and . _ @ + -")]
pub struct UsernameError(pub String);

impl Username {
    /// Parses a user name.
    pub fn parse(raw: &str) -> Result<Self, UsernameError> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(UsernameError(raw.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A person who can sign in.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// Stable opaque id: the `sub` of their tokens.
    pub id: String,
    /// What they type on the login page.
    pub username: Username,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Role names; each maps to scopes in the configuration.
    pub roles: Vec<String>,
    /// When the account was created.
    pub created_at: OffsetDateTime,
    /// When the password last changed (sessions from before are ended).
    pub password_changed_at: OffsetDateTime,
    /// When all their browser sessions were ended by the operator (sessions from before are
    /// ended), if ever.
    pub signed_out_at: Option<OffsetDateTime>,
    /// When an admin locked the account, if it is locked: nobody signs in as it and its API
    /// tokens are refused until it is unlocked.
    pub locked_at: Option<OffsetDateTime>,
}

impl User {
    /// A new account created at `now`: never signed out, not locked. `password_hash` is empty
    /// for one that signs in only through an identity provider or has yet to choose a password.
    pub fn new(
        id: String,
        username: Username,
        password_hash: String,
        roles: Vec<String>,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            id,
            username,
            password_hash,
            roles,
            created_at: now,
            password_changed_at: now,
            signed_out_at: None,
            locked_at: None,
        }
    }

    /// A new opaque user id: `u_` and 128 random bits.
    pub fn new_id() -> Result<String, ring::error::Unspecified> {
        Ok(format!("u_{}", super::random_token(16)?))
    }

    /// Whether a browser session that signed in at `at` (unix seconds) still counts: not if
    /// the password changed, or the operator signed the user out everywhere, after it, nor
    /// while the account is locked.
    pub fn session_valid(&self, at: i64) -> bool {
        if self.locked_at.is_some() {
            return false;
        }
        let ended = self.signed_out_at.map_or(self.password_changed_at, |t| {
            t.max(self.password_changed_at)
        });
        ended.unix_timestamp() <= at
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}
