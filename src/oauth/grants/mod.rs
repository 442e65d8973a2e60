//! One file per grant type.

pub mod authorization_code;
pub mod client_credentials;
pub mod refresh_token;

use time::OffsetDateTime;

use super::error::TokenError;
use super::params::Params;
use crate::config::Config;
use crate::domain::Client;
use crate::keys::KeyStore;
use crate::store::Store;
use crate::tokens::{RevocationView, TokenResponse};

pub use authorization_code::ExchangeRequest;
pub use client_credentials::ServiceRequest;
pub use refresh_token::RefreshRequest;

/// What a grant works with: the moment of the request, and the parts of the server it reads
/// and changes. Nothing else of the application reaches a grant.
#[derive(Debug)]
pub struct GrantContext<'a> {
    /// The settings.
    pub config: &'a Config,
    /// The database.
    pub store: &'a Store,
    /// The signing keys.
    pub keys: &'a KeyStore,
    /// The revocations the resource side checks (a reuse revokes at once here too).
    pub revocations: &'a RevocationView,
    /// The request's time, read once.
    pub now: OffsetDateTime,
}

/// A token request's parameters, read for its grant type once the client is authenticated.
#[derive(Debug)]
pub enum TokenRequest<'a> {
    /// `authorization_code`
    AuthorizationCode(ExchangeRequest<'a>),
    /// `refresh_token`
    RefreshToken(RefreshRequest<'a>),
    /// `client_credentials`
    ClientCredentials(ServiceRequest<'a>),
}

impl<'a> TokenRequest<'a> {
    /// Reads `params` for `grant`: first whether `client` may use the grant, then its parameters.
    pub fn read(
        grant: GrantType,
        client: &Client,
        config: &Config,
        params: &'a Params,
    ) -> Result<Self, TokenError> {
        Ok(match grant {
            GrantType::AuthorizationCode => {
                Self::AuthorizationCode(ExchangeRequest::read(client, params)?)
            }
            GrantType::RefreshToken => Self::RefreshToken(RefreshRequest::read(params)?),
            GrantType::ClientCredentials => {
                Self::ClientCredentials(ServiceRequest::read(client, config, params)?)
            }
        })
    }

    /// Runs the grant: the tokens, or the error to answer.
    pub async fn run(
        &self,
        ctx: &GrantContext<'_>,
        client: &Client,
    ) -> Result<TokenResponse, TokenError> {
        match self {
            Self::AuthorizationCode(request) => {
                authorization_code::exchange(ctx, client, request).await
            }
            Self::RefreshToken(request) => refresh_token::refresh(ctx, client, request).await,
            Self::ClientCredentials(request) => {
                client_credentials::issue(ctx, client, request).await
            }
        }
    }
}
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
