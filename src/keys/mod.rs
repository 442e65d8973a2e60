//! Signing keys: generation, the private halves on disk, lifecycle state in the database, and
//! the public JWK set.
//!
//! A key moves `next` (published, not signing) -> `current` (signing; exactly one) -> `previous`
//! (published, verifies only) -> `retired` (gone from the JWK set) -> deleted; `lifecycle` holds
//! the schedule and the operator's emergency steps.

mod cookie;
mod files;
mod keyset;
pub mod lifecycle;
mod material;
mod vault;

pub use cookie::session_cookie_key;
pub use files::{KeyFile, prepare_dir};
pub use keyset::{JwtRejection, KeyError, KeySet, KeyStore, LoadedKey, load_or_create};
pub use lifecycle::{RotationPolicy, Transition};
pub use material::{generate, public_jwk, thumbprint};
pub use vault::Vault;

/// Where a key is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyState {
    /// Published in the JWK set, not yet signing.
    Next,
    /// Signing new tokens.
    Current,
    /// Published so tokens it signed still verify; no longer signing.
    Previous,
    /// Withdrawn: tokens it signed no longer verify.
    Retired,
}

impl KeyState {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Current => "current",
            Self::Previous => "previous",
            Self::Retired => "retired",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "next" => Some(Self::Next),
            "current" => Some(Self::Current),
            "previous" => Some(Self::Previous),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }

    /// True for the states whose public key is in the JWK set.
    pub fn is_published(self) -> bool {
        !matches!(self, Self::Retired)
    }
}
