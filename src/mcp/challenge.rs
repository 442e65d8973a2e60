//! The `WWW-Authenticate: Bearer` challenge (RFC 6750 §3, RFC 9728 §5.1) in the exact form MCP
//! clients parse: `Bearer name="value", name="value"`, one challenge, absolute URLs (the TS SDK
//! ignores a header that does not start with `Bearer`, and both SDKs find parameters by regex).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::Config;
use crate::domain::ScopeSet;
use crate::routes;

/// A Bearer challenge and the matching JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BearerChallenge {
    resource_metadata: String,
    scope: String,
    error: Option<(&'static str, String)>,
}

/// RFC 7230 quoted-string content: escape `\` and `"`, drop control characters.
fn quote(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            _ => vec![c],
        })
        .collect()
}

impl BearerChallenge {
    /// The challenge for a request with no token: the PRM URL of `/mcp` and the default scopes
    /// (never `offline_access`).
    pub fn for_config(config: &Config) -> Self {
        Self {
            resource_metadata: config.issuer.url(routes::PRM_MCP),
            scope: config
                .default_scopes
                .iter()
                .collect::<ScopeSet>()
                .to_string(),
            error: None,
        }
    }

    /// The same challenge for a presented token that is not valid.
    pub fn invalid_token(mut self, description: &str) -> Self {
        self.error = Some(("invalid_token", description.to_owned()));
        self
    }

    /// The 403 challenge for a token that lacks scopes: `scope` lists every scope the request
    /// needs (not only the missing ones), so a client can step up in one round trip (RFC 6750
    /// §3.1; MCP authorization spec).
    pub fn insufficient_scope(mut self, needed: &ScopeSet) -> Self {
        self.error = Some((
            "insufficient_scope",
            format!("This request needs the scopes: {needed}"),
        ));
        self.scope = needed.to_string();
        self
    }

    /// The `WWW-Authenticate` header value.
    pub fn header_value(&self) -> String {
        let mut params = Vec::new();
        if let Some((code, description)) = &self.error {
            params.push(format!("error=\"{code}\""));
            params.push(format!("error_description=\"{}\"", quote(description)));
        }
        params.push(format!(
            "resource_metadata=\"{}\"",
            quote(&self.resource_metadata)
        ));
        if !self.scope.is_empty() {
            params.push(format!("scope=\"{}\"", quote(&self.scope)));
        }
        format!("Bearer {}", params.join(", "))
    }
}

impl IntoResponse for BearerChallenge {
    fn into_response(self) -> Response {
        let body = match &self.error {
            Some((code, description)) => json!({ "error": code, "error_description": description }),
            None => {
                json!({ "error": "unauthorized", "error_description": "Authentication required" })
            }
        };
        let status = match &self.error {
            Some(("insufficient_scope", _)) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&self.header_value()) {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_and_strips() {
        assert_eq!(quote("a\"b\\c\nd"), "a\\\"b\\\\cd");
    }
}
