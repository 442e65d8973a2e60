//! Client authentication at the token, revocation and introspection endpoints (RFC 6749 §2.3):
//! `none` (public clients send only `client_id`), `client_secret_basic` and
//! `client_secret_post`. Secrets are compared in constant time; an unknown client is 401
//! `invalid_client`, on which MCP clients (Claude, the TS SDK) register again.

use std::net::IpAddr;

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
struct PresentedClient {
    client_id: String,
    secret: Option<Secret>,
    basic: bool,
}

fn invalid_client(description: &str, basic: bool) -> TokenError {
    TokenError::InvalidClient {
        description: description.to_owned(),
        basic,
    }
}

/// Reads the client's credentials from the `Authorization: Basic` header or the body, refusing
/// requests that use two methods at once (RFC 6749 §2.3).
fn presented(headers: &HeaderMap, params: &Params) -> Result<PresentedClient, TokenError> {
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
            Ok(PresentedClient {
                client_id: id,
                secret: Some(Secret::presented(&decode(secret))),
                basic: true,
            })
        }
        None => {
            let id = body_id.ok_or_else(|| {
                invalid_client("client authentication is required (client_id)", false)
            })?;
            Ok(PresentedClient {
                client_id: id.to_owned(),
                secret: body_secret.map(Secret::presented),
                basic: false,
            })
        }
    }
}

/// Authenticates the client of a request at `/token`, `/revoke` or `/introspect` within the
/// failure budget (OAuth 2.1 §7.7: guessing secrets, codes and tokens): a request from an address
/// or for a `client_id` that failed too often is refused untried (`slow_down`), and a failed
/// authentication counts against both.
pub async fn authenticate_within_budget(
    state: &AppState,
    ip: Option<IpAddr>,
    headers: &HeaderMap,
    params: &Params,
    lookup: Lookup,
) -> Result<Client, TokenError> {
    not_too_many_failures(state, ip, None)?;
    let credentials = presented(headers, params).inspect_err(|e| counted(state, ip, None, e))?;
    let client_id = credentials.client_id.clone();
    not_too_many_failures(state, None, Some(&client_id))?;
    authenticate(state, credentials, lookup)
        .await
        .inspect_err(|e| counted(state, ip, Some(&client_id), e))
}

/// Refuses a request from an address or for a client that failed too often; `client_id` is the
/// one presented, known or not.
fn not_too_many_failures(
    state: &AppState,
    ip: Option<IpAddr>,
    client_id: Option<&str>,
) -> Result<(), TokenError> {
    match state.limits.credential_failures(ip, client_id) {
        Some(wait) => Err(TokenError::SlowDown(wait)),
        None => Ok(()),
    }
}

/// Counts `error` against the address and the client when it is what guessing a client secret,
/// a code or a refresh token produces (`invalid_client`, `invalid_grant`).
pub fn counted(state: &AppState, ip: Option<IpAddr>, client_id: Option<&str>, error: &TokenError) {
    if matches!(
        error,
        TokenError::InvalidClient { .. } | TokenError::InvalidGrant(_)
    ) {
        state.limits.credential_failed(ip, client_id);
    }
}

/// Authenticates the client that presented `credentials`; `lookup` says whether a recently read
/// copy of the client will do (see [`crate::clients::ClientCache`]).
async fn authenticate(
    state: &AppState,
    credentials: PresentedClient,
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
