//! Tokens: RFC 9068 JWT access tokens, the sealed responses that make retries idempotent, and
//! the in-memory revocation view the resource side checks on every request.

pub mod access;
pub mod revocation;
pub mod sealed;

pub use access::{AccessClaims, AccessToken, TokenResponse, mint};
pub use revocation::RevocationView;
