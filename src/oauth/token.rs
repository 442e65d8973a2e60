//! The token endpoint (RFC 6749 §3.2, §4.1.3, §6; OAuth 2.1 §4): read `grant_type` first, then
//! the rest; authenticate the client; hand over to the grant. Errors are JSON with
//! `Cache-Control: no-store` (RFC 6749 §5.2).

use std::net::IpAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::client_auth::{authenticate_within_budget, counted};
use super::clients::Lookup;
use super::error::TokenError;
use super::grants::{GrantContext, GrantType, TokenRequest};
use super::params::Params;
use crate::audit::{self, AuditEvent};
use crate::state::AppState;
use crate::tokens::TokenResponse;
use crate::web::ClientIp;

/// Reads a form-encoded body into parameters (RFC 6749 §3.2: `application/x-www-form-urlencoded`;
/// no parameter twice).
pub fn form_params(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Params, TokenError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(TokenError::InvalidRequest(
            "the request must be application/x-www-form-urlencoded".into(),
        ));
    }
    let body =
        body.map_err(|_| TokenError::InvalidRequest("the request body is too large".into()))?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| TokenError::InvalidRequest("the body is not UTF-8".into()))?;
    Ok(Params::parse(text))
}

/// A successful token response: JSON, never cached.
pub fn token_json(response: &TokenResponse) -> Response {
    let mut out = Json(response).into_response();
    let h = out.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    out
}

/// `POST /token`
pub async fn token_post(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match token(&state, ip, &headers, body).await {
        Ok(response) => token_json(&response),
        Err((error, client_id, grant_type)) => {
            let audited = match &error {
                TokenError::Internal(_) => false,
                // A flood of refusals is audited once a minute per address, not once each.
                TokenError::SlowDown(_) => state.limits.audit_refusal(&format!(
                    "token.slow_down:{}",
                    ip.map(|i| i.to_string()).unwrap_or_default()
                )),
                _ => true,
            };
            if audited {
                let mut event = AuditEvent::new(
                    "token.refused",
                    state.clock.now(),
                    json!({ "grant_type": grant_type, "error": error.code(), "reason": error.to_string() }),
                )
                .failed();
                event.client_id = client_id;
                event.ip = ip.map(|i| i.to_string());
                audit::record_after_commit(&state.store, event).await;
            }
            error.into_response()
        }
    }
}

/// A refused token request: the error, the authenticated client and the grant type, for the
/// audit log.
type Failure = (TokenError, Option<String>, Option<String>);

async fn token(
    state: &AppState,
    ip: Option<IpAddr>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<TokenResponse, Failure> {
    let params = form_params(headers, body).map_err(|e| (e, None, None))?;
    // grant_type first: an unknown one is unsupported_grant_type whatever else is wrong.
    let grant_type = match params.get("grant_type") {
        Ok(Some(g)) => g,
        Ok(None) => {
            return Err((
                TokenError::InvalidRequest("grant_type is required".into()),
                None,
                None,
            ));
        }
        Err(_) => {
            return Err((
                TokenError::InvalidRequest("grant_type is repeated".into()),
                None,
                None,
            ));
        }
    };
    let Some(grant) = GrantType::parse(grant_type) else {
        let err = TokenError::UnsupportedGrantType(format!(
            "grant_type {grant_type:?} is not supported; use authorization_code, refresh_token or client_credentials"
        ));
        return Err((err, None, Some(grant_type.to_owned())));
    };
    let fail = |e: TokenError, client: Option<String>| (e, client, Some(grant.as_str().to_owned()));
    if let Some(name) = params.repeated() {
        return Err(fail(
            TokenError::InvalidRequest(format!("parameter {name} is repeated")),
            None,
        ));
    }
    // Exchanges and refreshes only continue what a grant or code already started; client
    // credentials start a grant, so they read the client afresh.
    let lookup = match grant {
        GrantType::AuthorizationCode | GrantType::RefreshToken => Lookup::Cached,
        GrantType::ClientCredentials => Lookup::Database,
    };
    let client = authenticate_within_budget(state, ip, headers, &params, lookup)
        .await
        .map_err(|e| fail(e, None))?;
    let result = match TokenRequest::read(grant, &client, &state.config, &params) {
        Ok(request) => {
            let ctx = GrantContext {
                config: &state.config,
                store: &state.store,
                keys: &state.keys,
                revocations: &state.revocations,
                now: state.clock.now(),
            };
            request.run(&ctx, &client).await
        }
        Err(e) => Err(e),
    };
    if result.is_ok() {
        state.metrics.token_issued(grant.as_str());
    }
    result.map_err(|e| {
        // A bad code or refresh token counts against the address and the client.
        counted(state, ip, Some(&client.id), &e);
        fail(e, Some(client.id.clone()))
    })
}
