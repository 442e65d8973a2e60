//! RFC 9728 Protected Resource Metadata, served identically at
//! `/.well-known/oauth-protected-resource/mcp` and `/.well-known/oauth-protected-resource`
//! (RFC 9728 §3; clients try the path-aware URL first, then the root).

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use crate::config::Config;
use crate::state::AppState;
use crate::web;

/// The RFC 9728 §2 document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProtectedResourceMetadata {
    /// Exactly `{issuer}/mcp`, the URL users paste (RFC 9728 §3.3).
    pub resource: String,
    /// The issuer, byte-identical to the AS metadata `issuer` (clients compare raw strings).
    pub authorization_servers: Vec<String>,
    /// The scope catalog; never `offline_access` (MCP authorization spec).
    pub scopes_supported: Vec<String>,
    /// Tokens only in the `Authorization` header.
    pub bearer_methods_supported: Vec<&'static str>,
    /// Human-readable name.
    pub resource_name: String,
}

/// Builds the document for this configuration.
pub fn protected_resource_metadata(config: &Config) -> ProtectedResourceMetadata {
    ProtectedResourceMetadata {
        resource: config.resource(),
        authorization_servers: vec![config.issuer.as_str().to_owned()],
        scopes_supported: config
            .scope_names()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        bearer_methods_supported: vec!["header"],
        resource_name: config.product_name.clone(),
    }
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`
pub async fn prm_get(State(state): State<AppState>) -> Response {
    web::public_json(&protected_resource_metadata(&state.config))
}
