//! `/mcp` before the MCP service lands: every request is a 401 whose challenge starts discovery
//! (RFC 9728 §5.1, MCP authorization spec), and browser preflights are answered without a token.

use crate::support::{ISSUER, TestApp, request, sqlite_url};
use axum::body::Body;
use tempfile::TempDir;

const CHALLENGE: &str = "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\", scope=\"mcp\"";

#[tokio::test]
async fn no_token_is_a_401_with_the_exact_challenge_and_json_body() {
    let app = TestApp::sqlite().await;
    for (method, path) in [
        ("POST", "/mcp"),
        ("GET", "/mcp"),
        ("DELETE", "/mcp"),
        ("POST", "/mcp/"),
    ] {
        let res = app
            .send(
                request(method, path)
                    .header("content-type", "application/json")
                    .body(Body::from(
                        r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#,
                    ))
                    .expect("request"),
            )
            .await;
        assert_eq!(res.status, 401, "{method} {path}");
        assert_eq!(
            res.header("www-authenticate"),
            Some(CHALLENGE),
            "{method} {path}"
        );
        assert_eq!(res.header("content-type"), Some("application/json"));
        let body = res.json();
        assert_eq!(body["error"], "unauthorized");
        assert_eq!(body["error_description"], "Authentication required");
    }
}

/// Starts with `Bearer `, `name="value"` with no spaces around `=`, an absolute URL, one
/// challenge, as the TS and Python SDKs parse it; never `offline_access` (MCP authorization spec).
#[tokio::test]
async fn challenge_parses_the_way_sdk_clients_parse_it() {
    let app = TestApp::sqlite().await;
    let res = app.get("/mcp").await;
    let values: Vec<_> = res.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(values.len(), 1, "one challenge");
    let header = values[0].to_str().expect("ascii");
    let (scheme, params) = header.split_once(' ').expect("scheme and params");
    assert_eq!(scheme, "Bearer");
    assert!(!header.contains(" =") && !header.contains("= "), "{header}");
    // The TS and Python SDKs' regex: name=(?:"([^"]+)"|([^\s,]+))
    let find = |name: &str| -> Option<String> {
        let start = params.find(&format!("{name}=\""))? + name.len() + 2;
        let end = params[start..].find('"')? + start;
        Some(params[start..end].to_owned())
    };
    let prm = find("resource_metadata").expect("resource_metadata");
    assert_eq!(
        prm,
        format!("{ISSUER}/.well-known/oauth-protected-resource/mcp")
    );
    assert_eq!(
        app.get(prm.strip_prefix(ISSUER).expect("same origin"))
            .await
            .status,
        200
    );
    let scope = find("scope").expect("scope");
    assert!(!scope.split(' ').any(|s| s == "offline_access"), "{scope}");
}

#[tokio::test]
async fn presented_token_is_answered_invalid_token() {
    let app = TestApp::sqlite().await;
    let res = app
        .send(
            request("POST", "/mcp")
                .header("authorization", "Bearer eyJhbGciOiJub25lIn0.e30.")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(res.status, 401);
    let header = res.header("www-authenticate").expect("challenge");
    assert!(
        header.starts_with("Bearer error=\"invalid_token\", "),
        "{header}"
    );
    assert!(header.contains(
        "resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
    ));
    assert_eq!(res.json()["error"], "invalid_token");
}

/// A browser's preflight is answered before authentication, with the headers MCP clients send
/// and read, and never with credentials.
#[tokio::test]
async fn preflight_is_answered_without_a_token() {
    let app = TestApp::sqlite().await;
    let res = app
        .send(
            request("OPTIONS", "/mcp")
                .header("origin", "https://inspector.example")
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type,mcp-session-id,mcp-protocol-version",
                )
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("access-control-allow-origin"), Some("*"));
    assert!(res.header("access-control-allow-credentials").is_none());
    assert_eq!(res.header("access-control-max-age"), Some("86400"));
    let methods = res.header("access-control-allow-methods").expect("methods");
    for m in ["POST", "GET", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = res.header("access-control-allow-headers").expect("headers");
    for h in [
        "authorization",
        "content-type",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
        "mcp-method",
        "mcp-name",
    ] {
        assert!(headers.contains(h), "{h} missing from {headers}");
    }

    // The 401 itself exposes the challenge and session headers to browser code.
    let res = app
        .send(
            request("POST", "/mcp")
                .header("origin", "https://inspector.example")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    let exposed = res.header("access-control-expose-headers").expect("expose");
    for h in ["www-authenticate", "mcp-session-id", "retry-after"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
}

#[tokio::test]
async fn configured_origins_limit_cors() {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |c| {
        c.allowed_origins = vec!["https://app.example.com".to_owned()];
    })
    .await;
    let preflight = |origin: &'static str| {
        request("OPTIONS", "/mcp")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .expect("request")
    };
    let allowed = app.send(preflight("https://app.example.com")).await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let other = app.send(preflight("https://evil.example")).await;
    assert!(other.header("access-control-allow-origin").is_none());
}
