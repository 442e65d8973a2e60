//! Dynamic client registration (RFC 7591) at `/register`, and the clean-up of registrations
//! that were never used.
//!
//! RFC 7591 §3.2.1, as MCP clients parse it: JSON in; 201 with the registered metadata echoed;
//! absent optional fields omitted, never `null` (Claude Code rejects `null`); the requested
//! `token_endpoint_auth_method` echoed; a secret only for secret-based methods; unknown fields
//! ignored (RFC 7591 §2); generated ids never `https://`, so they are never taken for CIMD URLs.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use super::error::RegistrationError;
use crate::audit::{self, AuditEvent};
use crate::clients::metadata::optional_https_url;
use crate::config::Config;
use crate::domain::{
    Client, ClientKind, MAX_CLIENT_NAME, RedirectPolicy, RedirectUri, ScopeSet, ScopeToken, Secret,
    TokenEndpointAuthMethod, acceptable_client_name, random_token,
};
use crate::state::AppState;
use crate::store::StoreError;
use crate::web::ClientIp;

/// Prefix of generated client ids: never `https://`, so never mistaken for a CIMD URL.
pub const CLIENT_ID_PREFIX: &str = "gh_";
/// Most redirect URIs one client may register.
const MAX_REDIRECT_URIS: usize = 20;
/// The registration request (RFC 7591 §2). Fields Gatehouse does not use are ignored.
#[derive(Debug, Default)]
pub struct RegistrationRequest {
    /// `redirect_uris`.
    pub redirect_uris: Option<Vec<String>>,
    /// `token_endpoint_auth_method`; RFC 7591 defaults it to `client_secret_basic`.
    pub token_endpoint_auth_method: Option<String>,
    /// `grant_types`.
    pub grant_types: Option<Vec<String>>,
    /// `response_types`.
    pub response_types: Option<Vec<String>>,
    /// `client_name`.
    pub client_name: Option<String>,
    /// `client_uri`.
    pub client_uri: Option<String>,
    /// `logo_uri`.
    pub logo_uri: Option<String>,
    /// `scope`: unknown scopes are dropped (Claude sends `claudeai`).
    pub scope: Option<String>,
    /// `application_type`: `web` or `native`.
    pub application_type: Option<String>,
}

/// The registration response (RFC 7591 §3.2.1). `None` fields are omitted.
#[derive(Debug, Serialize)]
pub struct RegistrationResponse {
    client_id: String,
    client_id_issued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret_expires_at: Option<i64>,
    redirect_uris: Vec<String>,
    grant_types: Vec<String>,
    response_types: Vec<String>,
    token_endpoint_auth_method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logo_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    application_type: Option<String>,
}

fn metadata_error(message: String) -> RegistrationError {
    RegistrationError::InvalidClientMetadata(message)
}

/// One optional field of the request, with an error that names it when its type is wrong.
fn field<T: serde::de::DeserializeOwned>(
    object: &mut serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<T>, RegistrationError> {
    match object.remove(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|e| metadata_error(format!("{name} has the wrong type: {e}"))),
    }
}

impl RegistrationRequest {
    /// Parses a JSON registration body: an object whose known fields have the right types.
    pub fn from_json(body: &[u8]) -> Result<Self, RegistrationError> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            metadata_error(format!("the registration request is not valid JSON: {e}"))
        })?;
        let serde_json::Value::Object(mut object) = value else {
            return Err(metadata_error(
                "the registration request must be a JSON object".to_owned(),
            ));
        };
        Ok(Self {
            redirect_uris: field(&mut object, "redirect_uris")?,
            token_endpoint_auth_method: field(&mut object, "token_endpoint_auth_method")?,
            grant_types: field(&mut object, "grant_types")?,
            response_types: field(&mut object, "response_types")?,
            client_name: field(&mut object, "client_name")?,
            client_uri: field(&mut object, "client_uri")?,
            logo_uri: field(&mut object, "logo_uri")?,
            scope: field(&mut object, "scope")?,
            application_type: field(&mut object, "application_type")?,
        })
    }
}

/// Turns a request into a client, applying the operator's redirect policy. Pure: the id,
/// secret and time are given.
pub fn validate(
    request: RegistrationRequest,
    config: &Config,
    policy: &RedirectPolicy,
    kind: ClientKind,
    id: String,
    now: OffsetDateTime,
) -> Result<Client, RegistrationError> {
    let auth_method = match request.token_endpoint_auth_method.as_deref() {
        None => TokenEndpointAuthMethod::ClientSecretBasic,
        Some(raw) => TokenEndpointAuthMethod::parse(raw).ok_or_else(|| {
            metadata_error(format!(
                "token_endpoint_auth_method {raw:?} is not supported; use none, client_secret_basic or client_secret_post"
            ))
        })?,
    };
    let grant_types = request
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".to_owned(), "refresh_token".to_owned()]);
    let service_scopes = service_scopes(config, kind);
    for grant in &grant_types {
        let allowed = match grant.as_str() {
            "authorization_code" | "refresh_token" => true,
            "client_credentials" if service_scopes.is_some_and(<[_]>::is_empty) => {
                // RFC 6749 §4.4: the grant is for what was arranged with the server; a
                // self-registered client has arranged nothing (RFC 7591 §5).
                return Err(metadata_error(
                    "grant type client_credentials (tokens with no user) is not open to registration on this server; ask its operator to add the client".to_owned(),
                ));
            }
            "client_credentials" => auth_method.uses_secret(),
            _ => false,
        };
        if !allowed {
            return Err(metadata_error(format!(
                "grant type {grant:?} is not available to this client (supported: authorization_code, refresh_token; client_credentials for confidential clients)"
            )));
        }
    }
    let response_types = request
        .response_types
        .unwrap_or_else(|| vec!["code".to_owned()]);
    if let Some(other) = response_types.iter().find(|r| *r != "code") {
        return Err(metadata_error(format!(
            "response type {other:?} is not supported; only \"code\" (no implicit flow)"
        )));
    }
    let uses_code = grant_types.iter().any(|g| g == "authorization_code");
    if uses_code && !response_types.iter().any(|r| r == "code") {
        return Err(metadata_error(
            "grant type authorization_code needs response type \"code\"".to_owned(),
        ));
    }

    let raw_uris = request.redirect_uris.unwrap_or_default();
    if uses_code && raw_uris.is_empty() {
        return Err(RegistrationError::InvalidRedirectUri(
            "redirect_uris must list at least one redirect URI".to_owned(),
        ));
    }
    if raw_uris.len() > MAX_REDIRECT_URIS {
        return Err(RegistrationError::InvalidRedirectUri(format!(
            "at most {MAX_REDIRECT_URIS} redirect URIs may be registered"
        )));
    }
    let mut redirect_uris = Vec::new();
    for raw in &raw_uris {
        let uri = RedirectUri::parse(raw, policy)
            .map_err(|e| RegistrationError::InvalidRedirectUri(e.to_string()))?;
        if !redirect_uris.contains(&uri) {
            redirect_uris.push(uri);
        }
    }

    let name = request.client_name.filter(|n| !n.trim().is_empty());
    if let Some(n) = &name {
        if !acceptable_client_name(n) {
            return Err(metadata_error(format!(
                "client_name must be at most {MAX_CLIENT_NAME} characters, without control, invisible or text-direction characters"
            )));
        }
    }
    let application_type = match request.application_type {
        Some(t) if t == "web" || t == "native" => Some(t),
        Some(t) => {
            return Err(metadata_error(format!(
                "application_type {t:?} must be \"web\" or \"native\""
            )));
        }
        None => None,
    };
    let known = config.scope_names();
    let mut scope = request
        .scope
        .map(|s| {
            let mut set = ScopeSet::parse_lenient(&s);
            set.retain(|t| known.contains(&t));
            set
        })
        .filter(|s| !s.is_empty());
    // A self-registered service client holds no more than the operator opened to such clients.
    if let Some(allowed) =
        service_scopes.filter(|_| grant_types.iter().any(|g| g == "client_credentials"))
    {
        let allowed: ScopeSet = allowed.iter().collect();
        match &scope {
            None => scope = Some(allowed),
            Some(asked) => {
                if let Some(other) = asked.first_missing_from(&allowed) {
                    return Err(metadata_error(format!(
                        "scope {:?} is not available to clients that use client_credentials here (available: {allowed})",
                        other.as_str()
                    )));
                }
            }
        }
    }
    let scope = scope.map(|s| s.to_string());

    Ok(Client {
        id,
        kind,
        name,
        redirect_uris,
        auth_method,
        grant_types,
        response_types,
        scope,
        client_uri: optional_https_url(request.client_uri),
        logo_uri: optional_https_url(request.logo_uri),
        application_type,
        secret_hash: None,
        created_at: now,
        last_used_at: None,
    })
}

/// The scopes a client of `kind` may hold for `client_credentials`: `None` when the operator
/// vouches for it (any), an empty list when the grant is closed to it.
pub fn service_scopes(config: &Config, kind: ClientKind) -> Option<&[ScopeToken]> {
    match kind {
        ClientKind::Operator => None,
        ClientKind::Dynamic => Some(&config.registration.client_credentials_scopes),
        ClientKind::MetadataDocument => Some(&[]),
    }
}

/// A new client id: the prefix and 128 random bits.
pub fn new_client_id() -> Result<String, RegistrationError> {
    random_token(16)
        .map(|t| format!("{CLIENT_ID_PREFIX}{t}"))
        .map_err(|_| RegistrationError::Internal("random number generator failed".to_owned()))
}

/// Gives a client that authenticates with a secret its 256-bit secret: returned in clear, to be
/// shown once; only its hash stays on the client. Public clients get none.
pub fn issue_secret(client: &mut Client) -> Result<Option<Secret>, RegistrationError> {
    if !client.auth_method.uses_secret() {
        return Ok(None);
    }
    let secret = Secret::generate()
        .map_err(|_| RegistrationError::Internal("random number generator failed".to_owned()))?;
    client.secret_hash = Some(secret.hash());
    Ok(Some(secret))
}

fn response_for(client: &Client, secret: Option<&Secret>) -> RegistrationResponse {
    RegistrationResponse {
        client_id: client.id.clone(),
        client_id_issued_at: client.created_at.unix_timestamp(),
        client_secret: secret.map(|s| s.expose().to_owned()),
        client_secret_expires_at: secret.map(|_| 0),
        redirect_uris: client
            .redirect_uris
            .iter()
            .map(|u| u.as_str().to_owned())
            .collect(),
        grant_types: client.grant_types.clone(),
        response_types: client.response_types.clone(),
        token_endpoint_auth_method: client.auth_method.as_str(),
        client_name: client.name.clone(),
        client_uri: client.client_uri.clone(),
        logo_uri: client.logo_uri.clone(),
        scope: client.scope.clone(),
        application_type: client.application_type.clone(),
    }
}

/// `POST /register`
pub async fn register_post(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ip_text = ip.map(|i| i.to_string());
    match register(&state, ip, ip_text.clone(), &headers, body).await {
        Ok((client, secret)) => {
            let mut response = (
                StatusCode::CREATED,
                Json(response_for(&client, secret.as_ref())),
            )
                .into_response();
            let h = response.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(err) => {
            if !matches!(err, RegistrationError::Internal(_)) {
                let mut event = AuditEvent::new(
                    "client.registration_refused",
                    state.clock.now(),
                    json!({ "reason": err.to_string() }),
                )
                .failed();
                event.ip = ip_text;
                if let Err(audit_err) = audit::record(&state.store, event).await {
                    tracing::error!(error = %audit_err, "cannot audit a refused registration");
                }
            }
            err.into_response()
        }
    }
}

async fn register(
    state: &AppState,
    ip: Option<std::net::IpAddr>,
    ip_text: Option<String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Client, Option<Secret>), RegistrationError> {
    let policy = &state.config.registration;
    if !policy.enabled {
        return Err(RegistrationError::Disabled);
    }
    if let Some(ip) = ip {
        state
            .limits
            .registration(ip)
            .map_err(RegistrationError::RateLimited)?;
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(metadata_error(
            "the registration request must be JSON (Content-Type: application/json)".to_owned(),
        ));
    }
    let body = body.map_err(|_| RegistrationError::TooLarge(policy.max_body_bytes))?;
    let request = RegistrationRequest::from_json(&body)?;
    let mut client = validate(
        request,
        &state.config,
        &policy.redirect,
        ClientKind::Dynamic,
        new_client_id()?,
        state.clock.now(),
    )?;
    let secret = issue_secret(&mut client)?;
    // The client and the audit event of its registration commit together.
    let redirect_hosts: Vec<_> = client
        .redirect_uris
        .iter()
        .map(|u| u.host().unwrap_or(""))
        .collect();
    let mut event = AuditEvent::new(
        "client.registered",
        client.created_at,
        json!({ "client_name": client.name, "redirect_hosts": redirect_hosts, "auth_method": client.auth_method.as_str() }),
    );
    event.client_id = Some(client.id.clone());
    event.ip = ip_text;
    state.store.insert_client_audited(&client, &event).await?;
    audit::log(&event);
    Ok((client, secret))
}

/// Deletes dynamic registrations that completed no sign-in within `unused_client_ttl`, writing
/// one audit event per deleted client. Returns how many were deleted.
pub async fn expire_unused_clients(state: &AppState) -> Result<usize, StoreError> {
    let Some(ttl) = state.config.registration.unused_client_ttl else {
        return Ok(0);
    };
    let now = state.clock.now();
    let ids = state.store.delete_unused_clients(now - ttl).await?;
    for id in &ids {
        state.clients.forget(id);
        let mut event = AuditEvent::new(
            "client.expired",
            now,
            json!({ "reason": "never used", "unused_client_ttl": ttl.whole_seconds() }),
        );
        event.client_id = Some(id.clone());
        audit::record(&state.store, event).await?;
    }
    Ok(ids.len())
}
