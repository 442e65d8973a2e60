//! The OAuth endpoints' errors, each turned into its protocol response in exactly one place.
//! Internal causes are logged, never shown.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;
use crate::web;

/// Errors of the registration endpoint (RFC 7591 §3.2.2).
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// A redirect URI is not acceptable.
    #[error("{0}")]
    InvalidRedirectUri(String),
    /// Other metadata is not acceptable, or the body is not a JSON object.
    #[error("{0}")]
    InvalidClientMetadata(String),
    /// The body is larger than the configured limit.
    #[error("the registration request is larger than {0} bytes")]
    TooLarge(usize),
    /// The operator closed registration.
    #[error("dynamic client registration is disabled on this server")]
    Disabled,
    /// Too many registrations from one address.
    #[error("too many registrations")]
    RateLimited(std::time::Duration),
    /// Storage or randomness failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for RegistrationError {
    fn from(err: StoreError) -> Self {
        Self::Internal(err.to_string())
    }
}

impl IntoResponse for RegistrationError {
    fn into_response(self) -> Response {
        let description = self.to_string();
        match self {
            Self::InvalidRedirectUri(_) => web::json_error(
                StatusCode::BAD_REQUEST,
                "invalid_redirect_uri",
                &description,
            ),
            Self::InvalidClientMetadata(_) => web::json_error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                &description,
            ),
            Self::TooLarge(_) => web::json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_client_metadata",
                &description,
            ),
            Self::Disabled => web::json_error(
                StatusCode::FORBIDDEN,
                "access_denied",
                "Dynamic client registration is disabled on this server; ask its operator for a client id",
            ),
            Self::RateLimited(wait) => {
                web::rate_limited(crate::limits::Exhausted::Registration, wait)
            }
            Self::Internal(cause) => {
                tracing::error!(cause = %cause, "registration failed");
                web::json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "The server could not complete the registration",
                )
            }
        }
    }
}

/// Where an authorization error is sent back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorTarget {
    /// The validated redirect URI.
    pub redirect_uri: String,
    /// The client's `state`.
    pub state: Option<String>,
    /// Our issuer (RFC 9207).
    pub iss: String,
}

impl ErrorTarget {
    /// The target for `redirect_uri` and the client's `state`.
    pub fn new(
        state: &crate::state::AppState,
        redirect_uri: &str,
        client_state: Option<&str>,
    ) -> Self {
        Self {
            redirect_uri: redirect_uri.to_owned(),
            state: client_state.map(str::to_owned),
            iss: state.config.issuer.as_str().to_owned(),
        }
    }

    /// The target of a request in progress.
    pub fn for_pending(
        state: &crate::state::AppState,
        pending: &crate::account::session::PendingAuthorization,
    ) -> Self {
        Self::new(state, &pending.redirect_uri, pending.state.as_deref())
    }
}

/// Errors of the authorization endpoint and the pages after it.
#[derive(Debug)]
pub enum AuthorizeError {
    /// The client or its redirect URI cannot be trusted: an error page, never a redirect
    /// (RFC 6749 §4.1.2.1, RFC 9700 §4.1).
    Page {
        /// HTTP status.
        status: StatusCode,
        /// Heading.
        title: &'static str,
        /// What happened.
        message: String,
        /// What the person can do.
        hint: &'static str,
    },
    /// Too many requests of one kind from the person's network: a 429 error page with
    /// `Retry-After`, never a redirect (the client may not be known yet).
    TooMany {
        /// Heading.
        title: &'static str,
        /// What happened, with the wait.
        message: String,
        /// What the person can do.
        hint: &'static str,
        /// How long to wait.
        retry_after: std::time::Duration,
    },
    /// Sent back to the client with `error`, `error_description`, `state` and `iss`.
    Redirect {
        /// Where.
        target: ErrorTarget,
        /// RFC 6749 §4.1.2.1 error code.
        error: &'static str,
        /// Human-readable description.
        description: String,
    },
    /// A failure of ours: a generic page; the cause is logged.
    Internal(String),
}

impl From<StoreError> for AuthorizeError {
    fn from(err: StoreError) -> Self {
        Self::Internal(err.to_string())
    }
}

impl From<crate::account::session::SessionError> for AuthorizeError {
    fn from(err: crate::account::session::SessionError) -> Self {
        Self::Internal(err.to_string())
    }
}

/// A 303 to `uri` with `params` added to its query (a 303, never a 307: the browser must GET the
/// client's callback, and Claude's answers a POST with 405).
pub fn redirect_with(uri: &str, params: &[(&str, &str)]) -> Response {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (name, value) in params {
                    query.append_pair(name, value);
                }
            }
            (
                StatusCode::SEE_OTHER,
                [(axum::http::header::LOCATION, url.to_string())],
            )
                .into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "validated redirect URI failed to parse");
            web::json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Cannot redirect",
            )
        }
    }
}

impl AuthorizeError {
    /// A redirect-back error.
    pub fn redirect(
        target: &ErrorTarget,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self::Redirect {
            target: target.clone(),
            error,
            description: description.into(),
        }
    }

    /// The response; `product` names the server on pages.
    pub fn into_response_for(self, product: &str) -> Response {
        match self {
            Self::Page {
                status,
                title,
                message,
                hint,
            } => crate::pages::error(product, status, title, &message, hint),
            Self::TooMany {
                title,
                message,
                hint,
                retry_after,
            } => web::with_retry_after(
                crate::pages::error(
                    product,
                    StatusCode::TOO_MANY_REQUESTS,
                    title,
                    &message,
                    hint,
                ),
                web::seconds_to_wait(retry_after),
            ),
            Self::Redirect {
                target,
                error,
                description,
            } => {
                let mut params = vec![
                    ("error", error),
                    ("error_description", description.as_str()),
                ];
                if let Some(state) = &target.state {
                    params.push(("state", state));
                }
                params.push(("iss", &target.iss));
                redirect_with(&target.redirect_uri, &params)
            }
            Self::Internal(cause) => {
                tracing::error!(cause = %cause, "authorization failed");
                crate::pages::error(
                    product,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The server could not complete this sign-in.",
                    "Go back to the application and try connecting again.",
                )
            }
        }
    }
}

/// Errors of the token, revocation and introspection endpoints (RFC 6749 §5.2, RFC 7009 §2.2.1):
/// JSON with `Cache-Control: no-store`; `invalid_client` is 401 (with `WWW-Authenticate: Basic`
/// when the client tried Basic), `slow_down` 429 with `Retry-After`, everything else 400, ours
/// 500.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Malformed request.
    #[error("{0}")]
    InvalidRequest(String),
    /// Client authentication failed, or the client is unknown (Claude and the TS SDK register
    /// again on this).
    #[error("{description}")]
    InvalidClient {
        /// Why.
        description: String,
        /// The client tried HTTP Basic.
        basic: bool,
    },
    /// The code or refresh token is invalid, expired, revoked or not this client's.
    #[error("{0}")]
    InvalidGrant(String),
    /// The client may not use this grant type.
    #[error("{0}")]
    UnauthorizedClient(String),
    /// Unknown `grant_type`.
    #[error("{0}")]
    UnsupportedGrantType(String),
    /// Scope wider than granted.
    #[error("{0}")]
    InvalidScope(String),
    /// `resource` (RFC 8707) not the grant's.
    #[error("{0}")]
    InvalidTarget(String),
    /// RFC 7009 §2.2.1.
    #[error("{0}")]
    UnsupportedTokenType(String),
    /// Too many failed requests from this address or for this client (OAuth 2.1 §7.7): 429
    /// with `Retry-After`, `slow_down` (the token endpoint's code for "too fast", RFC 8628 §3.5).
    #[error("too many failed requests; retry in {} s", web::seconds_to_wait(*.0))]
    SlowDown(std::time::Duration),
    /// Ours; the cause is logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for TokenError {
    fn from(err: StoreError) -> Self {
        Self::Internal(err.to_string())
    }
}

impl From<crate::keys::KeyError> for TokenError {
    fn from(err: crate::keys::KeyError) -> Self {
        Self::Internal(err.to_string())
    }
}

impl TokenError {
    /// The RFC 6749 error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidClient { .. } => "invalid_client",
            Self::InvalidGrant(_) => "invalid_grant",
            Self::UnauthorizedClient(_) => "unauthorized_client",
            Self::UnsupportedGrantType(_) => "unsupported_grant_type",
            Self::InvalidScope(_) => "invalid_scope",
            Self::InvalidTarget(_) => "invalid_target",
            Self::UnsupportedTokenType(_) => "unsupported_token_type",
            Self::SlowDown(_) => "slow_down",
            Self::Internal(_) => "server_error",
        }
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let code = self.code();
        if let Self::SlowDown(wait) = self {
            let budget = crate::limits::Exhausted::Failures;
            let mut response = web::too_many(code, &self.to_string(), budget, wait);
            response.headers_mut().insert(
                axum::http::header::PRAGMA,
                axum::http::HeaderValue::from_static("no-cache"),
            );
            return response;
        }
        let (status, description) = match &self {
            Self::InvalidClient { .. } => (StatusCode::UNAUTHORIZED, self.to_string()),
            Self::Internal(cause) => {
                tracing::error!(cause = %cause, "token endpoint failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The server could not complete the request".to_owned(),
                )
            }
            _ => (StatusCode::BAD_REQUEST, self.to_string()),
        };
        let mut response = web::json_error(status, code, &description);
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::PRAGMA,
            axum::http::HeaderValue::from_static("no-cache"),
        );
        if let Self::InvalidClient { basic: true, .. } = self {
            headers.insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(
                    "Basic realm=\"gatehouse\", charset=\"UTF-8\"",
                ),
            );
        }
        response
    }
}
