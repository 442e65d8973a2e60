//! Signing keys: generation, the private halves on disk, lifecycle state in the database, and
//! the public JWK set.
//!
//! A key moves `next` (published, not signing) -> `current` (signing; exactly one) -> `previous`
//! (published, verifies only) -> `retired` (gone from the JWK set) -> deleted; `lifecycle` holds
//! the schedule and the operator's emergency steps.

mod cookie;
mod es256;
mod files;
mod keyset;
pub mod lifecycle;
mod material;
pub mod sealed;
mod vault;

pub use cookie::session_cookie_key;
pub use files::{KeyFile, prepare_dir};
pub use keyset::{JwtRejection, KeyError, KeySet, KeyStore, LoadedKey, load_or_create};
pub use lifecycle::{RotationPolicy, Transition};
pub use material::{generate, public_jwk, thumbprint};
pub use vault::Vault;

pub use crate::domain::KeyState;
