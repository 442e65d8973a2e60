//! The token endpoint (RFC 6749 §4.1.3, §5, §6; RFC 7636; RFC 8707; RFC 9068), revocation
//! (RFC 7009) and introspection (RFC 7662). The main flow is driven by the independent `oauth2`
//! crate; the misbehaviour of real clients is reproduced as it is seen (ChatGPT posting one code
//! twice, refreshes raced or retried after a lost response, no `offline_access` asked for).
//! Expiry uses the fixed clock, never sleeps.

mod client_credentials;
mod code;
mod instances;
mod refresh;
mod retention;
mod revocation;

use std::collections::HashMap;

use crate::support::{Agent, ISSUER, TestApp, TestResponse, oauth_http, query_of, request};
use axum::body::Body;
use gatehouse::clock::Clock;
use gatehouse::domain::Secret;
use gatehouse::store::Pruned;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthorizationCode, ClientId, PkceCodeChallenge, RedirectUrl, RefreshToken, TokenResponse as _,
    TokenUrl,
};
use serde_json::{Value, json};

use crate::support::oauth::{code_for, exchange, post, refresh, resource};
use crate::support::{CALLBACK, PASSWORD};

async fn app_with_claude() -> (TestApp, String) {
    with_claude(TestApp::sqlite().await).await
}

async fn with_claude(app: TestApp) -> (TestApp, String) {
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    (app, client_id)
}

/// A refresh with `token` is refused as `invalid_grant` (its family is dead).
async fn assert_refresh_refused(app: &TestApp, client_id: &str, token: &Value) {
    let token = token.as_str().expect("a refresh token");
    assert_error(&refresh(app, client_id, token).await, 400, "invalid_grant");
}

fn assert_error(res: &TestResponse, status: u16, code: &str) {
    assert_eq!(res.status, status, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(res.json()["error"], code, "{}", res.text());
}

/// Verifies an access token the way an independent resource server would: with the JWK set.
async fn verified_claims(app: &TestApp, token: &str) -> (Value, josekit::jws::JwsHeader) {
    let jwks = app.get("/jwks.json").await.json();
    let key = josekit::jwk::Jwk::from_map(jwks["keys"][0].as_object().expect("key").clone())
        .expect("jwk");
    let verifier = josekit::jws::ES256
        .verifier_from_jwk(&key)
        .expect("verifier");
    let (payload, header) =
        josekit::jwt::decode_with_verifier(token, &verifier).expect("signature");
    (Value::Object(payload.claims_set().clone()), header)
}

/// What `/mcp` answers a `tools/call whoami` made with `access_token`.
pub(crate) async fn mcp_status(app: &TestApp, access_token: &str) -> u16 {
    use crate::support::mcp::{call, mcp, stateless};
    let body = stateless(call(1, "whoami", json!({})));
    mcp(app, Some(access_token), None, "2026-07-28", body)
        .await
        .status
        .as_u16()
}

/// Sends the same form `n` times at once, from spawned tasks (really concurrent database
/// transactions on a multi-threaded runtime); returns each answer's status and body.
async fn concurrently(
    app: &TestApp,
    n: usize,
    path: &'static str,
    fields: &[(&str, &str)],
) -> Vec<(u16, Vec<u8>)> {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut handles = Vec::new();
    for _ in 0..n {
        let (router, body) = (app.router.clone(), body.clone());
        handles.push(tokio::spawn(async move {
            use tower::ServiceExt;
            let req = request("POST", path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .expect("req");
            let res = router.oneshot(req).await.unwrap_or_else(|e| match e {});
            let status = res.status().as_u16();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
                .await
                .expect("body");
            (status, bytes.to_vec())
        }));
    }
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.expect("task"));
    }
    answers
}

/// A code for `client_id` from a browser already signed in and consented, with a PKCE pair of
/// its own; the code and the verifier.
async fn code_for_signed_in(agent: &mut Agent<'_>, client_id: &str) -> (String, String) {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let path = format!(
        "/authorize?response_type=code&client_id={client_id}&redirect_uri={CALLBACK}&scope=mcp&state=s&code_challenge={}&code_challenge_method=S256",
        challenge.as_str()
    );
    let back = agent.get(&path).await.location();
    assert!(back.starts_with(CALLBACK), "{back}");
    (query_of(&back)["code"].clone(), verifier.secret().clone())
}

/// A tool called with `access_token`: the text of its result (JSON for the built-in tools), or
/// the tool error's text.
async fn tool_text(app: &TestApp, access_token: &str, tool: &str, arguments: Value) -> String {
    use crate::support::mcp::{call, mcp, message, stateless};
    let res = mcp(
        app,
        Some(access_token),
        None,
        "2026-07-28",
        stateless(call(1, tool, arguments)),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    message(&res)["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {}", res.text()))
        .to_owned()
}

/// `POST /revoke` of `token` by the public client `client_id`.
async fn revoke_as_public_client(app: &TestApp, client_id: &str, token: &str) -> TestResponse {
    post(
        app,
        "/revoke",
        &[("token", token), ("client_id", client_id)],
        None,
    )
    .await
}

/// Audit event kinds, oldest first.
async fn event_kinds(app: &TestApp) -> Vec<String> {
    let mut events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 100)
        .await
        .expect("audit");
    events.reverse();
    events.into_iter().map(|e| e.event.kind).collect()
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| k.as_str() == kind).count()
}
