//! RFC 8414 metadata, RFC 9728 Protected Resource Metadata and the OIDC decision, checked field
//! by field against what MCP clients require (RFC 8414, RFC 9728) and snapshot-tested.

use crate::support::{ISSUER, TestApp, request};
use axum::body::Body;
use serde_json::Value;

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string"))
        .collect()
}

#[tokio::test]
async fn authorization_server_metadata_matches_the_contract() {
    let app = TestApp::sqlite().await;
    let res = app.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let doc = res.json();
    insta::assert_json_snapshot!("authorization_server_metadata", doc);

    // RFC 8414 §3.3: the issuer is the string the well-known URL was built from, no slash.
    assert_eq!(doc["issuer"], ISSUER);
    assert_eq!(doc["authorization_endpoint"], format!("{ISSUER}/authorize"));
    assert_eq!(doc["token_endpoint"], format!("{ISSUER}/token"));
    assert_eq!(doc["jwks_uri"], format!("{ISSUER}/jwks.json"));
    // code + S256 (MCP clients stop without S256), and never plain.
    assert_eq!(strings(&doc["response_types_supported"]), ["code"]);
    let pkce = strings(&doc["code_challenge_methods_supported"]);
    assert!(
        pkce.contains(&"S256") && !pkce.contains(&"plain"),
        "{pkce:?}"
    );
    // No implicit, no password grant.
    let grants = strings(&doc["grant_types_supported"]);
    assert!(grants.contains(&"authorization_code") && grants.contains(&"refresh_token"));
    assert!(
        !grants.contains(&"implicit") && !grants.contains(&"password"),
        "{grants:?}"
    );
    // `none` is required for Claude's CIMD path.
    assert!(strings(&doc["token_endpoint_auth_methods_supported"]).contains(&"none"));
    // RFC 9207: `iss` in every authorization response.
    assert_eq!(doc["authorization_response_iss_parameter_supported"], true);
    // offline_access is never advertised (Claude would add it to every request); refresh tokens
    // are always issued.
    assert!(!strings(&doc["scopes_supported"]).contains(&"offline_access"));
    // Absent optional fields are omitted, never null (Claude Code rejects null).
    assert!(
        doc.as_object()
            .expect("object")
            .values()
            .all(|v| !v.is_null())
    );
}

#[tokio::test]
async fn protected_resource_metadata_matches_the_contract() {
    let app = TestApp::sqlite().await;
    let prm = app.get("/.well-known/oauth-protected-resource/mcp").await;
    assert_eq!(prm.status, 200);
    assert_eq!(prm.header("content-type"), Some("application/json"));
    let doc = prm.json();
    insta::assert_json_snapshot!("protected_resource_metadata", doc);

    let metadata = app
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    // Byte-identical issuer strings: clients compare them as raw strings.
    assert_eq!(
        doc["authorization_servers"][0]
            .as_str()
            .expect("string")
            .as_bytes(),
        metadata["issuer"].as_str().expect("string").as_bytes()
    );
    // RFC 9728 §3.3: the resource is exactly the URL users paste.
    assert_eq!(doc["resource"], format!("{ISSUER}/mcp"));
    assert_eq!(strings(&doc["bearer_methods_supported"]), ["header"]);
    assert!(!strings(&doc["scopes_supported"]).contains(&"offline_access"));
    assert_eq!(doc["resource_name"], "Gatehouse");
}

/// The same document at the path-aware and the root URL (RFC 9728 §3); a trailing slash (MCP
/// Python SDK) and a copied query string (TS SDK) are tolerated.
#[tokio::test]
async fn protected_resource_metadata_is_identical_at_every_url_clients_try() {
    let app = TestApp::sqlite().await;
    let canonical = app
        .get("/.well-known/oauth-protected-resource/mcp")
        .await
        .body;
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp/",
        "/.well-known/oauth-protected-resource/mcp?session=abc",
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.body, canonical, "{path}");
    }
}

/// Gatehouse issues no ID tokens, so OIDC discovery is a 404 (JSON), never a partial document
/// and never 5xx.
#[tokio::test]
async fn openid_configuration_is_a_json_404() {
    let app = TestApp::sqlite().await;
    let res = app.get("/.well-known/openid-configuration").await;
    assert_eq!(res.status, 404);
    assert_eq!(res.json()["error"], "not_found");
}

/// Every advertised URL on this origin is one the router serves (those that exist so far).
#[tokio::test]
async fn advertised_jwks_uri_is_served() {
    let app = TestApp::sqlite().await;
    let doc = app
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    let path = doc["jwks_uri"]
        .as_str()
        .and_then(|u| u.strip_prefix(ISSUER))
        .expect("jwks_uri on the issuer origin");
    assert_eq!(app.get(path).await.status, 200);
}

/// Discovery is CORS-readable, and the TS SDK's preflight (forced by its `MCP-Protocol-Version`
/// header) is answered.
#[tokio::test]
async fn discovery_documents_are_cors_readable_and_preflights_answered() {
    let app = TestApp::sqlite().await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
        "/jwks.json",
    ] {
        let get = app
            .send(
                request("GET", path)
                    .header("origin", "https://inspector.example")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(get.status, 200, "{path}");
        assert_eq!(
            get.header("access-control-allow-origin"),
            Some("*"),
            "{path}"
        );
        assert!(
            get.header("access-control-allow-credentials").is_none(),
            "{path}"
        );

        let preflight = app
            .send(
                request("OPTIONS", path)
                    .header("origin", "https://inspector.example")
                    .header("access-control-request-method", "GET")
                    .header("access-control-request-headers", "mcp-protocol-version")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(preflight.status, 200, "{path}");
        assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
        let allowed = preflight
            .header("access-control-allow-headers")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            allowed.contains("mcp-protocol-version"),
            "{path}: {allowed}"
        );
    }
}

/// Public documents are cacheable for a bounded time.
#[tokio::test]
async fn discovery_documents_have_bounded_cache_lifetimes() {
    let app = TestApp::sqlite().await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-protected-resource/mcp",
        "/jwks.json",
    ] {
        assert_eq!(
            app.get(path).await.header("cache-control"),
            Some("public, max-age=300"),
            "{path}"
        );
    }
}
