//! Tokens: RFC 9068 JWT access tokens, and the in-memory revocation view the resource side checks
//! on every request. (Sealing, which keeps a refresh's response for a retry, is in
//! [`crate::keys::sealed`].)

pub mod access;
pub mod revocation;

pub use crate::keys::sealed;
pub use access::{
    AccessClaims, AccessToken, NotAnAccessToken, TokenResponse, mint, read_access_claims,
};
pub use revocation::RevocationView;
