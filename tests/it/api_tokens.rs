//! API tokens: created on the person's own page (or with the CLI), shown once, stored hashed,
//! accepted by `/mcp` exactly where an access token is, told apart from a JWT by their form,
//! and refused at the next call once revoked.

use axum::http::StatusCode;

use crate::support::mcp::{access_token, message, whoami};
use crate::support::{Agent, PASSWORD, TestApp, TestResponse, shown_token};

/// `name`, a new user, signed in in a browser of their own.
async fn signed_in<'a>(app: &'a TestApp, name: &str) -> Agent<'a> {
    app.add_user(name, PASSWORD, &["user"]).await;
    let mut agent = Agent::new(app);
    agent.sign_in("/login", name, PASSWORD).await;
    agent
}

async fn create(agent: &mut Agent<'_>, fields: &[(&str, &str)]) -> TestResponse {
    let csrf = agent.get("/account").await.hidden("csrf");
    let mut all = vec![("csrf", csrf.as_str())];
    all.extend_from_slice(fields);
    agent.post_form("/account/tokens", &all).await
}

/// Alice creates a token on her page: it is shown once, in the recognisable format, stored only
/// as a hash; `/mcp` accepts it as her (the audit names it by id, never by secret) until she
/// revokes it, then refuses it at the next call.
#[tokio::test]
async fn a_token_from_the_account_page_calls_mcp_as_its_owner_until_revoked() {
    let app = TestApp::sqlite().await;
    let mut alice = signed_in(&app, "alice").await;

    let res = create(
        &mut alice,
        &[("name", "CI job"), ("scope", "mcp"), ("lifetime", "30")],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let html = res.text();
    assert!(
        html.contains("Copy it now: it is not shown again"),
        "{html}"
    );
    let token = shown_token(&html);
    assert!(token.starts_with("gh_pat_"), "{token}");
    let id = token[7..19].to_owned();
    assert!(
        html.contains(&format!("<code>{id}</code>")),
        "listed by id: {html}"
    );
    // Shown once: the page afterwards lists it, without the secret.
    let later = alice.get("/account").await.text();
    assert!(
        later.contains("CI job") && !later.contains(&token),
        "{later}"
    );
    let stored: String = app
        .scalar_string("SELECT secret_hash FROM api_tokens")
        .await;
    assert!(!stored.contains(&token[19..]), "only a hash is stored");

    let res = whoami(&app, &token).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let text = message(&res).to_string();
    assert!(text.contains("alice"), "{text}");
    assert!(
        res.header("x-ratelimit-limit").is_some(),
        "a budget of its own"
    );
    // The call is audited after the answer: wait for it.
    let key = format!("pat_{id}");
    let mut events = Vec::new();
    for _ in 0..100 {
        events = app
            .state
            .store
            .audit_events(&Default::default(), None, 500)
            .await
            .expect("audit");
        if events
            .iter()
            .any(|e| e.event.grant_id.as_deref() == Some(key.as_str()))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        events
            .iter()
            .any(|e| e.event.grant_id.as_deref() == Some(key.as_str())),
        "the call is audited under the token's id"
    );
    let all = serde_json::to_string(&events.iter().map(|e| &e.event.detail).collect::<Vec<_>>())
        .expect("json");
    assert!(!all.contains(&token[19..]), "no secret in the audit log");

    // Revoked from the page: refused at the very next call.
    let page = alice.get("/account").await;
    let res = alice
        .post_form(
            "/account/tokens/revoke",
            &[("csrf", &page.hidden("csrf")), ("token_id", &id)],
        )
        .await;
    assert_eq!(res.location(), "/account?notice=token-revoked");
    let res = whoami(&app, &token).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    let challenge = res.header("www-authenticate").expect("challenge");
    assert!(challenge.contains("invalid_token"), "{challenge}");
    assert!(alice.get("/account").await.text().contains("revoked "));
}

/// A credential is checked as what its form says and nothing else: a `gh_pat_` token with a
/// broken checksum, an unknown one, or one whose secret does not match is an invalid token
/// (401), never tried as a JWT; and a JWT is still a JWT.
#[tokio::test]
async fn a_credential_is_checked_as_what_its_form_says() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let jwt = access_token(&app, "alice").await;
    assert_eq!(whoami(&app, &jwt).await.status, StatusCode::OK);

    let mut alice = Agent::new(&app);
    alice.sign_in("/login", "alice", PASSWORD).await;
    let token = shown_token(
        &create(&mut alice, &[("name", "script"), ("scope", "mcp")])
            .await
            .text(),
    );
    // The same id with another secret (and a checksum made to match is out of reach: any
    // change fails it first), the checksum broken, an id nobody has.
    let mut broken = token.clone().into_bytes();
    let last = broken.len() - 1;
    broken[last] = if broken[last] == b'A' { b'B' } else { b'A' };
    let broken = String::from_utf8(broken).expect("utf8");
    let other = gatehouse::domain::NewApiToken::generate().expect("token");
    for bad in [
        broken.as_str(),
        other.token.expose(),
        "gh_pat_",
        &format!("{jwt}x"),
    ] {
        let res = whoami(&app, bad).await;
        assert_eq!(res.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(
            res.header("www-authenticate")
                .is_some_and(|c| c.contains("invalid_token")),
            "{bad}"
        );
    }
    assert_eq!(whoami(&app, &token).await.status, StatusCode::OK);
}

/// What a token may carry: a name, scopes the person's roles allow, a lifetime within the
/// operator's limit and never "never" unless allowed. Each refusal says why, and creates
/// nothing; a form without the session's token is refused.
#[tokio::test]
async fn a_token_carries_only_what_the_person_and_the_operator_allow() {
    let app = TestApp::sqlite().await;
    let mut alice = signed_in(&app, "alice").await;
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("name", ""), ("scope", "mcp")], "give the token a name"),
        (&[("name", "x")], "choose at least one scope"),
        (
            &[("name", "x"), ("scope", "admin:all")],
            "do not allow the scope admin:all",
        ),
        (
            &[("name", "x"), ("scope", "mcp"), ("lifetime", "never")],
            "never expire",
        ),
        (
            &[("name", "x"), ("scope", "mcp"), ("lifetime", "4000")],
            "1 to 365 days",
        ),
    ];
    for (fields, why) in cases {
        let res = create(&mut alice, fields).await;
        assert_eq!(res.status, StatusCode::OK);
        assert!(res.text().contains(why), "{why}: {}", res.text());
        assert!(!res.text().contains("class=\"secret\""));
    }
    let forged = alice
        .post_form(
            "/account/tokens",
            &[("csrf", "forged"), ("name", "x"), ("scope", "mcp")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(app.count_rows("SELECT count(*) FROM api_tokens").await, 0);
}

/// `gatehouse tokens create|list|revoke` against the real binary: the token is printed once on
/// standard output, listed without its secret, and revoked by id.
#[test]
fn an_admin_creates_lists_and_revokes_a_token_from_the_command_line() {
    let cwd = tempfile::TempDir::new().expect("tempdir");
    let run = |args: &[&str]| {
        crate::support::process::gatehouse(cwd.path())
            .args(args)
            .output()
            .expect("run")
    };
    crate::support::process::add_user(
        crate::support::process::gatehouse(cwd.path()),
        "bob",
        PASSWORD,
    );

    let out = run(&[
        "tokens",
        "create",
        "--user",
        "bob",
        "--name",
        "nightly",
        "--scope",
        "mcp",
        "--expires",
        "7",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    assert!(token.starts_with("gh_pat_"), "{token}");
    let id = &token[7..19];

    let out = run(&["tokens", "list", "--user", "bob"]);
    let listing = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        listing.contains(id) && listing.contains("nightly"),
        "{listing}"
    );
    assert!(!listing.contains(&token), "{listing}");

    let refused = run(&[
        "tokens",
        "create",
        "--user",
        "bob",
        "--name",
        "x",
        "--scope",
        "mcp",
        "--expires",
        "never",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("never expire"));

    let out = run(&["tokens", "revoke", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(run(&["tokens", "list"]).stdout).expect("utf8");
    assert!(listing.contains("revoked"), "{listing}");
    assert!(
        !run(&["tokens", "revoke", id]).status.success(),
        "only once"
    );
}

/// A token's scopes are capped by its owner's roles at every call, not only at creation: a role
/// taken away takes its scopes from the token. An expired token is refused.
#[tokio::test]
async fn a_tokens_scopes_follow_its_owners_roles_and_it_ends_when_it_expires() {
    use gatehouse::domain::ScopeToken;
    let app = crate::support::mcp::app_with(|c| {
        // Nothing kept in memory, so the role change is seen at the next call.
        c.revocation_sync_interval = time::Duration::ZERO;
        c.roles.insert(
            "basic".to_owned(),
            vec![ScopeToken::parse("mcp").expect("scope")],
        );
    })
    .await;
    let mut alice = signed_in(&app, "alice").await;
    let token = shown_token(
        &create(
            &mut alice,
            &[
                ("name", "reader"),
                ("scope", "mcp"),
                ("scope", "activity:read"),
                ("lifetime", "7"),
            ],
        )
        .await
        .text(),
    );
    let activity = |token: String| {
        let app = &app;
        async move {
            crate::support::mcp::mcp(
                app,
                Some(&token),
                None,
                "2026-07-28",
                crate::support::mcp::stateless(crate::support::mcp::call(
                    1,
                    "get_activity_log",
                    serde_json::json!({}),
                )),
            )
            .await
        }
    };
    assert_eq!(activity(token.clone()).await.status, StatusCode::OK);
    let mut db = {
        use sqlx::Connection;
        sqlx::AnyConnection::connect(&app.database_url)
            .await
            .expect("connect")
    };
    sqlx::query("UPDATE users SET roles = '[\"basic\"]' WHERE username = 'alice'")
        .execute(&mut db)
        .await
        .expect("update");
    let res = activity(token.clone()).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{}", res.text());
    assert!(
        res.header("www-authenticate")
            .is_some_and(|c| c.contains("insufficient_scope"))
    );
    assert_eq!(
        whoami(&app, &token).await.status,
        StatusCode::OK,
        "mcp is still allowed"
    );

    app.clock.advance(time::Duration::days(8));
    let res = whoami(&app, &token).await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert!(
        res.header("www-authenticate")
            .is_some_and(|c| c.contains("has expired")),
        "{:?}",
        res.header("www-authenticate")
    );
}

/// One person cannot revoke another's token, or disconnect another's application, by posting
/// its id with their own session: nothing changes, and the other's credentials keep working.
#[tokio::test]
async fn nobody_revokes_anothers_token_or_grant_by_changing_an_id() {
    let app = TestApp::sqlite().await;
    app.add_user("mallory", PASSWORD, &["user"]).await;
    let mut alice = signed_in(&app, "alice").await;
    let token = shown_token(
        &create(&mut alice, &[("name", "mine"), ("scope", "mcp")])
            .await
            .text(),
    );
    let id = token[7..19].to_owned();
    let client_id = app
        .register_client("Claude", &[crate::support::CALLBACK])
        .await;
    let tokens = crate::support::mcp::authorize(
        &app,
        &client_id,
        "alice",
        "mcp",
        &format!("{}/mcp", crate::support::ISSUER),
    )
    .await;
    let access = oauth2::TokenResponse::access_token(&tokens)
        .secret()
        .clone();

    let mut mallory = Agent::new(&app);
    mallory.sign_in("/login", "mallory", PASSWORD).await;
    let page = mallory.get("/account").await;
    let csrf = page.hidden("csrf");
    assert!(
        !page.text().contains(&id),
        "alice's token is not on mallory's page"
    );
    let res = mallory
        .post_form(
            "/account/tokens/revoke",
            &[("csrf", &csrf), ("token_id", &id)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    let res = mallory
        .post_form(
            "/account/apps/disconnect",
            &[("csrf", &csrf), ("client_id", &client_id)],
        )
        .await;
    assert_eq!(res.status, StatusCode::SEE_OTHER);
    assert_eq!(whoami(&app, &token).await.status, StatusCode::OK);
    assert_eq!(whoami(&app, &access).await.status, StatusCode::OK);
    // And the revoke form needs the session's token like every other.
    let res = alice
        .post_form(
            "/account/tokens/revoke",
            &[("csrf", "forged"), ("token_id", &id)],
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(whoami(&app, &token).await.status, StatusCode::OK);
}

/// A database that does not answer is the server's trouble, not the token's: the call gets 503
/// with `Retry-After`, never `invalid_token`, which would make the client throw its token away.
#[tokio::test]
async fn a_token_that_cannot_be_checked_now_is_a_503_not_an_invalid_token() {
    let app = TestApp::sqlite().await;
    let mut alice = signed_in(&app, "alice").await;
    let res = create(
        &mut alice,
        &[("name", "CI job"), ("scope", "mcp"), ("lifetime", "30")],
    )
    .await;
    let token = shown_token(&res.text());
    app.state.store.close().await;
    let res = whoami(&app, &token).await;
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        res.text()
    );
    assert_eq!(res.header("retry-after"), Some("1"));
    assert_eq!(res.json()["error"], "temporarily_unavailable");
    assert!(res.header("www-authenticate").is_none());
}
