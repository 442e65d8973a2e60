//! MCP sessions and what they may cost. Stateless (the default): no session is kept between
//! requests, so none can pile up. Stateful (`mcp.session_mode = "stateful"`): a bounded number
//! per user (a new one ends the oldest, which then answers 404 as any unknown session) and in
//! all (past it, a new session is refused with 503 and `Retry-After`; live ones keep working).

use crate::support::TestApp;
use crate::support::mcp::{access_token, app_with, bodiless, call, initialize, mcp, message};
use gatehouse::config::SessionMode;
use serde_json::json;

use crate::support::PASSWORD;

/// A signed-in user's access token.
async fn token_of(app: &TestApp, user: &str) -> String {
    app.add_user(user, PASSWORD, &["user"]).await;
    access_token(app, user).await
}

/// Opens a session with `token`; its id.
async fn open(app: &TestApp, token: &str) -> String {
    let res = mcp(
        app,
        Some(token),
        None,
        "2025-06-18",
        initialize("2025-06-18"),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    res.header("mcp-session-id").expect("a session").to_owned()
}

/// What a `whoami` call in `session` answers.
async fn call_in(app: &TestApp, token: &str, session: &str) -> u16 {
    mcp(
        app,
        Some(token),
        Some(session),
        "2025-06-18",
        call(9, "whoami", json!({})),
    )
    .await
    .status
    .as_u16()
}

fn stateful(per_user: usize, total: usize) -> impl FnOnce(&mut gatehouse::config::Config) {
    move |c| {
        c.mcp.session_mode = SessionMode::Stateful;
        c.mcp.max_sessions_per_user = per_user;
        c.mcp.max_sessions = total;
    }
}

/// The default keeps nothing between requests: `initialize` answers without a session, every
/// later request stands alone, a session id nobody issued is unknown (404), and there is no
/// stream to open (`GET /mcp` is 405).
#[tokio::test]
async fn stateless_by_default_keeps_no_session() {
    let app = TestApp::sqlite().await;
    let token = token_of(&app, "alice").await;
    for _ in 0..3 {
        let res = mcp(
            &app,
            Some(&token),
            None,
            "2025-06-18",
            initialize("2025-06-18"),
        )
        .await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("mcp-session-id"), None);
    }
    let res = mcp(
        &app,
        Some(&token),
        None,
        "2025-06-18",
        call(2, "whoami", json!({})),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert!(message(&res)["result"]["content"][0]["text"].is_string());
    assert_eq!(call_in(&app, &token, "made-up-session").await, 404);
    let res = bodiless(&app, "GET", &token, None).await;
    assert_eq!(res.status, 405, "{}", res.text());
}

/// A user over `mcp.max_sessions_per_user`: each new session ends their oldest, which answers
/// 404 from then on (the transport's answer for an unknown session); the eviction is audited;
/// another user's sessions are untouched.
#[tokio::test]
async fn a_users_oldest_session_is_evicted_past_the_per_user_bound() {
    let app = app_with(stateful(2, 100)).await;
    let alice = token_of(&app, "alice").await;
    let bob = token_of(&app, "bob").await;
    let bobs = open(&app, &bob).await;
    let first = open(&app, &alice).await;
    let second = open(&app, &alice).await;
    assert_eq!(call_in(&app, &alice, &first).await, 200);
    let third = open(&app, &alice).await;
    assert_eq!(call_in(&app, &alice, &first).await, 404, "the oldest ended");
    assert_eq!(call_in(&app, &alice, &second).await, 200);
    assert_eq!(call_in(&app, &alice, &third).await, 200);
    assert_eq!(call_in(&app, &bob, &bobs).await, 200, "bob's is his own");
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 100)
        .await
        .expect("audit");
    let evicted: Vec<_> = events
        .iter()
        .filter(|e| e.event.kind == "mcp.session_evicted")
        .collect();
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].event.subject.as_deref(), Some("u_alice"));
}

/// Past `mcp.max_sessions` a new session is refused, 503 with `Retry-After`, and the live ones
/// keep working; once one ends (`DELETE`), there is room again.
#[tokio::test]
async fn past_the_total_bound_a_new_session_is_refused_and_the_live_ones_work() {
    let app = app_with(stateful(10, 2)).await;
    let alice = token_of(&app, "alice").await;
    let bob = token_of(&app, "bob").await;
    let a = open(&app, &alice).await;
    let b = open(&app, &bob).await;
    let res = mcp(
        &app,
        Some(&alice),
        None,
        "2025-06-18",
        initialize("2025-06-18"),
    )
    .await;
    assert_eq!(res.status, 503, "{}", res.text());
    assert_eq!(res.json()["error"], "too_many_sessions");
    assert!(
        res.header("retry-after")
            .is_some_and(|s| s.parse::<u64>().is_ok())
    );
    assert_eq!(call_in(&app, &alice, &a).await, 200);
    assert_eq!(call_in(&app, &bob, &b).await, 200);
    let res = bodiless(&app, "DELETE", &bob, Some(&b)).await;
    assert!(res.status.is_success(), "{} {}", res.status, res.text());
    open(&app, &alice).await;
}

/// A session is recognised, not kept open: a call in it is served; its id is long and random;
/// there is no stream to open in it (`GET` is 405, which the transport allows); a request with no
/// id is still served (the 2026-07-28 protocol has none); `DELETE` ends it (204), after which the
/// id is unknown (404) and a second `DELETE` is too.
#[tokio::test]
async fn a_stateful_session_is_recognised_and_ends_on_delete() {
    let app = app_with(stateful(16, 100)).await;
    let alice = token_of(&app, "alice").await;
    let session = open(&app, &alice).await;
    assert!(session.len() >= 22, "{session}");
    assert_ne!(session, open(&app, &alice).await);
    assert_eq!(call_in(&app, &alice, &session).await, 200);
    assert_eq!(
        bodiless(&app, "GET", &alice, Some(&session)).await.status,
        405
    );
    let res = mcp(
        &app,
        Some(&alice),
        None,
        "2025-06-18",
        call(3, "whoami", json!({})),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        res.header("mcp-session-id"),
        None,
        "only initialize opens one"
    );
    assert_eq!(
        bodiless(&app, "DELETE", &alice, Some(&session))
            .await
            .status,
        204
    );
    assert_eq!(call_in(&app, &alice, &session).await, 404);
    assert_eq!(
        bodiless(&app, "DELETE", &alice, Some(&session))
            .await
            .status,
        404
    );
}

/// An `initialize` the service refuses (here a protocol header that contradicts its body) opens
/// no session and spends none of the bounds. (The per-user bound is above the total so that a
/// session the refusal had opened would fill the instance, not be evicted by the next one.)
#[tokio::test]
async fn a_refused_initialize_opens_no_session() {
    let app = app_with(stateful(10, 1)).await;
    let alice = token_of(&app, "alice").await;
    let res = mcp(
        &app,
        Some(&alice),
        None,
        "2025-03-26",
        initialize("2025-06-18"),
    )
    .await;
    assert_ne!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("mcp-session-id"), None);
    open(&app, &alice).await;
}

/// Concurrent `initialize` requests at the total bound: no more sessions than `mcp.max_sessions`
/// are opened, however many were checked for room before any of them was served; the others are
/// refused with 503 and open nothing.
#[tokio::test]
async fn concurrent_openings_never_pass_the_total_bound() {
    let app = app_with(stateful(100, 2)).await;
    let alice = token_of(&app, "alice").await;
    let mut openings = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (router, token) = (app.router.clone(), alice.clone());
        openings.spawn(async move {
            use tower::ServiceExt;
            let body = initialize("2025-06-18").to_string();
            let req = crate::support::request("POST", "/mcp")
                .header("host", "mcp.example.com")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::from(body))
                .expect("request");
            let res = router.oneshot(req).await.unwrap_or_else(|e| match e {});
            (
                res.status().as_u16(),
                res.headers().contains_key("mcp-session-id"),
            )
        });
    }
    let answers = openings.join_all().await;
    let opened = answers.iter().filter(|(_, id)| *id).count();
    assert_eq!(opened, 2, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(status, id)| (*status == 200 && *id) || (*status == 503 && !*id)),
        "{answers:?}"
    );
}
