//! Token revocation (RFC 7009) at `/revoke`. Revoking an access token revokes that token;
//! revoking a refresh token revokes its whole family and every access token of its grant. The
//! in-memory view is updated at once, so the resource side refuses the token on the very next
//! request. An unknown token is a 200 (RFC 7009 §2.2); another client's token is refused.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::client_auth::authenticate_within_budget;
use super::clients::Lookup;
use super::error::TokenError;
use super::grants::{optional, required};
use super::token::form_params;
use crate::audit::{self, AuditEvent};
use crate::domain::{Client, Secret};
use crate::state::AppState;
use crate::tokens::{AccessClaims, read_access_claims};
use crate::web::ClientIp;

/// A token this server issued, identified.
#[derive(Debug)]
pub enum KnownToken {
    /// A signature-valid access token (claims not checked for expiry here).
    Access(AccessClaims),
    /// A refresh token that exists.
    Refresh(crate::store::RefreshRecord),
}

/// Identifies `token`: an access token by its signature, a refresh token by its hash.
pub async fn identify(state: &AppState, token: &str) -> Result<Option<KnownToken>, TokenError> {
    if token.split('.').count() == 3 {
        let Ok((payload, header)) = state.keys.verify_jwt(&state.store, token).await else {
            return Ok(None);
        };
        // Expired or not, for this server's resource or not: a token of ours is revoked.
        return Ok(
            read_access_claims(&payload, &header, &state.config.resource())
                .ok()
                .map(|(claims, _)| claims)
                .filter(|c| c.iss == state.config.issuer.as_str())
                .map(KnownToken::Access),
        );
    }
    Ok(state
        .store
        .refresh_token(Secret::presented(token).hash().as_str())
        .await?
        .map(KnownToken::Refresh))
}

fn not_yours() -> TokenError {
    TokenError::UnauthorizedClient("the token was not issued to this client".into())
}

/// `POST /revoke`
pub async fn revoke_post(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match revoke(&state, ip, &headers, body).await {
        Ok(()) => {
            let mut out = StatusCode::OK.into_response();
            out.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            out
        }
        Err(err) => err.into_response(),
    }
}

async fn revoke(
    state: &AppState,
    ip: Option<IpAddr>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(), TokenError> {
    let params = form_params(headers, body)?;
    let client = authenticate_within_budget(state, ip, headers, &params, Lookup::Database).await?;
    let token = required(&params, "token")?;
    // RFC 7009 §2.1: the hint is only a hint; both kinds are looked up.
    let _hint = optional(&params, "token_type_hint")?;
    let now = state.clock.now();
    let event = |kind: &str, grant_id: &str, detail: serde_json::Value, client: &Client| {
        let mut e = AuditEvent::new(kind, now, detail);
        e.client_id = Some(client.id.clone());
        e.grant_id = Some(grant_id.to_owned());
        e
    };
    match identify(state, token).await? {
        None => Ok(()),
        Some(KnownToken::Access(claims)) => {
            if claims.client_id != client.id {
                return Err(not_yours());
            }
            let expires = time::OffsetDateTime::from_unix_timestamp(claims.exp).unwrap_or(now);
            state
                .store
                .revoke_access_token(&claims.jti, &claims.grant_id, expires, now)
                .await?;
            state.revocations.revoke_token(&claims.jti, expires);
            let e = event(
                "token.revoked",
                &claims.grant_id,
                json!({ "token_type": "access_token", "jti": claims.jti }),
                &client,
            );
            audit::record_after_commit(&state.store, e).await;
            Ok(())
        }
        Some(KnownToken::Refresh(record)) => {
            if record.grant.client_id != client.id {
                return Err(not_yours());
            }
            if state
                .store
                .revoke_grant(&record.grant.grant_id, "revoked by the client", now)
                .await?
            {
                state.revocations.revoke_grant(&record.grant.grant_id, now);
            }
            let e = event(
                "token.revoked",
                &record.grant.grant_id,
                json!({ "token_type": "refresh_token", "scope": "grant" }),
                &client,
            );
            audit::record_after_commit(&state.store, e).await;
            Ok(())
        }
    }
}
