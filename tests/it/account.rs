//! The person's own page, `/account`: the applications they connected, disconnecting one (its
//! tokens stop working at the next call), and signing out of every browser at once. The tokens
//! come from the whole flow through the `oauth2` crate.

use axum::http::StatusCode;
use oauth2::TokenResponse as _;

use crate::support::mcp::authorize;
use crate::support::oauth::refresh;
use crate::support::{Agent, CALLBACK, ISSUER, PASSWORD, TestApp};

async fn whoami(app: &TestApp, token: &str) -> StatusCode {
    crate::support::mcp::whoami(app, token).await.status
}

/// Alice connected "Claude": her page lists it (named as it registered itself, with the scopes
/// she allowed), and "Disconnect" ends it at once: the access token is refused at the next
/// `/mcp` call, the refresh token at the next refresh, and the application must ask again.
#[tokio::test]
async fn a_person_sees_an_app_they_connected_and_disconnecting_it_ends_its_tokens() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    app.add_user("bob", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let resource = format!("{ISSUER}/mcp");
    let tokens = authorize(&app, &client_id, "alice", "mcp", &resource).await;
    let access = tokens.access_token().secret().clone();
    let refresh_token = tokens.refresh_token().expect("refresh").secret().clone();
    // Bob connected the same application: his connection is his own.
    let bobs = authorize(&app, &client_id, "bob", "mcp", &resource).await;
    assert_eq!(whoami(&app, &access).await, StatusCode::OK);

    let mut alice = Agent::new(&app);
    alice.sign_in("/login", "alice", PASSWORD).await;
    let page = alice.get("/account").await;
    let html = page.text();
    assert!(html.contains("<strong>“Claude”</strong>"), "{html}");
    assert!(html.contains("Registered itself"), "{html}");
    assert!(html.contains("mcp · allowed "), "{html}");
    assert!(html.contains("last got tokens"), "{html}");
    assert_eq!(page.hidden("client_id"), client_id);

    let forged = alice
        .post_form(
            "/account/apps/disconnect",
            &[("csrf", "forged"), ("client_id", &client_id)],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(
        whoami(&app, &access).await,
        StatusCode::OK,
        "nothing changed"
    );

    let csrf = page.hidden("csrf");
    let res = alice
        .post_form(
            "/account/apps/disconnect",
            &[("csrf", &csrf), ("client_id", &client_id)],
        )
        .await;
    assert_eq!(res.location(), "/account?notice=disconnected");
    assert_eq!(whoami(&app, &access).await, StatusCode::UNAUTHORIZED);
    let refused = refresh(&app, &client_id, &refresh_token).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(refused.json()["error"], "invalid_grant");
    let html = alice.get(&res.location()).await.text();
    assert!(
        html.contains("Disconnected: its tokens no longer work"),
        "{html}"
    );
    assert!(html.contains("No application can act for you"), "{html}");
    assert_eq!(
        app.count_rows("SELECT count(*) FROM consents WHERE user_id IN (SELECT user_id FROM users WHERE username = 'alice')")
            .await,
        0,
        "the application must ask again"
    );
    // Bob's connection is untouched.
    assert_eq!(
        whoami(&app, bobs.access_token().secret()).await,
        StatusCode::OK
    );
    let events = app
        .state
        .store
        .audit_events(&Default::default(), None, 500)
        .await
        .expect("audit");
    assert!(events.iter().any(|e| e.event.kind == "app.disconnected"
        && e.event.detail["grants_revoked"] == 1
        && e.event.detail["by"] == "self"
        && e.event.client_id.as_deref() == Some(client_id.as_str())));
}

/// "Sign out everywhere" ends every browser session of the person (this one and one in another
/// browser), and nothing else: the applications they connected keep working.
#[tokio::test]
async fn signing_out_everywhere_ends_every_browser_session_but_not_the_apps() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let tokens = authorize(&app, &client_id, "alice", "mcp", &format!("{ISSUER}/mcp")).await;

    let mut laptop = Agent::new(&app);
    laptop.sign_in("/login", "alice", PASSWORD).await;
    let mut phone = Agent::new(&app);
    phone.sign_in("/login", "alice", PASSWORD).await;
    assert_eq!(phone.get("/account").await.status, StatusCode::OK);

    let csrf = laptop.get("/account").await.hidden("csrf");
    let forged = laptop
        .post_form("/account/sign-out-everywhere", &[("csrf", "forged")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let res = laptop
        .post_form("/account/sign-out-everywhere", &[("csrf", &csrf)])
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.text().contains("You are signed out"), "{}", res.text());
    for agent in [&mut laptop, &mut phone] {
        assert_eq!(agent.get("/account").await.location(), "/login");
    }
    assert_eq!(
        whoami(&app, tokens.access_token().secret()).await,
        StatusCode::OK
    );
    let refreshed = refresh(
        &app,
        &client_id,
        tokens.refresh_token().expect("refresh").secret(),
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
}

/// `gatehouse grants list|revoke` against the real binary, on the database of a running app:
/// the grant the OAuth flow made is listed, revoked by id (once), and its refresh token is
/// refused afterwards.
#[tokio::test]
async fn an_admin_lists_and_revokes_one_grant_from_the_command_line() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let tokens = authorize(&app, &client_id, "alice", "mcp", &format!("{ISSUER}/mcp")).await;
    let grant_id: String = app.scalar_string("SELECT grant_id FROM grants").await;
    let run = |args: &[&str]| {
        crate::support::process::gatehouse(app.dir.path())
            .env("GATEHOUSE_DATABASE_URL", &app.database_url)
            .args(args)
            .output()
            .expect("run")
    };
    let out = run(&["grants", "list", "--user", "alice"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listing.contains(&grant_id)
            && listing.contains(&client_id)
            && listing.contains("live until"),
        "{listing}"
    );
    let out = run(&["grants", "revoke", &grant_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !run(&["grants", "revoke", &grant_id]).status.success(),
        "only once"
    );
    assert!(
        String::from_utf8_lossy(&run(&["grants", "list", "--user", "alice"]).stdout)
            .contains("revoked ")
    );
    let refused = refresh(
        &app,
        &client_id,
        tokens.refresh_token().expect("refresh").secret(),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text());
}
