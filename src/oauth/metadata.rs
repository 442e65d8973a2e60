//! RFC 8414 authorization-server metadata, and the decision not to serve OpenID discovery.
//!
//! Every URL is built from [`crate::routes`] and the one canonical issuer string, which is
//! byte-identical to PRM `authorization_servers[0]` and has no trailing slash: clients compare
//! issuers as raw strings (RFC 8414 §3.3).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use crate::config::Config;
use crate::routes;
use crate::state::AppState;
use crate::web;

/// The RFC 8414 §2 document. Absent optional fields are omitted, never `null`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuthorizationServerMetadata {
    /// RFC 8414 §2 `issuer`.
    pub issuer: String,
    /// Where the browser goes to sign in and consent.
    pub authorization_endpoint: String,
    /// Where codes and refresh tokens are exchanged.
    pub token_endpoint: String,
    /// Public signing keys.
    pub jwks_uri: String,
    /// RFC 7009 revocation.
    pub revocation_endpoint: String,
    /// Client authentication at the revocation endpoint.
    pub revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    /// RFC 7662 introspection (confidential clients).
    pub introspection_endpoint: String,
    /// Client authentication at the introspection endpoint.
    pub introspection_endpoint_auth_methods_supported: Vec<&'static str>,
    /// RFC 7591 registration, when the operator keeps it open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_endpoint: Option<String>,
    /// Scopes clients may request (never `offline_access`: refresh tokens are always issued).
    pub scopes_supported: Vec<String>,
    /// Only the authorization code flow.
    pub response_types_supported: Vec<&'static str>,
    /// Codes are returned in the query.
    pub response_modes_supported: Vec<&'static str>,
    /// No implicit, no password grant.
    pub grant_types_supported: Vec<&'static str>,
    /// `none` for public clients: Claude uses CIMD only when this lists `none`.
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// PKCE S256 only; `plain` is refused. MCP clients stop when `S256` is not listed (MCP
    /// authorization spec).
    pub code_challenge_methods_supported: Vec<&'static str>,
    /// Access tokens are RFC 9068 JWTs signed with these algorithms.
    pub access_token_signing_alg_values_supported: Vec<&'static str>,
    /// RFC 9207: every authorization response carries `iss`.
    pub authorization_response_iss_parameter_supported: bool,
    /// https `client_id`s name metadata documents (CIMD); with `none` in the auth methods, this
    /// is what makes Claude use CIMD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id_metadata_document_supported: Option<bool>,
}

/// Builds the metadata document for this configuration.
pub fn authorization_server_metadata(config: &Config) -> AuthorizationServerMetadata {
    let issuer = &config.issuer;
    AuthorizationServerMetadata {
        issuer: issuer.as_str().to_owned(),
        authorization_endpoint: issuer.url(routes::AUTHORIZE),
        token_endpoint: issuer.url(routes::TOKEN),
        jwks_uri: issuer.url(routes::JWKS),
        revocation_endpoint: issuer.url(routes::REVOKE),
        revocation_endpoint_auth_methods_supported: vec![
            "none",
            "client_secret_basic",
            "client_secret_post",
        ],
        introspection_endpoint: issuer.url(routes::INTROSPECT),
        introspection_endpoint_auth_methods_supported: vec![
            "client_secret_basic",
            "client_secret_post",
        ],
        registration_endpoint: config
            .registration
            .enabled
            .then(|| issuer.url(routes::REGISTER)),
        scopes_supported: config
            .scope_names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        response_types_supported: vec!["code"],
        response_modes_supported: vec!["query"],
        grant_types_supported: super::grants::GrantType::ALL
            .iter()
            .map(|g| g.as_str())
            .collect(),
        token_endpoint_auth_methods_supported: vec![
            "none",
            "client_secret_basic",
            "client_secret_post",
        ],
        code_challenge_methods_supported: vec!["S256"],
        access_token_signing_alg_values_supported: vec![config.signing_algorithm.as_str()],
        authorization_response_iss_parameter_supported: true,
        client_id_metadata_document_supported: config.client_metadata.enabled.then_some(true),
    }
}

/// `GET /.well-known/oauth-authorization-server`
pub async fn metadata_get(State(state): State<AppState>) -> Response {
    web::public_json(&authorization_server_metadata(&state.config))
}

/// `GET /.well-known/openid-configuration`: 404. Gatehouse is an OAuth server for MCP and issues
/// no ID tokens; a partial OIDC document would break clients that validate it (the TS SDK
/// requires every OIDC field), and clients only try this URL after the RFC 8414 one.
pub async fn openid_configuration_get() -> Response {
    web::json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "This server is not an OpenID Provider; its metadata is at /.well-known/oauth-authorization-server",
    )
}
