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
