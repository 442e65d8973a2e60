//! `/health`: 200 with the signing key when all is well, 503 with the reason when not.

use crate::support::TestApp;

#[tokio::test]
async fn healthy_server_reports_database_and_key() {
    let app = TestApp::sqlite().await;
    let res = app.get("/health").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let body = res.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
    let kid = app.state.keys.snapshot().current().kid().to_owned();
    assert_eq!(body["signing_key"]["kid"], kid.as_str());
    assert_eq!(body["signing_key"]["alg"], "ES256");
}

#[tokio::test]
async fn unreachable_database_is_a_503_with_the_reason() {
    let app = TestApp::sqlite().await;
    app.state.store.close().await;
    let res = app.get("/health").await;
    assert_eq!(res.status, 503);
    let body = res.json();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"], "database unreachable");
}

/// RFC 6797: on an https issuer every answer, errors included, tells browsers to keep to https.
#[tokio::test]
async fn an_https_issuer_sends_strict_transport_security() {
    let app = TestApp::sqlite().await;
    for path in [
        "/health",
        "/mcp",
        "/.well-known/oauth-authorization-server",
        "/nowhere",
    ] {
        let res = app.get(path).await;
        assert_eq!(
            res.header("strict-transport-security"),
            Some("max-age=31536000"),
            "{path}"
        );
    }
}
