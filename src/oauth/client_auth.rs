//! Client authentication at the token, revocation and introspection endpoints (RFC 6749 §2.3):
//! `none` (public clients send only `client_id`), `client_secret_basic` and
//! `client_secret_post`. Secrets are compared in constant time; an unknown client is 401
//! `invalid_client`, on which MCP clients register again (interop checklist item 29).

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::clients::{ClientLookupError, Lookup, lookup_client};
use super::error::TokenError;
use super::params::Params;
use crate::domain::{Client, Secret};
use crate::state::AppState;

/// What the client presented.
#[derive(Debug)]
pub struct Presented {
    client_id: String,
    secret: Option<Secret>,
    basic: bool,
}

impl Presented {
    /// The `client_id` presented (not yet authenticated).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
}

fn invalid_client(description: &str, basic: bool) -> TokenError {
    TokenError::InvalidClient {
        description: description.to_owned(),
        basic,
    }
}

/// Reads the client's credentials from the `Authorization: Basic` header or the body, refusing
/// requests that use two methods at once (RFC 6749 §2.3).
pub fn presented(headers: &HeaderMap, params: &Params) -> Result<Presented, TokenError> {
    let body_id = params
        .get("client_id")
        .map_err(|_| TokenError::InvalidRequest("client_id is repeated".into()))?;
    let body_secret = params
        .get("client_secret")
        .map_err(|_| TokenError::InvalidRequest("client_secret is repeated".into()))?;
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        });
    match basic {
        Some(encoded) => {
            if body_secret.is_some() {
                return Err(TokenError::InvalidRequest(
                    "use one client authentication method: Basic or client_secret in the body, not both".into(),
                ));
            }
            let decoded = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    invalid_client("the Basic credentials are not valid base64", true)
                })?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(|| invalid_client("the Basic credentials have no ':'", true))?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded.
            let decode = |s: &str| {
                url::form_urlencoded::parse(format!("v={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            let id = decode(id);
            if body_id.is_some_and(|b| b != id) {
                return Err(TokenError::InvalidRequest(
                    "client_id differs from the Basic credentials".into(),
                ));
            }
            Ok(Presented {
                client_id: id,
                secret: Some(Secret::presented(&decode(secret))),
                basic: true,
            })
        }
        None => {
            let id = body_id.ok_or_else(|| {
                invalid_client("client authentication is required (client_id)", false)
            })?;
            Ok(Presented {
                client_id: id.to_owned(),
                secret: body_secret.map(Secret::presented),
                basic: false,
            })
        }
    }
}

/// Authenticates the client that presented `credentials`; `lookup` says whether a recently read
/// copy of the client will do (see [`crate::oauth::clients::ClientCache`]).
pub async fn authenticate(
    state: &AppState,
    credentials: Presented,
    lookup: Lookup,
) -> Result<Client, TokenError> {
    let basic = credentials.basic;
    let client = match lookup_client(state, &credentials.client_id, None, lookup).await {
        Ok(client) => client,
        Err(ClientLookupError::Unknown(_)) => return Err(invalid_client("unknown client", basic)),
        Err(ClientLookupError::Metadata(e)) => {
            return Err(invalid_client(&e.public_message(), basic));
        }
        Err(ClientLookupError::RateLimited(_)) => {
            return Err(invalid_client("client could not be verified now", basic));
        }
        Err(ClientLookupError::Store(e)) => return Err(e.into()),
    };
    match (client.is_confidential(), &credentials.secret) {
        (true, Some(secret)) if client.verify_secret(secret) => Ok(client),
        (true, Some(_)) => Err(invalid_client("client authentication failed", basic)),
        (true, None) => Err(invalid_client(
            "this client must authenticate with its secret",
            basic,
        )),
        (false, None) => Ok(client),
        (false, Some(_)) => Err(invalid_client(
            "this is a public client: send client_id without a secret",
            basic,
        )),
    }
}
