//! What is kept, and for how long: pruning of expired codes, tokens and grants, and the audit
//! log's retention.

use super::*;

/// Presents a used code again, which must be refused; how many reuses have been detected so far.
async fn code_again(app: &TestApp, client_id: &str, code: &str, verifier: &str) -> usize {
    assert_error(
        &exchange(app, client_id, code, verifier).await,
        400,
        "invalid_grant",
    );
    count(&event_kinds(app).await, "code.reuse_detected")
}

/// Runs the clean-up and checks what it removed.
async fn prunes(app: &TestApp, expected: Pruned) {
    assert_eq!(app.state.prune().await.expect("prune"), expected);
}

/// The periodic clean-up deletes what can no longer be used, and nothing that still can: a
/// rotated refresh token loses its sealed response after the grace window and the margin for
/// other instances' clocks, but is still known (so presenting it revokes the family); a used code
/// is known for a day after its expiry, then deleted; a grant goes a day after
/// its end, with its refresh tokens; a revoked access token after its expiry and the leeway.
async fn pruning_keeps_what_can_still_be_used(app: TestApp) {
    let (app, client_id) = with_claude(app).await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let first = exchange(&app, &client_id, &code, &verifier).await.json();
    let rt0 = first["refresh_token"].as_str().expect("rt").to_owned();
    let rotated = refresh(&app, &client_id, &rt0).await;
    assert_eq!(rotated.status, 200);
    // A service's grant (it lives as long as its access token), whose token is revoked.
    let (id, secret) = app
        .operator_client("client_secret_basic", &["client_credentials"], "mcp")
        .await;
    let service = post(
        &app,
        "/token",
        &[("grant_type", "client_credentials")],
        Some((&id, &secret)),
    )
    .await
    .json();
    let revoked = post(
        &app,
        "/revoke",
        &[("token", service["access_token"].as_str().expect("at"))],
        Some((&id, &secret)),
    )
    .await;
    assert_eq!(revoked.status, 200);
    let revoked_tokens = "SELECT count(*) FROM revoked_access_tokens";
    assert_eq!(app.count_rows(revoked_tokens).await, 1);
    let none = Pruned::default();
    prunes(&app, none).await; // all in use
    let responses = "SELECT count(*) FROM refresh_tokens WHERE replay_response IS NOT NULL";
    assert_eq!(app.count_rows(responses).await, 1);

    // Past the grace window (30 s) but within the margin for other clocks (5 min): kept.
    app.clock.advance(time::Duration::minutes(4));
    prunes(&app, none).await;
    assert_eq!(app.count_rows(responses).await, 1);
    // Past both.
    app.clock.advance(time::Duration::minutes(2));
    prunes(
        &app,
        Pruned {
            refresh_responses: 1,
            ..none
        },
    )
    .await;
    assert_eq!(app.count_rows(responses).await, 0);
    assert_eq!(
        app.count_rows("SELECT count(*) FROM refresh_tokens").await,
        2
    );
    // The rotated token is still known: presenting it is reuse, and revokes the family.
    assert_error(&refresh(&app, &client_id, &rt0).await, 400, "invalid_grant");
    let kinds = event_kinds(&app).await;
    assert_eq!(count(&kinds, "refresh.reuse_detected"), 1, "{kinds:?}");
    // The used code is still known too: presenting it again is reuse.
    assert_eq!(code_again(&app, &client_id, &code, &verifier).await, 1);

    // The revoked access token expired at one hour: kept through the leeway (5 min here) and
    // the margin (5 min), then gone.
    app.clock.advance(time::Duration::minutes(56));
    prunes(&app, none).await;
    app.clock.advance(time::Duration::minutes(7));
    prunes(&app, none).await;
    app.clock.advance(time::Duration::minutes(2));
    prunes(
        &app,
        Pruned {
            revoked_access_tokens: 1,
            ..none
        },
    )
    .await;
    assert_eq!(app.count_rows(revoked_tokens).await, 0);

    // A day after the code's expiry (and the margin), it goes with the response of its exchange.
    // The service's grant ended an hour after it began: it stays a day.
    app.clock
        .advance(time::Duration::days(1) - time::Duration::minutes(60));
    prunes(&app, Pruned { codes: 1, ..none }).await;
    assert_eq!(
        app.count_rows("SELECT count(*) FROM authorization_codes")
            .await,
        0
    );
    // Now merely unknown: refused all the same, and no more reuse to report.
    assert_eq!(code_again(&app, &client_id, &code, &verifier).await, 1);
    app.clock.advance(time::Duration::hours(1));
    prunes(&app, Pruned { grants: 1, ..none }).await;
    assert_eq!(app.count_rows("SELECT count(*) FROM grants").await, 1);

    // The family's grant (it ends 90 days after the exchange): kept through the day after its
    // end and the margin, then gone with its refresh tokens. Now is a day, an hour and 11
    // minutes after the exchange.
    let family_end = app.state.config.refresh_family_ttl;
    app.clock
        .advance(family_end - time::Duration::hours(1) - time::Duration::minutes(7));
    prunes(&app, none).await; // a minute before
    app.clock.advance(time::Duration::minutes(2));
    prunes(&app, Pruned { grants: 1, ..none }).await;
    assert_eq!(app.count_rows("SELECT count(*) FROM grants").await, 0);
    assert_eq!(
        app.count_rows("SELECT count(*) FROM refresh_tokens").await,
        0
    );
    prunes(&app, none).await; // nothing left
}

/// A revoked grant's access tokens are refused for as long as the MCP endpoint would accept
/// them: their lifetime, then `mcp.clock_leeway`; here, and on an instance started later. (Review
/// finding: the view forgot a revoked grant 60 s after the longest lifetime, while the leeway may
/// be 300 s.)
#[tokio::test]
async fn a_revoked_grant_is_remembered_while_its_tokens_are_within_the_leeway() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let url = crate::support::sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |c| c.mcp.clock_leeway = 300).await;
    let (app, client_id) = with_claude(app).await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t = exchange(&app, &client_id, &code, &verifier).await.json();
    let at = t["access_token"].as_str().expect("at").to_owned();
    let (claims, _) = verified_claims(&app, &at).await;
    let (gid, jti) = (
        claims["grant_id"].as_str().expect("g").to_owned(),
        claims["jti"].as_str().expect("j").to_owned(),
    );
    let revoked =
        revoke_as_public_client(&app, &client_id, t["refresh_token"].as_str().expect("rt")).await;
    assert_eq!(revoked.status, 200);

    // Two minutes past the token's expiry: within the leeway.
    app.clock
        .advance(app.state.config.access_token_ttl + time::Duration::minutes(2));
    app.state.sync_revocations().await.expect("sync");
    assert!(app.state.revocations.is_revoked(&gid, &jti));
    let later =
        gatehouse::state::AppState::start(app.state.config.as_ref().clone(), app.clock.clone())
            .await
            .expect("an instance started now");
    assert!(later.revocations.is_revoked(&gid, &jti));
    let call = crate::support::mcp::stateless(crate::support::mcp::call(1, "whoami", json!({})));
    let res = crate::support::mcp::mcp(&app, Some(&at), None, "2026-07-28", call).await;
    assert_eq!(res.status, 401, "{}", res.text());

    // Once no token of the grant can be accepted, the entry goes.
    app.clock.advance(time::Duration::minutes(5));
    app.state.sync_revocations().await.expect("sync");
    assert!(!app.state.revocations.is_revoked(&gid, &jti));
}

/// Audit events are kept here (their retention has a test of its own), and the leeway is long
/// enough to tell apart from the margin for clocks.
fn tweak_for_pruning(config: &mut gatehouse::config::Config) {
    config.audit_retention = None;
    config.mcp.clock_leeway = 300;
}

#[tokio::test]
async fn pruning_keeps_what_can_still_be_used_on_sqlite() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let url = crate::support::sqlite_url(&dir);
    let app = TestApp::with(dir, &url, tweak_for_pruning).await;
    pruning_keeps_what_can_still_be_used(app).await;
}

#[tokio::test]
async fn pruning_keeps_what_can_still_be_used_on_postgres() {
    let dir = tempfile::TempDir::new().expect("tempdir");
    let url = crate::support::fresh_postgres_url().await;
    let app = TestApp::with(dir, &url, tweak_for_pruning).await;
    pruning_keeps_what_can_still_be_used(app).await;
}

/// Audit events are kept for `audit_retention` (90 days by default), then the clean-up deletes
/// them, in as many chunks as it takes; with 0, never.
async fn audit_events_are_kept_for_the_retention(app: TestApp) {
    let events = "SELECT count(*) FROM audit_events";
    // More early events than one chunk of the clean-up holds.
    for i in 0..1_100 {
        let event =
            gatehouse::audit::AuditEvent::new("test.early", app.clock.now(), json!({ "i": i }));
        gatehouse::audit::record(&app.state.store, event)
            .await
            .expect("record");
    }
    let early = app.count_rows(events).await;
    assert!(early >= 1_100);
    app.clock.advance(time::Duration::days(89));
    app.register_client("Late", &[CALLBACK]).await;
    let all = app.count_rows(events).await;
    assert!(all > early);
    assert_eq!(app.state.prune().await.expect("prune").audit_events, 0);
    // The early events are past 90 days; the late ones are not.
    app.clock.advance(time::Duration::days(2));
    let pruned = app.state.prune().await.expect("prune");
    assert_eq!(pruned.audit_events, u64::try_from(early).expect("count"));
    assert_eq!(app.count_rows(events).await, all - early);
    let kept = gatehouse::audit::read(&app.state.store, &Default::default(), None, 50)
        .await
        .expect("audit");
    assert!(
        kept.iter()
            .all(|e| e.event.at >= app.clock.now() - time::Duration::days(90)),
        "only events within the retention are left"
    );
}

#[tokio::test]
async fn audit_events_are_kept_for_the_retention_on_sqlite() {
    audit_events_are_kept_for_the_retention(TestApp::sqlite().await).await;
}

#[tokio::test]
async fn audit_events_are_kept_for_the_retention_on_postgres() {
    audit_events_are_kept_for_the_retention(TestApp::postgres().await).await;
}

/// With `audit_retention = 0`, the clean-up deletes no audit event, however old.
#[tokio::test]
async fn audit_events_are_kept_forever_with_retention_zero() {
    let events = "SELECT count(*) FROM audit_events";
    let dir = tempfile::TempDir::new().expect("tempdir");
    let url = crate::support::sqlite_url(&dir);
    let forever = TestApp::with(dir, &url, |c| c.audit_retention = None).await;
    forever.register_client("Early", &[CALLBACK]).await;
    let before = forever.count_rows(events).await;
    assert!(before > 0);
    forever.clock.advance(time::Duration::days(400));
    assert_eq!(forever.state.prune().await.expect("prune").audit_events, 0);
    assert_eq!(forever.count_rows(events).await, before);
}
