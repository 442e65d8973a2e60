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
            Self::RateLimited(wait) => web::rate_limited(wait),
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
