//! The client credentials grant (RFC 6749 §4.4) for confidential, service-to-service clients
//! the operator arranged: those added with `gatehouse clients add --confidential`, and
//! self-registered ones only within `registration.client_credentials_scopes` (empty by default:
//! none). Scopes within what the client was registered for; no refresh token; the token's `sub`
//! is the client id (RFC 9068 §2.2), which is how the resource side tells it has no user.

use serde_json::json;

use super::{GrantContext, GrantType, narrowed_scope, optional};
use crate::audit::{self, AuditEvent};
use crate::config::Config;
use crate::domain::{Client, ScopeSet, new_grant_id, same_resource};
use crate::oauth::error::TokenError;
use crate::oauth::params::Params;
use crate::store::GrantRecord;
use crate::tokens::{TokenResponse, mint};

/// A client credentials request, as read from the form: the scopes the client may hold, and
/// those it asks for.
#[derive(Debug)]
pub struct ServiceRequest<'a> {
    may_hold: ScopeSet,
    scope: Option<&'a str>,
}

impl<'a> ServiceRequest<'a> {
    /// Reads the request (RFC 6749 §4.4.2), once `client` is known to be one this grant is for.
    pub fn read(client: &Client, config: &Config, params: &'a Params) -> Result<Self, TokenError> {
        if !client.is_confidential() || !GrantType::ClientCredentials.registered_by(client) {
            return Err(TokenError::UnauthorizedClient(
                "client_credentials is for confidential clients registered for it".into(),
            ));
        }
        // Checked here too, not only at registration: a client registered while the setting
        // allowed more (or before this rule) gets no more than it allows now.
        let service_scopes = crate::oauth::register::service_scopes(config, client.kind);
        if service_scopes.is_some_and(<[_]>::is_empty) {
            return Err(TokenError::UnauthorizedClient(
                "client_credentials is for clients the operator added; this client registered itself"
                    .into(),
            ));
        }
        let resource = config.resource();
        if optional(params, "resource")?.is_some_and(|r| !same_resource(&resource, r)) {
            return Err(TokenError::InvalidTarget(format!(
                "this server's resource is {resource}"
            )));
        }
        // What the client was registered for; registered without scopes: the defaults.
        let mut may_hold = match &client.scope {
            Some(scope) => ScopeSet::parse_lenient(scope),
            None => config.default_scopes.iter().collect(),
        };
        if let Some(allowed) = service_scopes {
            may_hold.retain(|s| allowed.iter().any(|a| a.as_str() == s));
        }
        Ok(Self {
            may_hold,
            scope: optional(params, "scope")?,
        })
    }
}

/// `grant_type=client_credentials`
pub async fn issue(
    ctx: &GrantContext<'_>,
    client: &Client,
    request: &ServiceRequest<'_>,
) -> Result<TokenResponse, TokenError> {
    let config = ctx.config;
    let resource = config.resource();
    let scope = narrowed_scope(request.scope, &request.may_hold.to_string())?;
    let now = ctx.now;
    let grant_id = new_grant_id()
        .map_err(|_| TokenError::Internal("random number generator failed".into()))?;
    let grant = GrantRecord {
        grant_id,
        client_id: client.id.clone(),
        user_id: None,
        resource,
        scopes: scope.clone(),
        created_at: now,
        expires_at: now + config.access_token_ttl,
        revoked_at: None,
    };
    ctx.store.insert_grant(&grant).await?;
    let access = mint(
        &ctx.keys.snapshot(),
        config.issuer.as_str(),
        &grant,
        &scope,
        now,
        config.access_token_ttl,
    )?;
    let mut event = AuditEvent::new(
        "token.issued",
        now,
        json!({ "grant_type": "client_credentials", "scope": scope, "jti": access.claims.jti }),
    );
    event.client_id = Some(client.id.clone());
    event.grant_id = Some(grant.grant_id.clone());
    audit::record_after_commit(ctx.store, event).await;
    Ok(TokenResponse {
        access_token: access.jwt,
        token_type: "Bearer".to_owned(),
        expires_in: config.access_token_ttl.whole_seconds(),
        refresh_token: None,
        scope,
    })
}
