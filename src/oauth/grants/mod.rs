//! One file per grant type.

pub mod authorization_code;
pub mod client_credentials;
pub mod refresh_token;

use super::error::TokenError;
use super::params::Params;
use crate::domain::{ScopeError, ScopeSet};

/// A grant type the token endpoint supports (RFC 6749 §4.1.3, §6, §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    /// `authorization_code`
    AuthorizationCode,
    /// `refresh_token`
    RefreshToken,
    /// `client_credentials`
    ClientCredentials,
}

impl GrantType {
    /// Every supported grant type, as the metadata lists them.
    pub const ALL: [Self; 3] = [
        Self::AuthorizationCode,
        Self::RefreshToken,
        Self::ClientCredentials,
    ];

    /// The grant type a request names, if supported.
    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == value)
    }

    /// Its protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }

    /// Whether `client` registered for it.
    pub fn registered_by(self, client: &crate::domain::Client) -> bool {
        client.grant_types.iter().any(|g| g == self.as_str())
    }
}

/// A required parameter.
pub fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, TokenError> {
    params
        .get(name)
        .map_err(|_| TokenError::InvalidRequest(format!("{name} is repeated")))?
        .ok_or_else(|| TokenError::InvalidRequest(format!("{name} is required")))
}

/// An optional parameter.
pub fn optional<'a>(params: &'a Params, name: &str) -> Result<Option<&'a str>, TokenError> {
    params
        .get(name)
        .map_err(|_| TokenError::InvalidRequest(format!("{name} is repeated")))
}

/// The scope a request asks for, which must be within `granted` (RFC 6749 §6: never wider);
/// absent means all of `granted`.
pub fn narrowed_scope(requested: Option<&str>, granted: &str) -> Result<String, TokenError> {
    let granted = ScopeSet::parse_lenient(granted);
    let Some(requested) = requested else {
        return Ok(granted.to_string());
    };
    let not_granted = |scope: &str| {
        TokenError::InvalidScope(format!(
            "scope {scope:?} was not granted; the grant covers {:?}",
            granted.to_string()
        ))
    };
    let requested = ScopeSet::parse(requested).map_err(|ScopeError::Invalid(s)| not_granted(&s))?;
    if let Some(scope) = requested.first_missing_from(&granted) {
        return Err(not_granted(scope.as_str()));
    }
    if requested.is_empty() {
        return Err(TokenError::InvalidScope("scope is empty".into()));
    }
    Ok(requested.to_string())
}
