//! Token introspection (RFC 7662) at `/introspect`, for confidential clients about their own
//! tokens. Anything else (unknown, expired, revoked, another client's) is `{"active": false}`.

use std::net::IpAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::client_auth::authenticate_within_budget;
use super::clients::Lookup;
use super::error::TokenError;
use super::grants::required;
use super::revoke::{KnownToken, identify};
use super::token::form_params;
use crate::state::AppState;
use crate::web::ClientIp;

/// `POST /introspect`
pub async fn introspect_post(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match introspect(&state, ip, &headers, body).await {
        Ok(doc) => {
            let mut out = Json(doc).into_response();
            out.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            out
        }
        Err(err) => err.into_response(),
    }
}

async fn introspect(
    state: &AppState,
    ip: Option<IpAddr>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, TokenError> {
    let params = form_params(headers, body)?;
    let client = authenticate_within_budget(state, ip, headers, &params, Lookup::Database).await?;
    if !client.is_confidential() {
        return Err(TokenError::InvalidClient {
            description: "introspection is for clients that authenticate with a secret".into(),
            basic: false,
        });
    }
    let token = required(&params, "token")?;
    let now = state.clock.now().unix_timestamp();
    let inactive = json!({ "active": false });
    Ok(match identify(state, token).await? {
        Some(KnownToken::Access(c))
            if c.client_id == client.id
                && c.nbf <= now
                && now < c.exp
                && !state.revocations.is_revoked(&c.grant_id, &c.jti) =>
        {
            json!({
                "active": true, "token_type": "Bearer", "scope": c.scope, "client_id": c.client_id,
                "sub": c.sub, "aud": c.aud, "iss": c.iss, "exp": c.exp, "iat": c.iat, "nbf": c.nbf,
                "jti": c.jti, "grant_id": c.grant_id,
            })
        }
        Some(KnownToken::Refresh(r))
            if r.grant.client_id == client.id
                && r.rotated_at.is_none()
                && r.grant.revoked_at.is_none()
                && now < r.expires_at.unix_timestamp()
                && now < r.grant.expires_at.unix_timestamp() =>
        {
            json!({
                "active": true, "token_type": "refresh_token", "scope": r.grant.scopes,
                "client_id": r.grant.client_id, "sub": r.grant.user_id, "aud": r.grant.resource,
                "iss": state.config.issuer.as_str(), "exp": r.expires_at.unix_timestamp(),
                "grant_id": r.grant.grant_id,
            })
        }
        _ => inactive,
    })
}
