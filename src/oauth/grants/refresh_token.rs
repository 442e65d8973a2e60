//! The refresh token grant (RFC 6749 §6, OAuth 2.1 §4.3.1): rotation on every use, strict and
//! retry-safe, because real clients race and retry refreshes (Claude.ai refreshes from two
//! egress addresses).
//!
//! - The first use rotates the token, in one transaction that also stores its successor, the
//!   response sealed under a key derived from the used token, and the audit event.
//! - The same token presented again within `refresh_grace_period` (a client that never received
//!   the response and retried, or two workers racing with one token) gets that same response: the
//!   same new pair, not another one. Only while the successor has never been used: a client that
//!   presented the successor has the rotation, so the old token after that is a replay.
//! - RefreshRequest again after the grace window, or after its successor was used: theft is assumed
//!   and the whole family (the grant) is revoked, its access tokens and newest refresh token
//!   included (RFC 9700 §4.14.2).

use serde_json::json;

use super::{GrantContext, narrowed_scope, optional, required};
use crate::audit::{self, AuditEvent};
use crate::domain::{Client, ScopeSet, Secret, SecretHash, same_resource};
use crate::oauth::error::TokenError;
use crate::oauth::params::Params;
use crate::store::{NewRefresh, RefreshRecord};
use crate::tokens::{TokenResponse, mint, sealed};

fn replay_secret(token: &str, client_id: &str) -> Vec<u8> {
    [token, client_id].join("\0").into_bytes()
}

/// A refresh, as read from the form.
#[derive(Debug)]
pub struct RefreshRequest<'a> {
    token: &'a str,
    hash: SecretHash,
    scope: Option<&'a str>,
    resource: Option<&'a str>,
}

impl<'a> RefreshRequest<'a> {
    /// Reads a refresh's parameters (RFC 6749 §6).
    pub fn read(params: &'a Params) -> Result<Self, TokenError> {
        let token = required(params, "refresh_token")?;
        Ok(Self {
            token,
            hash: Secret::presented(token).hash(),
            scope: optional(params, "scope")?,
            resource: optional(params, "resource")?,
        })
    }
}

fn not_valid() -> TokenError {
    TokenError::InvalidGrant("the refresh token is not valid".into())
}

/// `grant_type=refresh_token`
pub async fn refresh(
    ctx: &GrantContext<'_>,
    client: &Client,
    presented: &RefreshRequest<'_>,
) -> Result<TokenResponse, TokenError> {
    // A token this instance issued and has not seen used: straight to the rotation, without a
    // read. Its guarded write has the last word; if it finds the token used, revoked or gone,
    // or if any check refuses, the database decides below, as for a token with no hint (a
    // refused request is rare, and reuse detection must see it).
    if let Some(hint) = ctx.store.fresh_refresh_token(presented.hash.as_str())
        && let Ok(Some(response)) = rotate(ctx, client, presented, hint).await
    {
        return Ok(response);
    }
    // Twice at most: a concurrent request may rotate the token (or a revocation land) between
    // the read and the write, and the second read sees it.
    for _ in 0..2 {
        let record = ctx
            .store
            .refresh_token(presented.hash.as_str())
            .await?
            .ok_or_else(not_valid)?;
        if record.rotated_at.is_some() {
            usable(client, &record)?;
            return replay(ctx, client, presented.token, record).await;
        }
        if let Some(response) = rotate(ctx, client, presented, record).await? {
            return Ok(response);
        }
    }
    Err(not_valid())
}

/// The checks on the token's grant, before anything else.
fn usable(client: &Client, record: &RefreshRecord) -> Result<(), TokenError> {
    if record.grant.client_id != client.id {
        return Err(TokenError::InvalidGrant(
            "the refresh token was issued to another client".into(),
        ));
    }
    if record.grant.revoked_at.is_some() {
        return Err(TokenError::InvalidGrant(
            "the refresh token has been revoked".into(),
        ));
    }
    Ok(())
}

/// `scope` less what the user's roles no longer allow: taking a scope away from a role reaches
/// every grant at its next refresh, not after the family's 90 days. None left (or no user):
/// `invalid_grant`, so the client asks the person again.
async fn within_roles(
    ctx: &GrantContext<'_>,
    user_id: &str,
    scope: &str,
) -> Result<String, TokenError> {
    let Some(user) = ctx.store.user(user_id).await? else {
        return Err(TokenError::InvalidGrant(
            "the user of this grant no longer exists".into(),
        ));
    };
    let allowed = ctx.config.grantable(&user);
    let mut kept = ScopeSet::parse_lenient(scope);
    kept.retain(|s| allowed.iter().any(|a| a == s));
    if kept.is_empty() {
        return Err(TokenError::InvalidGrant(
            "this account may no longer grant any of the grant's scopes; sign in again".into(),
        ));
    }
    Ok(kept.to_string())
}

/// Rotates an unused token, after the checks on its grant: the new pair, or `None` when the token
/// is already used, or when the guarded write found it used, its grant revoked or the row gone
/// (nothing is written then).
async fn rotate(
    ctx: &GrantContext<'_>,
    client: &Client,
    presented: &RefreshRequest<'_>,
    record: RefreshRecord,
) -> Result<Option<TokenResponse>, TokenError> {
    usable(client, &record)?;
    if record.rotated_at.is_some() {
        return Ok(None);
    }
    let now = ctx.now;
    let grant = &record.grant;
    if now >= record.expires_at || now >= grant.expires_at {
        return Err(TokenError::InvalidGrant(
            "the refresh token has expired; sign in again".into(),
        ));
    }
    if presented
        .resource
        .is_some_and(|r| !same_resource(&grant.resource, r))
    {
        return Err(TokenError::InvalidTarget(format!(
            "resource must be the grant's: {}",
            grant.resource
        )));
    }
    let scope = narrowed_scope(presented.scope, &grant.scopes)?;
    let scope = match &grant.user_id {
        Some(user_id) => within_roles(ctx, user_id, &scope).await?,
        None => scope,
    };

    let config = ctx.config;
    let access = mint(
        &ctx.keys.snapshot(),
        config.issuer.as_str(),
        grant,
        &scope,
        now,
        config.access_token_ttl,
    )?;
    let next = Secret::generate_ordered()
        .map_err(|_| TokenError::Internal("random number generator failed".into()))?;
    let response = TokenResponse {
        access_token: access.jwt,
        token_type: "Bearer".to_owned(),
        expires_in: config.access_token_ttl.whole_seconds(),
        refresh_token: Some(next.expose().to_owned()),
        scope: scope.clone(),
    };
    let plain = serde_json::to_vec(&response).map_err(|e| TokenError::Internal(e.to_string()))?;
    let sealed_response = sealed::seal(
        &replay_secret(presented.token, &client.id),
        b"refresh",
        &plain,
    )
    .ok_or_else(|| TokenError::Internal("cannot seal the response".into()))?;
    let successor = NewRefresh {
        token_hash: next.hash().as_str().to_owned(),
        generation: record.generation + 1,
        expires_at: (now + config.refresh_token_ttl).min(grant.expires_at),
    };
    let mut event = AuditEvent::new(
        "token.refreshed",
        now,
        json!({ "generation": successor.generation, "scope": scope, "jti": access.claims.jti }),
    );
    event.subject = grant.user_id.clone();
    event.client_id = Some(client.id.clone());
    event.grant_id = Some(grant.grant_id.clone());
    let rotated = ctx
        .store
        .rotate_refresh(
            presented.hash.as_str(),
            now,
            now + config.refresh_grace_period,
            &sealed_response,
            grant,
            &successor,
            &event,
        )
        .await?;
    if !rotated {
        return Ok(None);
    }
    audit::log(&event);
    Ok(Some(response))
}

/// A rotated token presented again.
async fn replay(
    ctx: &GrantContext<'_>,
    client: &Client,
    token: &str,
    record: RefreshRecord,
) -> Result<TokenResponse, TokenError> {
    let now = ctx.now;
    let grant = &record.grant;
    let within = record.replay_until.is_some_and(|until| now <= until);
    // RFC 9700 §4.14.2: the grace is for a client that never got the rotation; one that used the
    // successor did.
    let retry = within && !record.successor_used;
    let reopened = record
        .replay_response
        .as_deref()
        .filter(|_| retry && grant.revoked_at.is_none())
        .and_then(|s| sealed::open(&replay_secret(token, &client.id), b"refresh", s))
        .and_then(|plain| serde_json::from_slice::<TokenResponse>(&plain).ok());
    let mut event = AuditEvent::new(
        "refresh.replayed",
        now,
        json!({ "generation": record.generation, "within_grace": true }),
    );
    event.subject = grant.user_id.clone();
    event.client_id = Some(client.id.clone());
    event.grant_id = Some(grant.grant_id.clone());
    if let Some(response) = reopened {
        audit::record_after_commit(ctx.store, event).await;
        return Ok(response);
    }
    if ctx
        .store
        .revoke_grant(&grant.grant_id, "refresh token reused", now)
        .await?
    {
        ctx.revocations.revoke_grant(&grant.grant_id, now);
    }
    event.kind = "refresh.reuse_detected".to_owned();
    event.detail = json!({
        "generation": record.generation,
        "within_grace": within,
        "successor_used": record.successor_used,
        "action": "family revoked",
    });
    audit::record(ctx.store, event.failed()).await?;
    Err(TokenError::InvalidGrant(
        "the refresh token was already used; its family has been revoked".into(),
    ))
}
