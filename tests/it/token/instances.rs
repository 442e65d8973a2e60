//! Several instances on one database: what one instance did (a rotation, a revocation, a
//! redemption) is the answer at another.

use super::*;

/// An instance rotates the refresh tokens it issued without reading them first (a hint it keeps,
/// `store/fresh.rs`). Here another instance used the token in between: this one must answer
/// what the database says (the same pair within grace, reuse detection after), not mint a
/// second pair from its stale hint, nor refuse a late request for a wider scope as merely
/// `invalid_scope` and so miss the theft.
#[tokio::test]
async fn a_token_another_instance_rotated_gets_the_databases_answer_here_on_sqlite() {
    a_token_another_instance_rotated_gets_the_databases_answer_here(TestApp::sqlite().await).await;
}

#[tokio::test]
async fn a_token_another_instance_rotated_gets_the_databases_answer_here_on_postgres() {
    a_token_another_instance_rotated_gets_the_databases_answer_here(TestApp::postgres().await)
        .await;
}

async fn a_token_another_instance_rotated_gets_the_databases_answer_here(app: TestApp) {
    let (a, client_id) = with_claude(app).await;
    let b = a.another_instance().await;
    // Two families, each issued by A and first refreshed on B.
    let mut families = Vec::new();
    for _ in 0..2 {
        let (code, verifier) = code_for(&a, &client_id, &["mcp"]).await;
        let t0 = exchange(&a, &client_id, &code, &verifier).await.json();
        let rt0 = t0["refresh_token"].as_str().expect("rt").to_owned();
        let on_b = refresh(&b, &client_id, &rt0).await;
        assert_eq!(on_b.status, 200, "{}", on_b.text());
        families.push((rt0, on_b));
    }

    // Within grace: A gives B's pair, not one of its own.
    a.clock.advance(time::Duration::seconds(5));
    let (rt0, on_b) = &families[0];
    let on_a = refresh(&a, &client_id, rt0).await;
    assert_eq!(on_a.body, on_b.body);
    let kinds = event_kinds(&a).await;
    assert_eq!(count(&kinds, "token.refreshed"), 2, "{kinds:?}");
    assert_eq!(count(&kinds, "refresh.replayed"), 1, "{kinds:?}");

    // After grace, asking for a scope the grant never had: reuse detection, not invalid_scope.
    a.clock.advance(time::Duration::seconds(60));
    let (rt0, on_b) = &families[1];
    let late = post(
        &a,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt0),
            ("client_id", &client_id),
            ("scope", "mcp admin"),
        ],
        None,
    )
    .await;
    assert_error(&late, 400, "invalid_grant");
    let rt1 = on_b.json()["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    assert_error(&refresh(&b, &client_id, &rt1).await, 400, "invalid_grant");
    assert_eq!(
        count(&event_kinds(&a).await, "refresh.reuse_detected"),
        1,
        "the family was revoked as stolen"
    );
}

/// A grant revoked where this instance cannot see it yet (another instance, or the CLI, and no
/// revocation sync since): its refresh token, which this instance issued and still holds a hint
/// for, rotates no more. The guarded write checks the grant; nothing new is issued.
#[tokio::test]
async fn a_grant_revoked_elsewhere_stops_refreshes_here_at_once_on_sqlite() {
    a_grant_revoked_elsewhere_stops_refreshes_here_at_once(TestApp::sqlite().await).await;
}

#[tokio::test]
async fn a_grant_revoked_elsewhere_stops_refreshes_here_at_once_on_postgres() {
    a_grant_revoked_elsewhere_stops_refreshes_here_at_once(TestApp::postgres().await).await;
}

async fn a_grant_revoked_elsewhere_stops_refreshes_here_at_once(app: TestApp) {
    let (a, client_id) = with_claude(app).await;
    let b = a.another_instance().await;
    let (code, verifier) = code_for(&a, &client_id, &["mcp"]).await;
    let t0 = exchange(&a, &client_id, &code, &verifier).await.json();
    let rt0 = t0["refresh_token"].as_str().expect("rt");
    let (claims, _) = verified_claims(&a, t0["access_token"].as_str().expect("at")).await;
    let gid = claims["grant_id"].as_str().expect("g");

    let revoked = b
        .state
        .store
        .revoke_grants_of(Some("u_alice"), None, "operator", b.clock.now())
        .await
        .expect("revoke");
    assert_eq!(revoked, vec![gid.to_owned()]);
    assert!(
        !a.state.revocations.is_revoked(gid, "x"),
        "A has not synced: only the database knows"
    );
    let res = refresh(&a, &client_id, rt0).await;
    assert_error(&res, 400, "invalid_grant");
    assert_eq!(
        res.json()["error_description"],
        "the refresh token has been revoked",
        "a revocation, not a reuse"
    );
    let kinds = event_kinds(&a).await;
    assert_eq!(count(&kinds, "token.refreshed"), 0, "{kinds:?}");
    assert_eq!(count(&kinds, "refresh.reuse_detected"), 0, "{kinds:?}");
    let stored = a
        .state
        .store
        .refresh_token(Secret::presented(rt0).hash().as_str())
        .await
        .expect("read")
        .expect("row");
    assert_eq!(stored.rotated_at, None, "the token was not used up");
}

/// A code this instance issued but another redeemed: a second redemption here, even while this
/// instance still holds its stale hint, is refused and revokes what the other instance issued,
/// whichever verifier it carries.
#[tokio::test]
async fn a_code_another_instance_redeemed_gets_the_databases_answer_here_on_sqlite() {
    a_code_another_instance_redeemed_gets_the_databases_answer_here(TestApp::sqlite().await).await;
}

#[tokio::test]
async fn a_code_another_instance_redeemed_gets_the_databases_answer_here_on_postgres() {
    a_code_another_instance_redeemed_gets_the_databases_answer_here(TestApp::postgres().await)
        .await;
}

async fn a_code_another_instance_redeemed_gets_the_databases_answer_here(app: TestApp) {
    let (a, client_id) = with_claude(app).await;
    let b = a.another_instance().await;
    let (code, verifier) = code_for(&a, &client_id, &["mcp"]).await;
    let on_b = exchange(&b, &client_id, &code, &verifier).await;
    assert_eq!(on_b.status, 200, "{}", on_b.text());
    let on_a = exchange(&a, &client_id, &code, &verifier).await;
    assert_error(&on_a, 400, "invalid_grant");
    assert_eq!(count(&event_kinds(&a).await, "token.issued"), 1);
    let access = on_b.json()["access_token"].as_str().expect("at").to_owned();
    assert_eq!(
        mcp_status(&a, &access).await,
        401,
        "revoked where the reuse was seen"
    );

    let (code, verifier) = code_for(&a, &client_id, &["mcp"]).await;
    let on_b = exchange(&b, &client_id, &code, &verifier).await;
    assert_eq!(on_b.status, 200, "{}", on_b.text());
    let (_, other_verifier) = PkceCodeChallenge::new_random_sha256();
    let res = exchange(&a, &client_id, &code, other_verifier.secret()).await;
    assert_error(&res, 400, "invalid_grant");
    let rt = on_b.json()["refresh_token"]
        .as_str()
        .expect("rt")
        .to_owned();
    assert_error(&refresh(&b, &client_id, &rt).await, 400, "invalid_grant");
}
