//! The admin console, `/admin`: only people with the admin role see or do anything there; an
//! admin adds users (who choose their password through a one-time link), sets roles, locks
//! (everything the person had going ends, and nothing new starts until unlocked), removes,
//! removes clients, publishes and retires signing keys, and reads, filters, pages and exports
//! the audit log. Every action is audited with the admin's name.

use axum::http::StatusCode;
use oauth2::TokenResponse as _;
use serde_json::Value;

use crate::support::mcp::{access_token, whoami};
use crate::support::oauth::refresh;
use crate::support::{Agent, CALLBACK, ISSUER, PASSWORD, TestApp, TestResponse};

/// Every page of the console.
const PAGES: [&str; 6] = [
    "/admin",
    "/admin/clients",
    "/admin/keys",
    "/admin/upstreams",
    "/admin/audit",
    "/admin/audit/export",
];

/// Every action of the console.
const ACTIONS: [&str; 10] = [
    "/admin/users/add",
    "/admin/users/roles",
    "/admin/users/lock",
    "/admin/users/unlock",
    "/admin/users/remove",
    "/admin/users/reset-link",
    "/admin/clients/remove",
    "/admin/keys/rotate",
    "/admin/keys/retire",
    "/admin/upstreams/check",
];

async fn signed_in<'a>(app: &'a TestApp, name: &str) -> Agent<'a> {
    let mut agent = Agent::new(app);
    let res = agent.sign_in("/login", name, PASSWORD).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    agent
}

/// Posts `fields` to `path` with the form token of the page at `from`.
async fn act(
    agent: &mut Agent<'_>,
    from: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> TestResponse {
    let page = agent.get(from).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let csrf = page.hidden("csrf");
    let mut all = vec![("csrf", csrf.as_str())];
    all.extend_from_slice(fields);
    agent.post_form(path, &all).await
}

/// The one-time link an admin page shows.
fn shown_link(page: &TestResponse) -> String {
    let html = page.text();
    let at = html
        .find("<code class=\"secret\" id=\"password-link\">")
        .unwrap_or_else(|| panic!("no link shown: {html}"))
        + "<code class=\"secret\" id=\"password-link\">".len();
    html[at..at + html[at..].find('<').expect("end")].to_owned()
}

fn path_of(link: &str) -> String {
    let url = url::Url::parse(link).expect("link");
    format!("{}?{}", url.path(), url.query().expect("token"))
}

/// Someone without the admin role gets 403 from every page and every action, even with their
/// own valid form token, and nothing changes; nobody signed in is sent to the sign-in page.
#[tokio::test]
async fn a_non_admin_gets_403_on_every_page_and_action_and_changes_nothing() {
    let app = TestApp::sqlite().await;
    let root = app.add_user("root", PASSWORD, &["admin"]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let mut alice = signed_in(&app, "alice").await;
    let csrf = alice.get("/logout").await.hidden("csrf");
    for path in PAGES {
        let res = alice.get(path).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}: {}", res.text());
        assert!(res.text().contains("Admins only"), "{path}");
    }
    for path in ACTIONS {
        let res = alice
            .post_form(
                path,
                &[
                    ("csrf", &csrf),
                    ("user_id", &root.id),
                    ("username", "mallory"),
                    ("role", "admin"),
                    ("confirm", "root"),
                ],
            )
            .await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{path}: {}", res.text());
    }
    let root_now = app
        .state
        .store
        .user(&root.id)
        .await
        .expect("read")
        .expect("root");
    assert!(root_now.locked_at.is_none() && root_now.roles == ["admin"]);
    assert!(
        app.state
            .store
            .user_by_name("mallory")
            .await
            .expect("read")
            .is_none()
    );

    let mut nobody = Agent::new(&app);
    for path in PAGES {
        let res = nobody.get(path).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(res.location(), "/login");
    }
    for path in ACTIONS {
        let res = nobody.post_form(path, &[("user_id", &root.id)]).await;
        assert_eq!(res.status, StatusCode::SEE_OTHER, "{path}");
    }
    // An admin's action with a foreign form token does nothing either.
    let mut admin = signed_in(&app, "root").await;
    let alice_id = app
        .state
        .store
        .user_by_name("alice")
        .await
        .expect("read")
        .expect("alice")
        .id;
    let res = admin
        .post_form(
            "/admin/users/lock",
            &[("csrf", "forged"), ("user_id", &alice_id)],
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    let alice_now = app
        .state
        .store
        .user(&alice_id)
        .await
        .expect("read")
        .expect("alice");
    assert!(alice_now.locked_at.is_none());
}

/// An admin adds Carol without typing a password: the page shows a link once; Carol chooses
/// her password there and signs in; the link then no longer works. A new link for Bob replaces
/// his earlier one and his old password stops working once he uses it.
#[tokio::test]
async fn an_added_user_chooses_a_password_through_a_one_time_link() {
    let app = TestApp::sqlite().await;
    app.add_user("root", PASSWORD, &["admin"]).await;
    app.add_user("bob", PASSWORD, &["user"]).await;
    let mut admin = signed_in(&app, "root").await;
    let res = act(
        &mut admin,
        "/admin",
        "/admin/users/add",
        &[("username", "carol"), ("role", "user")],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let link = shown_link(&res);
    assert!(
        link.starts_with(&format!("{ISSUER}/reset?token=")),
        "{link}"
    );
    let carol = app
        .state
        .store
        .user_by_name("carol")
        .await
        .expect("read")
        .expect("carol");
    assert_eq!(carol.roles, ["user"]);
    assert!(
        carol.password_hash.is_empty(),
        "no password until she chooses one"
    );
    // Not on the next view of the page.
    assert!(!admin.get("/admin").await.text().contains(&link));

    let mut browser = Agent::new(&app);
    let page = browser.get(&path_of(&link)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    assert!(page.text().contains("carol"));
    let set = browser
        .post_form(
            "/reset",
            &[
                ("csrf", &page.hidden("csrf")),
                ("token", &page.hidden("token")),
                ("password", "carols own password"),
                ("password_again", "carols own password"),
            ],
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    assert!(set.text().contains("Your password is set"));
    let mut carol_browser = Agent::new(&app);
    let signed = carol_browser
        .sign_in("/login", "carol", "carols own password")
        .await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.text());
    assert_eq!(
        browser.get(&path_of(&link)).await.status,
        StatusCode::NOT_FOUND
    );

    // Bob: two links; the first no longer works; using the second ends his old password and
    // what it started (his access token, at once).
    let bobs_token = access_token(&app, "bob").await;
    assert_eq!(whoami(&app, &bobs_token).await.status, StatusCode::OK);
    let bob = app
        .state
        .store
        .user_by_name("bob")
        .await
        .expect("read")
        .expect("bob");
    let first = shown_link(
        &act(
            &mut admin,
            "/admin",
            "/admin/users/reset-link",
            &[("user_id", &bob.id)],
        )
        .await,
    );
    let second = shown_link(
        &act(
            &mut admin,
            "/admin",
            "/admin/users/reset-link",
            &[("user_id", &bob.id)],
        )
        .await,
    );
    assert_eq!(
        browser.get(&path_of(&first)).await.status,
        StatusCode::NOT_FOUND
    );
    let page = browser.get(&path_of(&second)).await;
    let mismatch = browser
        .post_form(
            "/reset",
            &[
                ("csrf", &page.hidden("csrf")),
                ("token", &page.hidden("token")),
                ("password", "bobs new password"),
                ("password_again", "bobs other password"),
            ],
        )
        .await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST);
    assert!(mismatch.text().contains("The two passwords differ"));
    let set = browser
        .post_form(
            "/reset",
            &[
                ("csrf", &page.hidden("csrf")),
                ("token", &page.hidden("token")),
                ("password", "bobs new password"),
                ("password_again", "bobs new password"),
            ],
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text());
    assert_eq!(
        whoami(&app, &bobs_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let old = Agent::new(&app).sign_in("/login", "bob", PASSWORD).await;
    assert_eq!(old.status, StatusCode::UNAUTHORIZED);
    let events = app
        .count_rows(
            "SELECT count(*) FROM audit_events WHERE kind = 'user.password_link' AND detail LIKE '%\"by\":\"root\"%'",
        )
        .await;
    assert_eq!(events, 3, "each link is audited with the admin who made it");
}

/// Locking Alice ends what she had going (her access token, her refresh token, her browser
/// session) and refuses her API token and her password until she is unlocked; the admin cannot
/// lock or remove themselves, or drop their own admin role.
#[tokio::test]
async fn locking_ends_a_persons_access_until_they_are_unlocked() {
    let app = TestApp::sqlite().await;
    let root = app.add_user("root", PASSWORD, &["admin"]).await;
    let alice = app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let tokens =
        crate::support::mcp::authorize(&app, &client_id, "alice", "mcp", &format!("{ISSUER}/mcp"))
            .await;
    let access = tokens.access_token().secret().clone();
    let refresh_token = tokens.refresh_token().expect("refresh").secret().clone();
    let mut alice_browser = signed_in(&app, "alice").await;
    let created = act(
        &mut alice_browser,
        "/account",
        "/account/tokens",
        &[("name", "script"), ("scope", "mcp"), ("lifetime", "30")],
    )
    .await;
    let api_token = crate::support::shown_token(&created.text());
    assert_eq!(whoami(&app, &access).await.status, StatusCode::OK);
    assert_eq!(whoami(&app, &api_token).await.status, StatusCode::OK);

    let mut admin = signed_in(&app, "root").await;
    for (path, fields) in [
        ("/admin/users/lock", vec![("user_id", root.id.as_str())]),
        (
            "/admin/users/remove",
            vec![("user_id", root.id.as_str()), ("confirm", "root")],
        ),
        (
            "/admin/users/roles",
            vec![("user_id", root.id.as_str()), ("role", "user")],
        ),
    ] {
        let res = act(&mut admin, "/admin", path, &fields).await;
        assert_eq!(res.location(), "/admin?notice=self", "{path}");
    }
    let res = act(
        &mut admin,
        "/admin",
        "/admin/users/lock",
        &[("user_id", &alice.id)],
    )
    .await;
    assert_eq!(res.location(), "/admin?notice=locked");
    let page = admin.get("/admin?notice=locked").await;
    assert!(
        page.text().contains("The user is locked"),
        "{}",
        page.text()
    );

    assert_eq!(whoami(&app, &access).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        whoami(&app, &api_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let refreshed = refresh(&app, &client_id, &refresh_token).await;
    assert_eq!(
        refreshed.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refreshed.text()
    );
    assert_eq!(
        alice_browser.get("/account").await.status,
        StatusCode::SEE_OTHER
    );
    let refused = Agent::new(&app).sign_in("/login", "alice", PASSWORD).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.text().contains("This account is locked"));
    let wrong = Agent::new(&app)
        .sign_in("/login", "alice", "not her password")
        .await;
    assert_eq!(
        wrong.status,
        StatusCode::UNAUTHORIZED,
        "a lock is shown only to who knows the password"
    );

    let res = act(
        &mut admin,
        "/admin",
        "/admin/users/unlock",
        &[("user_id", &alice.id)],
    )
    .await;
    assert_eq!(res.location(), "/admin?notice=unlocked");
    let back = Agent::new(&app).sign_in("/login", "alice", PASSWORD).await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.text());
    assert_eq!(
        whoami(&app, &api_token).await.status,
        StatusCode::OK,
        "her API token works again"
    );
    let locked = app
        .count_rows(
            "SELECT count(*) FROM audit_events WHERE kind = 'user.locked' AND subject = 'u_alice' \
             AND detail LIKE '%\"by\":\"root\"%'",
        )
        .await;
    assert_eq!(locked, 1);
}

/// Roles set from the console reach the person's next token; removal needs the name typed;
/// a client removed from the console loses its tokens at once.
#[tokio::test]
async fn roles_removal_and_clients_from_the_console() {
    let app = TestApp::sqlite().await;
    app.add_user("root", PASSWORD, &["admin"]).await;
    let bob = app.add_user("bob", PASSWORD, &["user"]).await;
    let mut admin = signed_in(&app, "root").await;
    let res = act(
        &mut admin,
        "/admin",
        "/admin/users/roles",
        &[("user_id", &bob.id), ("role", "user"), ("role", "admin")],
    )
    .await;
    assert_eq!(res.location(), "/admin?notice=roles");
    let bob_now = app
        .state
        .store
        .user(&bob.id)
        .await
        .expect("read")
        .expect("bob");
    assert_eq!(bob_now.roles, ["user", "admin"]);
    let res = act(
        &mut admin,
        "/admin",
        "/admin/users/roles",
        &[("user_id", &bob.id), ("role", "superuser")],
    )
    .await;
    assert_eq!(res.location(), "/admin?notice=unknown-role");

    let res = act(
        &mut admin,
        "/admin",
        "/admin/users/remove",
        &[("user_id", &bob.id), ("confirm", "bobby")],
    )
    .await;
    assert_eq!(res.location(), "/admin?notice=not-confirmed");
    assert!(app.state.store.user(&bob.id).await.expect("read").is_some());
    let res = act(
        &mut admin,
        "/admin",
        "/admin/users/remove",
        &[("user_id", &bob.id), ("confirm", "bob")],
    )
    .await;
    assert_eq!(res.location(), "/admin?notice=removed");
    assert!(app.state.store.user(&bob.id).await.expect("read").is_none());

    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = access_token(&app, "alice").await;
    let clients = admin.get("/admin/clients").await;
    assert!(clients.text().contains("Claude"), "{}", clients.text());
    let client_id = app.state.store.clients().await.expect("clients")[0]
        .id
        .clone();
    let res = act(
        &mut admin,
        "/admin/clients",
        "/admin/clients/remove",
        &[("client_id", &client_id)],
    )
    .await;
    assert_eq!(res.location(), "/admin/clients?notice=client-removed");
    assert_eq!(whoami(&app, &token).await.status, StatusCode::UNAUTHORIZED);
}

/// Publishing a key from the console makes a `next` key; retiring needs its id typed, and
/// retiring the current key makes its tokens fail at once while a new key signs.
#[tokio::test]
async fn keys_are_published_and_retired_from_the_console() {
    let app = TestApp::sqlite().await;
    app.add_user("root", PASSWORD, &["admin"]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = access_token(&app, "alice").await;
    let old = crate::support::kid_of(&token);
    let mut admin = signed_in(&app, "root").await;
    let page = admin.get("/admin/keys").await;
    assert!(
        page.text().contains(&old) && page.text().contains("a new key is published"),
        "{}",
        page.text()
    );
    let res = act(&mut admin, "/admin/keys", "/admin/keys/rotate", &[]).await;
    assert_eq!(res.location(), "/admin/keys?notice=rotated");
    let keys = app.state.store.signing_keys().await.expect("keys");
    assert!(
        keys.iter()
            .any(|k| k.state == gatehouse::domain::KeyState::Next)
    );

    let res = act(
        &mut admin,
        "/admin/keys",
        "/admin/keys/retire",
        &[("kid", &old), ("confirm", "not the id")],
    )
    .await;
    assert_eq!(res.location(), "/admin/keys?notice=not-confirmed");
    assert_eq!(whoami(&app, &token).await.status, StatusCode::OK);
    let res = act(
        &mut admin,
        "/admin/keys",
        "/admin/keys/retire",
        &[("kid", &old), ("confirm", &old)],
    )
    .await;
    assert_eq!(res.location(), "/admin/keys?notice=retired");
    assert_eq!(whoami(&app, &token).await.status, StatusCode::UNAUTHORIZED);
    let fresh = access_token(&app, "alice").await;
    assert_ne!(crate::support::kid_of(&fresh), old);
    assert_eq!(whoami(&app, &fresh).await.status, StatusCode::OK);
}

/// The audit log: filtered by user, kind (and its prefix), outcome and day; paged fifty at a
/// time; exported as JSON lines with the same filter.
#[tokio::test]
async fn the_audit_log_filters_pages_and_exports() {
    let app = TestApp::sqlite().await;
    app.add_user("root", PASSWORD, &["admin"]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let now = gatehouse::clock::Clock::now(app.clock.as_ref());
    for i in 0..60 {
        let event = gatehouse::audit::AuditEvent::new(
            "login.failure",
            now,
            serde_json::json!({ "reason": "bad_credentials", "username": format!("guess{i}") }),
        )
        .failed();
        gatehouse::audit::record(&app.state.store, event)
            .await
            .expect("audit");
    }
    signed_in(&app, "alice").await;
    let mut admin = signed_in(&app, "root").await;

    let page = admin.get("/admin/audit?kind=login&outcome=failure").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    assert_eq!(
        html.matches("<td>login.failure</td>").count(),
        50,
        "one page"
    );
    assert!(!html.contains("<td>login.success</td>"));
    let next = html
        .split("href=\"")
        .find_map(|s| {
            s.starts_with("/admin/audit?")
                .then(|| s.split('"').next().unwrap_or_default())
        })
        .filter(|h| h.contains("before="))
        .expect("a link to older events")
        .replace("&#38;", "&");
    let older = admin.get(&next).await.text();
    assert_eq!(older.matches("<td>login.failure</td>").count(), 10);

    let alice = admin
        .get("/admin/audit?user=alice&kind=login.success")
        .await
        .text();
    assert_eq!(
        alice.matches("<td>login.success</td>").count(),
        1,
        "{alice}"
    );
    let today = admin
        .get("/admin/audit?since=2026-11-22&until=2026-11-22&kind=login.success")
        .await
        .text();
    assert_eq!(today.matches("<td>login.success</td>").count(), 2);
    let before = admin.get("/admin/audit?until=2026-11-21").await.text();
    assert!(before.contains("No events match"));
    let bad = admin.get("/admin/audit?since=yesterday").await;
    assert!(bad.text().contains("The filter does not read"));
    // A notice repeated by hand is no notice, not a plain-text 400.
    assert_eq!(
        admin.get("/admin?notice=a&notice=b").await.status,
        StatusCode::OK
    );
    // The last day there is has no end to count to: told, not a 500.
    let last = admin.get("/admin/audit?until=9999-12-31").await;
    assert_eq!(last.status, StatusCode::OK);
    assert!(last.text().contains("The filter does not read"));
    // A page link edited by hand is told apart on the page, and in the export as a JSON error.
    let bad = admin.get("/admin/audit?before=abc").await;
    assert_eq!(bad.status, StatusCode::OK);
    assert!(
        bad.text().contains("The filter does not read"),
        "{}",
        bad.text()
    );
    let bad = admin.get("/admin/audit/export?before=abc").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let body: Value = serde_json::from_str(&bad.text()).expect("a JSON error");
    assert_eq!(body["error"], "invalid_request");

    let export = admin
        .get("/admin/audit/export?kind=login&outcome=failure")
        .await;
    assert_eq!(export.status, StatusCode::OK);
    assert_eq!(export.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = export
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 60);
    assert!(
        lines
            .iter()
            .all(|l| l["kind"] == "login.failure" && l["outcome"] == "failure")
    );
}

/// The same from the command line: `users lock` ends Alice's access and refuses her password,
/// `users list` shows the lock, `users unlock` lets her in again, `users reset-link` prints a
/// link that works on the server.
#[tokio::test]
async fn users_lock_unlock_and_reset_link_from_the_command_line() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = access_token(&app, "alice").await;
    let run = |args: &[&str]| {
        crate::support::process::gatehouse(app.dir.path())
            .env("GATEHOUSE_DATABASE_URL", &app.database_url)
            .env("GATEHOUSE_ISSUER", ISSUER)
            .args(args)
            .output()
            .expect("run")
    };
    let out = run(&["users", "lock", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&run(&["users", "list"]).stdout).into_owned();
    assert!(listed.contains("(locked)"), "{listed}");
    // This instance reads the revocation at its next sync; the lock itself is read at once.
    let state = &app.state;
    state
        .revocations
        .sync(
            &state.store,
            gatehouse::clock::Clock::now(app.clock.as_ref()),
            state.config.access_token_ttl,
            state.config.leeway(),
        )
        .await
        .expect("sync");
    assert_eq!(whoami(&app, &token).await.status, StatusCode::UNAUTHORIZED);
    let refused = Agent::new(&app).sign_in("/login", "alice", PASSWORD).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let out = run(&["users", "unlock", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = Agent::new(&app).sign_in("/login", "alice", PASSWORD).await;
    assert_eq!(back.status, StatusCode::OK);

    let out = run(&["users", "reset-link", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        link.starts_with(&format!("{ISSUER}/reset?token=")),
        "{link}"
    );
    let page = Agent::new(&app).get(&path_of(&link)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let out = run(&["users", "lock", "nobody"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named \"nobody\""));
}

/// Gateway mode's upstreams on the console: each with its transport and tools, its live
/// sessions (whose they are), and a check that contacts each now and says which is reachable.
#[tokio::test]
async fn upstreams_and_their_health_on_the_console() {
    let modern = crate::support::upstream::ModernEcho::start().await;
    let url = modern.url.clone();
    let dead = {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        format!("http://{}/mcp", port.local_addr().expect("addr"))
    };
    let app = crate::support::mcp::app_with(move |c| {
        let upstream = |name: &str, url: &str| {
            let raw: gatehouse::config::UpstreamConfig = serde_json::from_value(
                serde_json::json!({ "name": name, "transport": "streamable_http", "url": url }),
            )
            .expect("entry");
            gatehouse::config::Upstream::check(&raw, &format!("{ISSUER}/mcp"), &|_| None)
                .expect("upstream")
        };
        c.upstreams = vec![upstream("modern", &url), upstream("gone", &dead)];
    })
    .await;
    app.add_user("root", PASSWORD, &["admin"]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = access_token(&app, "alice").await;
    let call = crate::support::mcp::call(1, "modern__echo", serde_json::json!({ "message": "hi" }));
    let res = crate::support::mcp::mcp(&app, Some(&token), None, "2025-06-18", call).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());

    let mut admin = signed_in(&app, "root").await;
    let page = admin.get("/admin/upstreams").await;
    let html = page.text();
    assert!(
        html.contains("<strong>modern") && html.contains("<strong>gone"),
        "{html}"
    );
    assert_eq!(html.matches("Check each upstream now").count(), 1, "{html}");
    assert!(
        html.contains("aria-current=\"page\">Upstreams</a>"),
        "{html}"
    );
    assert!(
        html.contains("u_alice: open"),
        "alice's live session: {html}"
    );
    let res = act(
        &mut admin,
        "/admin/upstreams",
        "/admin/upstreams/check",
        &[],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let html = res.text();
    assert!(html.contains("reachable: 1 tools (modern__echo)"), "{html}");
    assert!(html.contains("not reachable:"), "{html}");
    let checked = app
        .count_rows(
            "SELECT count(*) FROM audit_events WHERE kind = 'upstreams.checked' \
             AND detail LIKE '%\"unreachable\":[\"gone\"]%'",
        )
        .await;
    assert_eq!(checked, 1);
}

/// Roles an identity provider grants are shown apart and never copied into the roles an admin
/// grants: saving the form leaves them to the provider (which re-evaluates them at each sign-in).
#[tokio::test]
async fn provider_roles_stay_the_providers_when_an_admin_saves_roles() {
    use sqlx::Connection as _;
    let app = TestApp::sqlite().await;
    app.add_user("root", PASSWORD, &["admin"]).await;
    let bob = app.add_user("bob", PASSWORD, &["user"]).await;
    let mut conn = sqlx::AnyConnection::connect(&app.database_url)
        .await
        .expect("connect");
    sqlx::query("UPDATE users SET provider_roles = '[\"admin\"]' WHERE user_id = $1")
        .bind(&bob.id)
        .execute(&mut conn)
        .await
        .expect("provider roles");
    let _ = conn.close().await;
    let mut admin = signed_in(&app, "root").await;
    let html = admin.get("/admin").await.text();
    assert!(html.contains("from the identity provider: admin"), "{html}");
    let res = act(
        &mut admin,
        "/admin",
        "/admin/users/roles",
        &[("user_id", &bob.id), ("role", "user")],
    )
    .await;
    assert_eq!(res.location(), "/admin?notice=roles");
    let sources = app
        .state
        .store
        .role_sources(&bob.id)
        .await
        .expect("read")
        .expect("bob");
    assert_eq!(sources, (vec!["user".to_owned()], vec!["admin".to_owned()]));
}
