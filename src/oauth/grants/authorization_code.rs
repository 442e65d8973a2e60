//! The authorization code grant (RFC 6749 §4.1.3, RFC 7636 §4.6, RFC 8707 §2.2).
//!
//! The code is checked, then consumed in the same transaction that creates its grant and writes
//! the `token.issued` audit event (so there is never a grant without its event). A code is used
//! once: any second redemption, identical or not, concurrent or later, is `invalid_grant` and
//! revokes everything issued from the code, its refresh family and its access tokens (RFC 6749
//! §4.1.2, OAuth 2.1 §4.1.3).

use serde_json::json;
use subtle::ConstantTimeEq;

use super::{GrantContext, GrantType, optional, required};
use crate::audit::{self, AuditEvent};
use crate::domain::{Client, Secret, SecretHash, same_resource};
use crate::oauth::error::TokenError;
use crate::oauth::params::Params;
use crate::store::{CodeRecord, CodeState, ConsumedCode, GrantRecord, NewRefresh};
use crate::tokens::{TokenResponse, mint};

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Z a-z 0-9 - . _ ~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// RFC 7636 §4.6: BASE64URL(SHA256(code_verifier)) == code_challenge, compared in constant time.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref());
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}

/// A code exchange, as read from the form.
#[derive(Debug)]
pub struct ExchangeRequest<'a> {
    verifier: &'a str,
    hash: SecretHash,
    redirect_uri: Option<&'a str>,
    resource: Option<&'a str>,
}

impl<'a> ExchangeRequest<'a> {
    /// Reads an exchange's parameters (RFC 6749 §4.1.3, RFC 7636 §4.5), once `client` is known
    /// to be registered for the grant.
    pub fn read(client: &Client, params: &'a Params) -> Result<Self, TokenError> {
        if !GrantType::AuthorizationCode.registered_by(client) {
            return Err(TokenError::UnauthorizedClient(
                "this client is not registered for the authorization code grant".into(),
            ));
        }
        let code = required(params, "code")?;
        let verifier = required(params, "code_verifier")?;
        if !valid_verifier(verifier) {
            return Err(TokenError::InvalidRequest(
                "code_verifier must be 43 to 128 unreserved characters (RFC 7636 §4.1)".into(),
            ));
        }
        Ok(Self {
            verifier,
            hash: Secret::presented(code).hash(),
            redirect_uri: optional(params, "redirect_uri")?,
            resource: optional(params, "resource")?,
        })
    }
}

/// `grant_type=authorization_code`
pub async fn exchange(
    ctx: &GrantContext<'_>,
    client: &Client,
    presented: &ExchangeRequest<'_>,
) -> Result<TokenResponse, TokenError> {
    // A code this instance issued and has not seen redeemed: straight to the redemption, without
    // a read. Its guarded write has the last word; if it finds the code redeemed or gone, or if
    // any check refuses, the database decides below, as for a code with no hint (a refused
    // request is rare, and a second use of a code must revoke what it issued).
    if let Some(hint) = ctx.store.fresh_code(presented.hash.as_str())
        && let Ok(Some(response)) = redeem(ctx, client, presented, hint).await
    {
        return Ok(response);
    }
    let record = match ctx.store.code_for_exchange(presented.hash.as_str()).await? {
        None => return Err(not_valid()),
        Some(CodeState::Consumed(consumed)) => return Err(reused(ctx, client, consumed).await?),
        Some(CodeState::Fresh(record)) => record,
    };
    if let Some(response) = redeem(ctx, client, presented, record).await? {
        return Ok(response);
    }
    // A concurrent request redeemed it first: this one is a second use like any other.
    match ctx.store.code_for_exchange(presented.hash.as_str()).await? {
        Some(CodeState::Consumed(consumed)) => Err(reused(ctx, client, consumed).await?),
        _ => Err(not_valid()),
    }
}

fn not_valid() -> TokenError {
    TokenError::InvalidGrant("the authorization code is not valid".into())
}

/// Redeems an unused code: the tokens, or `None` when the guarded write found the code already
/// consumed or gone (nothing is written then).
async fn redeem(
    ctx: &GrantContext<'_>,
    client: &Client,
    presented: &ExchangeRequest<'_>,
    record: CodeRecord,
) -> Result<Option<TokenResponse>, TokenError> {
    let now = ctx.now;
    if record.client_id != client.id {
        return Err(TokenError::InvalidGrant(
            "the authorization code was issued to another client".into(),
        ));
    }
    if now >= record.expires_at {
        return Err(TokenError::InvalidGrant(
            "the authorization code has expired".into(),
        ));
    }
    if presented
        .redirect_uri
        .is_some_and(|r| r != record.redirect_uri)
    {
        return Err(TokenError::InvalidGrant(
            "redirect_uri differs from the authorization request's".into(),
        ));
    }
    if !pkce_matches(presented.verifier, &record.code_challenge) {
        return Err(TokenError::InvalidGrant(
            "code_verifier does not match the code_challenge".into(),
        ));
    }
    if presented
        .resource
        .is_some_and(|r| !same_resource(&record.resource, r))
    {
        return Err(TokenError::InvalidTarget(format!(
            "resource must be the authorization request's: {}",
            record.resource
        )));
    }

    let config = ctx.config;
    let grant = GrantRecord {
        grant_id: record.grant_id.clone(),
        client_id: client.id.clone(),
        user_id: Some(record.user_id.clone()),
        resource: record.resource.clone(),
        scopes: record.scopes.clone(),
        created_at: now,
        expires_at: now + config.refresh_family_ttl,
        revoked_at: None,
    };
    let access = mint(
        &ctx.keys.snapshot(),
        config.issuer.as_str(),
        &grant,
        &grant.scopes,
        now,
        config.access_token_ttl,
    )?;
    let refresh = Secret::generate_ordered()
        .map_err(|_| TokenError::Internal("random number generator failed".into()))?;
    let response = TokenResponse {
        access_token: access.jwt,
        token_type: "Bearer".to_owned(),
        expires_in: config.access_token_ttl.whole_seconds(),
        refresh_token: Some(refresh.expose().to_owned()),
        scope: grant.scopes.clone(),
    };
    let next = NewRefresh {
        token_hash: refresh.hash().as_str().to_owned(),
        generation: 0,
        expires_at: (now + config.refresh_token_ttl).min(grant.expires_at),
    };
    let mut event = AuditEvent::new(
        "token.issued",
        now,
        json!({ "grant_type": "authorization_code", "scope": grant.scopes, "jti": access.claims.jti }),
    );
    event.subject = grant.user_id.clone();
    event.client_id = Some(client.id.clone());
    event.grant_id = Some(grant.grant_id.clone());
    let redeemed = ctx
        .store
        .redeem_code(presented.hash.as_str(), now, &grant, Some(&next), &event)
        .await?;
    if !redeemed {
        return Ok(None);
    }
    audit::log(&event);
    Ok(Some(response))
}

/// A code presented again: refused, and what it produced is revoked (RFC 6749 §4.1.2: the
/// first redemption may have been an attacker's, or this one is). Returns the error to answer.
async fn reused(
    ctx: &GrantContext<'_>,
    client: &Client,
    consumed: ConsumedCode,
) -> Result<TokenError, TokenError> {
    let now = ctx.now;
    if ctx
        .store
        .revoke_grant(&consumed.grant_id, "authorization code reused", now)
        .await?
    {
        ctx.revocations.revoke_grant(&consumed.grant_id, now);
    }
    let mut event = AuditEvent::new(
        "code.reuse_detected",
        now,
        json!({ "action": "grant revoked" }),
    );
    event.client_id = Some(client.id.clone());
    event.grant_id = Some(consumed.grant_id);
    audit::record(ctx.store, event.failed()).await?;
    Ok(TokenError::InvalidGrant(
        "the authorization code was already used; the tokens issued from it are revoked".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636 Appendix B.
    #[test]
    fn rfc_7636_appendix_b() {
        assert!(pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXl",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(valid_verifier(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!valid_verifier("short"));
        assert!(!valid_verifier(&"a b".repeat(20)));
    }
}
