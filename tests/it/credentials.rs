//! The credentials `/mcp` accepts (`mcp.credentials`), through a real socket so that the
//! connection's peer is known: a person named by a trusted proxy (`forwarded`), believed only
//! from `trusted_proxies` and only when configured; a bearer token of a kind not accepted is
//! refused, never tried as another kind.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::support::mcp::{app_with, call, stateless};
use crate::support::{PASSWORD, TestApp, serve_on_loopback};
use gatehouse::config::CredentialSource;

/// `tools/call whoami` over loopback with `headers`: the status, the challenge, and the answer.
async fn whoami(app: &TestApp, headers: &[(&str, &str)]) -> (StatusCode, Option<String>, Value) {
    let addr = serve_on_loopback(app.router.clone()).await;
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/mcp"))
        .header("host", "mcp.example.com")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "whoami");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req
        .body(stateless(call(1, "whoami", json!({}))).to_string())
        .send()
        .await
        .expect("send");
    let status = res.status();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: Value =
        serde_json::from_str(&res.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    (status, challenge, body)
}

fn forwarding(trusted: &str) -> impl FnOnce(&mut gatehouse::config::Config) + '_ {
    move |c| {
        c.mcp.credentials = vec![
            CredentialSource::Oauth,
            CredentialSource::ApiToken,
            CredentialSource::Forwarded,
        ];
        c.trusted_proxies = vec![trusted.parse().expect("cidr")];
        c.mcp.forwarded_group_roles = BTreeMap::from([("eng".to_owned(), "user".to_owned())]);
    }
}

/// From a trusted proxy, the named person is the caller, with the roles their groups map to
/// (comma-separated, trimmed, empty entries dropped, case-sensitive); a group that maps to no
/// role gives no scope, so the call is refused for its scope, not for its identity.
#[tokio::test]
async fn a_person_named_by_a_trusted_proxy_calls_with_their_groups_roles() {
    let app = app_with(forwarding("127.0.0.1/32")).await;
    let (status, _, body) = whoami(
        &app,
        &[
            ("x-forwarded-user", "carol"),
            ("x-forwarded-groups", " eng , ,ops"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("carol") && text.contains("forwarded"),
        "{text}"
    );
    assert!(
        text.contains("\\\"user\\\""),
        "the role of group eng: {text}"
    );

    let (status, challenge, _) = whoami(
        &app,
        &[("x-forwarded-user", "dave"), ("x-forwarded-groups", "Eng")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "groups are case-sensitive");
    assert!(challenge.is_some_and(|c| c.contains("insufficient_scope")));

    // A bearer token comes first in `mcp.credentials` here: a forged one is refused, and the
    // trusted proxy's headers do not rescue it.
    for forged in [
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJjYXJvbCJ9.",
        "gh_pat_malformed",
    ] {
        let (status, challenge, _) = whoami(
            &app,
            &[
                ("authorization", &format!("Bearer {forged}")),
                ("x-forwarded-user", "carol"),
                ("x-forwarded-groups", "eng"),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{forged}");
        assert!(challenge.is_some_and(|c| c.contains("invalid_token")));
    }

    let (status, challenge, _) = whoami(&app, &[("x-forwarded-user", "")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.is_some_and(|c| c.contains("invalid_token")));
}

/// The same headers from an address that is not a trusted proxy, or where `forwarded` is not a
/// configured credential, are ignored: the request has no credential (401 with the challenge).
#[tokio::test]
async fn forwarded_headers_from_anyone_else_or_unconfigured_are_ignored() {
    let untrusted = app_with(forwarding("10.0.0.0/8")).await;
    let not_configured = app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    for app in [&untrusted, &not_configured] {
        let (status, challenge, _) = whoami(
            app,
            &[("x-forwarded-user", "carol"), ("x-forwarded-groups", "eng")],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let challenge = challenge.expect("challenge");
        assert!(
            challenge.starts_with("Bearer resource_metadata=") && !challenge.contains("error="),
            "no credential at all: {challenge}"
        );
    }
}

/// With `mcp.credentials = ["oauth"]`, an API token is refused as a kind not accepted here
/// (never read as a JWT), while access tokens keep working.
#[tokio::test]
async fn a_token_of_a_kind_not_configured_is_refused() {
    let app = app_with(|c| c.mcp.credentials = vec![CredentialSource::Oauth]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let jwt = crate::support::mcp::access_token(&app, "alice").await;
    let (status, _, _) = whoami(&app, &[("authorization", &format!("Bearer {jwt}"))]).await;
    assert_eq!(status, StatusCode::OK);
    let user = app
        .state
        .store
        .user_by_name("alice")
        .await
        .expect("read")
        .expect("alice");
    let created = gatehouse::account::api_tokens::create(
        &app.state.store,
        &app.state.config,
        &user,
        "script",
        &["mcp".to_owned()],
        Some(7),
        "operator",
        app.state.clock.now(),
    )
    .await
    .expect("store")
    .expect("created");
    let bearer = format!("Bearer {}", created.token.expose());
    let (status, challenge, _) = whoami(&app, &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let challenge = challenge.expect("challenge");
    // Told as any invalid token is (the answer does not say which kinds exist); the audit log
    // has the reason.
    assert!(
        challenge.contains("invalid_token") && !challenge.contains("API"),
        "{challenge}"
    );
    let events = app
        .state
        .store
        .audit_events(&Default::default(), None, 100)
        .await
        .expect("audit");
    assert!(
        events.iter().any(|e| e.event.kind == "mcp.refused"
            && e.event.detail["reason"] == "this kind of token is not accepted here"),
        "{events:?}"
    );
}
