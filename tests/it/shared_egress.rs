//! Hosted clients (Claude.ai, ChatGPT) reach the server from a few shared addresses on behalf of
//! many people. A genuine token that has merely expired is not unauthenticated traffic, and
//! addresses listed in `rate_limits.shared_egress` get every per-address budget times
//! `rate_limits.shared_egress_factor`; every 429 names the budget it hit.

use crate::support::mcp::{call, mcp, stateless};
use crate::support::{Agent, ISSUER, TestApp, post_form, query_of, sqlite_url};
use serde_json::json;

use crate::support::{CALLBACK, PASSWORD};

async fn app_with(tweak: impl FnOnce(&mut gatehouse::config::Config)) -> TestApp {
    let dir = tempfile::TempDir::new().expect("dir");
    let url = sqlite_url(&dir);
    let app = TestApp::with(dir, &url, tweak).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    app
}

/// One whole connection as Claude.ai makes it: the 401 that starts discovery, a registration,
/// the person's sign-in and consent, the code exchange, a tool call. `Err` holds the first
/// answer that was not what the flow needs, with its body.
async fn connect(app: &TestApp) -> Result<(), (u16, String)> {
    let fail = |res: &crate::support::TestResponse| (res.status.as_u16(), res.text());
    let res = mcp(
        app,
        None,
        None,
        "2026-07-28",
        stateless(call(1, "whoami", json!({}))),
    )
    .await;
    if res.status != 401 {
        return Err(fail(&res));
    }
    let res = app
        .post_json(
            "/register",
            &json!({ "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "client_name": "Claude" }),
        )
        .await;
    if res.status != 201 {
        return Err(fail(&res));
    }
    let client_id = res.json()["client_id"].as_str().expect("id").to_owned();
    let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    let path = format!(
        "/authorize?response_type=code&client_id={client_id}&redirect_uri={CALLBACK}&scope=mcp&state=s&code_challenge={}&code_challenge_method=S256",
        challenge.as_str()
    );
    let mut agent = Agent::new(app);
    let res = agent.get(&path).await;
    if res.status != 303 {
        return Err(fail(&res));
    }
    let login = res.location();
    let res = agent.sign_in(&login, "alice", PASSWORD).await;
    if res.status != 303 {
        return Err(fail(&res));
    }
    let consent = res.location();
    let page = agent.get(&consent).await;
    if page.status != 200 {
        return Err(fail(&page));
    }
    let res = agent
        .post_form(
            "/consent",
            &[
                ("csrf", &page.hidden("csrf")),
                ("request", &page.hidden("request")),
                ("decision", "allow"),
            ],
        )
        .await;
    if res.status != 303 {
        return Err(fail(&res));
    }
    let code = query_of(&res.location())["code"].clone();
    let resource = format!("{ISSUER}/mcp");
    let res = post_form(
        app,
        "/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", verifier.secret()),
            ("redirect_uri", CALLBACK),
            ("client_id", &client_id),
            ("resource", &resource),
        ],
        None,
        &[],
    )
    .await;
    if res.status != 200 {
        return Err(fail(&res));
    }
    let token = res.json()["access_token"].as_str().expect("at").to_owned();
    let res = mcp(
        app,
        Some(&token),
        None,
        "2026-07-28",
        stateless(call(2, "whoami", json!({}))),
    )
    .await;
    if res.status != 200 {
        return Err(fail(&res));
    }
    Ok(())
}

/// Forty people connecting through one hosted client within a minute: with its egress listed,
/// every connection completes; from an address not listed, the same forty are throttled as
/// before (the unauthenticated budget, 5 a minute, runs out first), and the 429 says so.
#[tokio::test]
async fn forty_connections_from_a_listed_egress_all_complete() {
    let listed = app_with(|c| {
        c.shared_egress = vec!["192.0.2.0/24".parse().expect("cidr")];
    })
    .await;
    for n in 0..40 {
        if let Err((status, body)) = connect(&listed).await {
            panic!("connection {n} through the listed egress: {status} {body}");
        }
    }

    let unlisted = app_with(|c| {
        c.shared_egress = vec!["198.51.100.0/24".parse().expect("cidr")];
    })
    .await;
    let mut refused = None;
    for n in 0..40 {
        if let Err(failure) = connect(&unlisted).await {
            refused = Some((n, failure));
            break;
        }
    }
    let (n, (status, body)) = refused.expect("an address not listed is throttled");
    assert_eq!(n, 5, "the 6th connection meets the 5-a-minute budget");
    assert_eq!(status, 429, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["budget"], "unauthenticated");
}

/// An hourly expiry is not a probe: ten requests with a genuine but expired token all get the
/// 401 `invalid_token` that makes the client refresh, and the next request with no token still
/// gets the discovery challenge, not a 429 (the unauthenticated budget is 5 a minute).
#[tokio::test]
async fn expired_genuine_tokens_do_not_spend_the_unauthenticated_budget() {
    let app = app_with(|_| {}).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let (code, verifier) = crate::support::oauth::code_for(&app, &client_id, &["mcp"]).await;
    let token = crate::support::oauth::exchange(&app, &client_id, &code, &verifier)
        .await
        .json()["access_token"]
        .as_str()
        .expect("at")
        .to_owned();
    app.clock.advance(time::Duration::hours(2));
    for n in 0..10 {
        let res = mcp(
            &app,
            Some(&token),
            None,
            "2026-07-28",
            stateless(call(1, "whoami", json!({}))),
        )
        .await;
        assert_eq!(res.status, 401, "request {n}: {}", res.text());
        assert!(
            res.header("www-authenticate")
                .is_some_and(|h| h.contains("error=\"invalid_token\"")),
            "request {n}"
        );
    }
    let res = mcp(
        &app,
        None,
        None,
        "2026-07-28",
        stateless(call(1, "whoami", json!({}))),
    )
    .await;
    assert_eq!(res.status, 401, "{}", res.text());
    assert!(
        res.header("www-authenticate")
            .is_some_and(|h| h.contains("resource_metadata="))
    );
}

/// Every 429 names its budget: the OAuth endpoints' per-address budget, and the audit log keeps
/// it with the address.
#[tokio::test]
async fn a_429_names_the_budget_it_hit() {
    let app = app_with(|c| c.rate_limits.oauth_per_minute = 2).await;
    for _ in 0..2 {
        assert_eq!(app.get("/authorize").await.status, 400);
    }
    let res = app.get("/authorize").await;
    assert_eq!(res.status, 429);
    assert_eq!(res.json()["budget"], "oauth");
    assert!(res.header("retry-after").is_some());
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 20)
        .await
        .expect("audit");
    let limited = events
        .iter()
        .find(|e| e.event.kind == "rate_limited")
        .expect("audited");
    assert_eq!(limited.event.detail["budget"], "oauth");
    assert_eq!(limited.event.ip.as_deref(), Some("192.0.2.10"));
}
