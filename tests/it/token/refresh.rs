//! Refresh tokens (RFC 6749 §6, RFC 9700 §4.14.2): rotation on every use, retries and races
//! answered alike, replays after rotation revoking the family, scopes that only narrow.

use super::*;

/// Claude refreshes from two egress addresses at once: many simultaneous refreshes of one
/// token rotate it exactly once, and every caller gets the same new pair. Run on both backends.
async fn concurrent_refresh_rotates_once(app: TestApp) {
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let tokens = exchange(&app, &client_id, &code, &verifier).await.json();
    let token = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let fields = [
        ("grant_type", "refresh_token"),
        ("refresh_token", token.as_str()),
        ("client_id", client_id.as_str()),
    ];
    let answers = concurrently(&app, 16, "/token", &fields).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{}", String::from_utf8_lossy(body));
    }
    assert!(
        answers.windows(2).all(|w| w[0].1 == w[1].1),
        "every caller got the same new pair"
    );
    let new_token: Value = serde_json::from_slice(&answers[0].1).expect("json");
    let new_rt = new_token["refresh_token"].as_str().expect("rt");
    assert_ne!(new_rt, token);
    // Exactly one rotation: the family has two tokens, the old (rotated) and the new.
    let old = app
        .state
        .store
        .refresh_token(Secret::presented(&token).hash().as_str())
        .await
        .expect("store")
        .expect("old");
    assert!(old.rotated_at.is_some());
    let new = app
        .state
        .store
        .refresh_token(Secret::presented(new_rt).hash().as_str())
        .await
        .expect("store")
        .expect("new");
    assert_eq!(new.generation, 1);
    assert_eq!(new.grant.grant_id, old.grant.grant_id);
    // And the successor works.
    assert_eq!(refresh(&app, &client_id, new_rt).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refresh_rotates_once_on_sqlite() {
    concurrent_refresh_rotates_once(TestApp::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refresh_rotates_once_on_postgres() {
    concurrent_refresh_rotates_once(TestApp::postgres().await).await;
}

/// A retried refresh within the grace window gets the same pair; after it, the whole family is
/// revoked, the newest token included.
#[tokio::test]
async fn refresh_replay_within_grace_is_idempotent_and_after_it_revokes_the_family() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t0 = exchange(&app, &client_id, &code, &verifier).await.json();
    let rt0 = t0["refresh_token"].as_str().expect("rt").to_owned();
    let first = refresh(&app, &client_id, &rt0).await;
    assert_eq!(first.status, 200);
    app.clock.advance(time::Duration::seconds(20));
    let retry = refresh(&app, &client_id, &rt0).await;
    assert_eq!(
        retry.body, first.body,
        "the same new pair within the grace window"
    );

    let rt1 = first.json()["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    let at1 = first.json()["access_token"]
        .as_str()
        .expect("at")
        .to_owned();
    app.clock.advance(time::Duration::seconds(15));
    assert_error(&refresh(&app, &client_id, &rt0).await, 400, "invalid_grant");
    assert_error(&refresh(&app, &client_id, &rt1).await, 400, "invalid_grant");
    let (claims, _) = verified_claims(&app, &at1).await;
    assert!(app.state.revocations.is_revoked(
        claims["grant_id"].as_str().expect("g"),
        claims["jti"].as_str().expect("j")
    ));
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 50)
        .await
        .expect("audit");
    let kinds: Vec<_> = events.iter().map(|e| e.event.kind.as_str()).collect();
    assert!(
        kinds.contains(&"refresh.replayed") && kinds.contains(&"refresh.reuse_detected"),
        "{kinds:?}"
    );
    for e in &events {
        let text = e.event.detail.to_string();
        assert!(
            !text.contains(&rt0) && !text.contains(&rt1) && !text.contains(&at1),
            "a token in the audit log"
        );
    }
}

/// RFC 9700 §4.14.2: once the successor of a rotated token has been used, the client has the
/// rotation, so the old token presented again, even within the grace window, is a replay: it is
/// refused and the whole family dies, the newest refresh token and every access token with it.
async fn a_token_presented_after_its_successor_was_used_revokes_the_family(app: TestApp) {
    let (app, client_id) = with_claude(app).await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t0 = exchange(&app, &client_id, &code, &verifier).await.json();
    let rt1 = t0["refresh_token"].as_str().expect("rt").to_owned();
    let second = refresh(&app, &client_id, &rt1).await.json();
    let rt2 = second["refresh_token"].as_str().expect("rt").to_owned();
    let third = refresh(&app, &client_id, &rt2).await;
    assert_eq!(third.status, 200, "{}", third.text());
    let third = third.json();
    let (at2, at3) = (
        second["access_token"].as_str().expect("at"),
        third["access_token"].as_str().expect("at"),
    );
    assert_eq!(mcp_status(&app, at3).await, 200);

    // Two seconds later, well within the 30 s grace window.
    app.clock.advance(time::Duration::seconds(2));
    let replayed = refresh(&app, &client_id, &rt1).await;
    assert_error(&replayed, 400, "invalid_grant");
    assert!(replayed.json()["access_token"].is_null());
    assert_eq!(
        mcp_status(&app, at2).await,
        401,
        "the access token from RT2"
    );
    assert_eq!(mcp_status(&app, at3).await, 401, "the newest access token");
    assert_refresh_refused(&app, &client_id, &third["refresh_token"]).await;
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 50)
        .await
        .expect("audit");
    let detected = events
        .iter()
        .find(|e| e.event.kind == "refresh.reuse_detected")
        .expect("reuse detected");
    assert_eq!(detected.event.detail["successor_used"], true);
    assert_eq!(count(&event_kinds(&app).await, "refresh.replayed"), 0);
}

#[tokio::test]
async fn a_token_presented_after_its_successor_was_used_revokes_the_family_on_sqlite() {
    a_token_presented_after_its_successor_was_used_revokes_the_family(TestApp::sqlite().await)
        .await;
}

#[tokio::test]
async fn a_token_presented_after_its_successor_was_used_revokes_the_family_on_postgres() {
    a_token_presented_after_its_successor_was_used_revokes_the_family(TestApp::postgres().await)
        .await;
}

/// After the grace window, a rotated token is refused and revokes its family even when its
/// successor was never used: the access token of the rotation dies at `/mcp`.
#[tokio::test]
async fn a_rotated_token_after_the_grace_window_revokes_the_family() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t0 = exchange(&app, &client_id, &code, &verifier).await.json();
    let rt1 = t0["refresh_token"].as_str().expect("rt").to_owned();
    let second = refresh(&app, &client_id, &rt1).await.json();
    let at2 = second["access_token"].as_str().expect("at");
    assert_eq!(mcp_status(&app, at2).await, 200);
    app.clock.advance(time::Duration::seconds(31));
    assert_error(&refresh(&app, &client_id, &rt1).await, 400, "invalid_grant");
    assert_eq!(mcp_status(&app, at2).await, 401);
    assert_refresh_refused(&app, &client_id, &second["refresh_token"]).await;
}

/// Security review: after a role lost a scope, refreshing an earlier grant still returned it,
/// for up to the family's lifetime. Now each refresh keeps only what the user's roles allow
/// today, and refuses when nothing is left.
#[tokio::test]
async fn a_scope_taken_from_a_role_leaves_the_grant_at_its_next_refresh() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp", "activity:read"]).await;
    let t0 = exchange(&app, &client_id, &code, &verifier).await.json();
    assert_eq!(t0["scope"], "mcp activity:read");
    let with_role = |scopes: &'static [&'static str]| {
        move |c: &mut gatehouse::config::Config| {
            let scopes = scopes
                .iter()
                .map(|s| gatehouse::domain::ScopeToken::parse(s).expect("scope"))
                .collect();
            c.roles.insert("user".into(), scopes);
        }
    };
    let dir = app.restart_parts().await;
    let url = crate::support::sqlite_url(&dir);
    let app = TestApp::with(dir, &url, with_role(&["mcp"])).await;
    let t1 = refresh(&app, &client_id, t0["refresh_token"].as_str().expect("rt")).await;
    assert_eq!(t1.status, 200, "{}", t1.text());
    let t1 = t1.json();
    assert_eq!(t1["scope"], "mcp");
    let (claims, _) = verified_claims(&app, t1["access_token"].as_str().expect("at")).await;
    assert_eq!(claims["scope"], "mcp");

    // The role keeps only activity:read; a refresh asking for mcp alone has nothing left.
    let dir = app.restart_parts().await;
    let app = TestApp::with(dir, &url, with_role(&["activity:read"])).await;
    let res = post(
        &app,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", t1["refresh_token"].as_str().expect("rt")),
            ("client_id", &client_id),
            ("scope", "mcp"),
        ],
        None,
    )
    .await;
    assert_error(&res, 400, "invalid_grant");
}

/// Security review: a password change revoked no refresh token, and `tokens revoke --user`
/// left the person's consents and browser sessions, so the next `/authorize` from the same
/// browser silently issued a working code. A password change now ends the sessions and the
/// grants; signing out everywhere also forgets the consents, so each application asks again.
#[tokio::test]
async fn a_password_change_and_an_operator_revocation_end_what_the_user_had() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t0 = exchange(&app, &client_id, &code, &verifier).await.json();
    let pending = code_for(&app, &client_id, &["mcp"]).await;

    app.clock.advance(time::Duration::seconds(5));
    let hash = gatehouse::password::hash("a brand new password".into())
        .await
        .expect("hash");
    let revoked = app
        .state
        .store
        .set_password("alice", &hash, app.clock.now())
        .await
        .expect("passwd")
        .expect("alice exists");
    assert_eq!(revoked.len(), 1, "the grant of the redeemed code");
    assert_refresh_refused(&app, &client_id, &t0["refresh_token"]).await;
    assert_error(
        &exchange(&app, &client_id, &pending.0, &pending.1).await,
        400,
        "invalid_grant",
    );

    // Signed in again (new password), connected: then the operator signs alice out everywhere.
    let mut agent = Agent::new(&app);
    let (path, _) = crate::support::oauth::authorize_request(&client_id, CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let res = agent.sign_in(&login, "alice", "a brand new password").await;
    let back = res.location();
    assert!(back.starts_with(CALLBACK), "consent remembered: {back}");
    // (that code was made with the test's own challenge; a fresh exchange gives a live grant)
    let (code, verifier) = code_for_signed_in(&mut agent, &client_id).await;
    let t1 = exchange(&app, &client_id, &code, &verifier).await.json();
    app.clock.advance(time::Duration::seconds(5));
    let revoked = app
        .state
        .store
        .sign_out_everywhere("u_alice", "revoked by the operator", app.clock.now())
        .await
        .expect("sign out");
    assert_eq!(revoked.len(), 1);
    assert_refresh_refused(&app, &client_id, &t1["refresh_token"]).await;
    let back = agent.get(&path).await.location();
    assert!(
        back.starts_with("/login?"),
        "the browser session ended: {back}"
    );
    let res = agent.sign_in(&back, "alice", "a brand new password").await;
    assert!(
        res.location().starts_with("/consent?"),
        "the consent was forgotten: {}",
        res.location()
    );
}

#[tokio::test]
async fn scope_may_narrow_on_refresh_but_never_widen() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp", "activity:read"]).await;
    let t0 = exchange(&app, &client_id, &code, &verifier).await.json();
    assert_eq!(t0["scope"], "mcp activity:read");
    let rt = t0["refresh_token"].as_str().expect("rt");
    let narrow = post(
        &app,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", &client_id),
            ("scope", "mcp"),
        ],
        None,
    )
    .await;
    assert_eq!(narrow.status, 200, "{}", narrow.text());
    assert_eq!(narrow.json()["scope"], "mcp");
    // The family keeps what was granted: the next refresh may ask for all of it again.
    let rt1 = narrow.json()["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    let wide = post(
        &app,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt1),
            ("client_id", &client_id),
            ("scope", "mcp admin"),
        ],
        None,
    )
    .await;
    assert_error(&wide, 400, "invalid_scope");
    let back = refresh(&app, &client_id, &rt1).await;
    assert_eq!(back.json()["scope"], "mcp activity:read");
    // A different resource is refused.
    let rt2 = back.json()["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    let res = post(
        &app,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt2),
            ("client_id", &client_id),
            ("resource", "https://x.example/mcp"),
        ],
        None,
    )
    .await;
    assert_error(&res, 400, "invalid_target");
}

/// A refresh token lives `refresh_token_ttl` (30 days): one used a moment before its end
/// works, one used a moment after is `invalid_grant`.
#[tokio::test]
async fn expired_refresh_tokens_and_families_are_refused() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let first = exchange(&app, &client_id, &code, &verifier).await.json();
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let second = exchange(&app, &client_id, &code, &verifier).await.json();
    app.clock
        .advance(time::Duration::days(30) - time::Duration::seconds(1));
    let res = refresh(
        &app,
        &client_id,
        first["refresh_token"].as_str().expect("rt"),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    app.clock.advance(time::Duration::seconds(2));
    assert_error(
        &refresh(
            &app,
            &client_id,
            second["refresh_token"].as_str().expect("rt"),
        )
        .await,
        400,
        "invalid_grant",
    );
}
