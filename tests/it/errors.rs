//! Bad requests get JSON errors with the right status, never HTML and never 5xx.

use crate::support::{TestApp, request};
use axum::body::Body;

#[tokio::test]
async fn unknown_paths_are_json_404s() {
    let app = TestApp::sqlite().await;
    let long = format!("/{}", "a".repeat(8000));
    for path in [
        "/nope",
        "/.well-known/nope",
        "/%ff%fe",
        "/jwks.json/extra",
        long.as_str(),
    ] {
        let res = app.get(path).await;
        assert_eq!(res.status, 404, "{path}");
        assert_eq!(
            res.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        assert_eq!(res.json()["error"], "not_found", "{path}");
    }
}

#[tokio::test]
async fn wrong_methods_are_json_405s() {
    let app = TestApp::sqlite().await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/jwks.json",
        "/health",
    ] {
        let res = app
            .send(
                request("POST", path)
                    .body(Body::from("x"))
                    .expect("request"),
            )
            .await;
        assert_eq!(res.status, 405, "{path}");
        assert_eq!(res.json()["error"], "method_not_allowed", "{path}");
    }
}

#[tokio::test]
async fn every_response_says_nosniff() {
    let app = TestApp::sqlite().await;
    for path in ["/health", "/nope", "/mcp", "/jwks.json"] {
        assert_eq!(
            app.get(path).await.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
}

/// Discovery, health and the OAuth endpoints have per-IP budgets of their own; preflights do
/// not spend them.
#[tokio::test]
async fn public_and_oauth_endpoints_have_per_ip_budgets() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let url = crate::support::sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |c| {
        c.rate_limits.public_per_minute = 3;
        c.rate_limits.oauth_per_minute = 2;
    })
    .await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/jwks.json",
        "/health",
    ] {
        assert_eq!(app.get(path).await.status, 200, "{path}");
    }
    let preflight = app
        .send(
            request("OPTIONS", "/jwks.json")
                .header("origin", "https://x.example")
                .header("access-control-request-method", "GET")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(preflight.status, 200);
    let res = app.get("/.well-known/oauth-protected-resource/mcp").await;
    assert_eq!(res.status, 429);
    assert!(res.header("retry-after").is_some());
    assert_eq!(res.json()["error"], "rate_limited");

    let form = || {
        request("POST", "/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from("grant_type=client_credentials&client_id=gh_x"))
            .expect("request")
    };
    assert_eq!(app.send(form()).await.status, 401);
    assert_eq!(app.get("/login").await.status, 200);
    assert_eq!(app.send(form()).await.status, 429);
}
