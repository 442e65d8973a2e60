//! Revocation (RFC 7009) and introspection (RFC 7662), and what the operator revokes.

use super::*;

#[tokio::test]
async fn revocation_of_access_and_refresh_tokens_takes_effect_at_once() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t = exchange(&app, &client_id, &code, &verifier).await.json();
    let (at, rt) = (
        t["access_token"].as_str().expect("at"),
        t["refresh_token"].as_str().expect("rt"),
    );
    let (claims, _) = verified_claims(&app, at).await;
    let (gid, jti) = (
        claims["grant_id"].as_str().expect("g"),
        claims["jti"].as_str().expect("j"),
    );

    // Another client may not revoke it.
    let other = app.register_client("Other", &[CALLBACK]).await;
    assert_error(
        &post(
            &app,
            "/revoke",
            &[("token", at), ("client_id", &other)],
            None,
        )
        .await,
        400,
        "unauthorized_client",
    );
    assert!(!app.state.revocations.is_revoked(gid, jti));

    let res = post(
        &app,
        "/revoke",
        &[
            ("token", at),
            ("token_type_hint", "access_token"),
            ("client_id", &client_id),
        ],
        None,
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(
        app.state.revocations.is_revoked("other-grant", jti),
        "the access token itself is revoked"
    );
    assert!(
        !app.state.revocations.is_revoked(gid, "other-jti"),
        "not the whole grant"
    );

    let res = post(
        &app,
        "/revoke",
        &[("token", rt), ("client_id", &client_id)],
        None,
    )
    .await;
    assert_eq!(res.status, 200);
    assert!(
        app.state.revocations.is_revoked(gid, "any"),
        "the grant is revoked"
    );
    assert_error(&refresh(&app, &client_id, rt).await, 400, "invalid_grant");

    // Unknown tokens are fine to revoke (RFC 7009 §2.2).
    assert_eq!(
        post(
            &app,
            "/revoke",
            &[("token", "nonsense"), ("client_id", &client_id)],
            None
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn introspection_tells_a_confidential_client_about_its_own_tokens_only() {
    let app = TestApp::sqlite().await;
    let (id, secret) = app
        .operator_client("client_secret_post", &["client_credentials"], "mcp")
        .await;
    let (id2, secret2) = app
        .operator_client("client_secret_post", &["client_credentials"], "mcp")
        .await;
    let token = post(
        &app,
        "/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
        None,
    )
    .await
    .json();
    let at = token["access_token"].as_str().expect("at");
    let own = post(
        &app,
        "/introspect",
        &[
            ("token", at),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
        None,
    )
    .await;
    assert_eq!(own.status, 200);
    let doc = own.json();
    assert_eq!(doc["active"], true);
    assert_eq!(doc["client_id"], id.as_str());
    assert_eq!(doc["scope"], "mcp");
    assert_eq!(doc["aud"], resource());
    let foreign = post(
        &app,
        "/introspect",
        &[
            ("token", at),
            ("client_id", &id2),
            ("client_secret", &secret2),
        ],
        None,
    )
    .await;
    assert_eq!(foreign.json(), json!({ "active": false }));
    let junk = post(
        &app,
        "/introspect",
        &[
            ("token", "junk"),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
        None,
    )
    .await;
    assert_eq!(junk.json(), json!({ "active": false }));
    app.clock.advance(time::Duration::seconds(3601));
    let expired = post(
        &app,
        "/introspect",
        &[
            ("token", at),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
        None,
    )
    .await;
    assert_eq!(expired.json(), json!({ "active": false }));
    let public = app.register_client("Public", &[CALLBACK]).await;
    assert_error(
        &post(
            &app,
            "/introspect",
            &[("token", at), ("client_id", &public)],
            None,
        )
        .await,
        401,
        "invalid_client",
    );
}

/// Another instance on the same database sees a revocation within one sync.
#[tokio::test]
async fn revocations_reach_other_instances_on_sync() {
    let (app, client_id) = app_with_claude().await;
    let other =
        gatehouse::state::AppState::start(app.state.config.as_ref().clone(), app.clock.clone())
            .await
            .expect("second instance");
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t = exchange(&app, &client_id, &code, &verifier).await.json();
    let (claims, _) = verified_claims(&app, t["access_token"].as_str().expect("at")).await;
    let gid = claims["grant_id"].as_str().expect("g");
    revoke_as_public_client(&app, &client_id, t["refresh_token"].as_str().expect("rt")).await;
    assert!(!other.revocations.is_revoked(gid, "x"), "not yet synced");
    other
        .revocations
        .sync(
            &other.store,
            other.clock.now(),
            other.config.access_token_ttl,
            other.config.leeway(),
        )
        .await
        .expect("sync");
    assert!(other.revocations.is_revoked(gid, "x"));
}

#[tokio::test]
async fn the_operator_revokes_everything_of_a_user() {
    let (app, client_id) = app_with_claude().await;
    let (code, verifier) = code_for(&app, &client_id, &["mcp"]).await;
    let t = exchange(&app, &client_id, &code, &verifier).await.json();
    let ids = app
        .state
        .store
        .revoke_grants_of(Some("u_alice"), None, "test", app.clock.now())
        .await
        .expect("revoke");
    assert_eq!(ids.len(), 1);
    assert_error(
        &refresh(&app, &client_id, t["refresh_token"].as_str().expect("rt")).await,
        400,
        "invalid_grant",
    );
}

/// Clients are kept for `revocation_sync_interval` for exchanges and refreshes only (review of
/// the client cache): a client removed elsewhere (here: straight from the database, as another
/// instance or the CLI would, so this instance's cache still holds it) can start nothing new.
/// Client credentials and introspection read the database and refuse it at once; a refresh
/// still finds the cached client but no live grant.
#[tokio::test]
async fn a_removed_client_starts_nothing_new_while_it_is_still_cached() {
    let app = TestApp::sqlite().await;
    let (id, secret) = app
        .operator_client(
            "client_secret_basic",
            &["client_credentials", "refresh_token"],
            "mcp",
        )
        .await;
    let cc = [("grant_type", "client_credentials")];
    assert_eq!(
        post(&app, "/token", &cc, Some((&id, &secret))).await.status,
        200
    );
    // A refresh caches the client (and fails: there is no such token).
    let bogus = [("grant_type", "refresh_token"), ("refresh_token", "nope")];
    let res = post(&app, "/token", &bogus, Some((&id, &secret))).await;
    assert_error(&res, 400, "invalid_grant");
    assert!(
        app.state
            .store
            .remove_client(&id, "client removed", app.clock.now())
            .await
            .expect("remove")
            .is_some()
    );

    let res = post(&app, "/token", &cc, Some((&id, &secret))).await;
    assert_error(&res, 401, "invalid_client");
    let res = post(
        &app,
        "/introspect",
        &[("token", "anything")],
        Some((&id, &secret)),
    )
    .await;
    assert_eq!(res.status, 401, "{}", res.text());
    let res = post(&app, "/token", &bogus, Some((&id, &secret))).await;
    assert_error(&res, 400, "invalid_grant");

    // A real refresh token of a removed client: the removal (as `gatehouse clients remove` does
    // it, on another process) deletes the client and revokes its grants. The cached client is
    // found, the revoked grant is not honoured.
    app.add_user("alice", PASSWORD, &["user"]).await;
    let public = app.register_client("Claude", &[CALLBACK]).await;
    let (code, verifier) = code_for(&app, &public, &["mcp"]).await;
    let res = exchange(&app, &public, &code, &verifier).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let first = res.json()["refresh_token"].as_str().expect("rt").to_owned();
    let res = refresh(&app, &public, &first).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let live = res.json()["refresh_token"].as_str().expect("rt").to_owned();
    let revoked = app
        .state
        .store
        .remove_client(&public, "client removed", app.clock.now())
        .await
        .expect("remove");
    assert_eq!(
        revoked.map(|ids| ids.len()),
        Some(1),
        "removed, one grant revoked"
    );
    assert!(
        app.state
            .store
            .client(&public)
            .await
            .expect("read")
            .is_none()
    );
    let res = refresh(&app, &public, &live).await;
    assert_error(&res, 400, "invalid_grant");
}
