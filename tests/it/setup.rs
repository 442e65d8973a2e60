//! First run: on a database with no user, a one-time link creates the first admin. The real
//! binary logs the link at start; the link works once, within an hour, only while nobody can
//! sign in; the admin it makes signs in like anyone else.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use axum::http::StatusCode;

use gatehouse::clock::Clock as _;

use crate::support::process::{free_port, gatehouse, wait_healthy};
use crate::support::{Agent, PASSWORD, TestApp};

/// The path and query of `link` (`{issuer}/setup?token=...`), for the in-process router.
fn path_of(link: &str) -> String {
    let url = url::Url::parse(link).expect("link");
    format!("{}?{}", url.path(), url.query().expect("token"))
}

async fn new_link(app: &TestApp) -> String {
    gatehouse::account::setup::new_link(&app.state.config, &app.state.store, app.clock.now())
        .await
        .expect("link")
        .expect("a link while nobody can sign in")
}

/// Posts the setup form.
async fn submit(
    agent: &mut Agent<'_>,
    csrf: &str,
    token: &str,
    name: &str,
    password: &str,
    again: &str,
) -> crate::support::TestResponse {
    let fields = [
        ("csrf", csrf),
        ("token", token),
        ("username", name),
        ("password", password),
        ("password_again", again),
    ];
    agent.post_form("/setup", &fields).await
}

/// Fills in the setup page at `path` with `name` and `password` twice.
async fn create_admin(agent: &mut Agent<'_>, path: &str, name: &str, password: &str) -> String {
    let page = agent.get(path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let (csrf, token) = (page.hidden("csrf"), page.hidden("token"));
    let done = submit(agent, &csrf, &token, name, password, password).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    done.text()
}

/// `gatehouse serve` on a fresh directory logs a setup link; it opens a form that creates the
/// first admin and signs them in; the same link is refused the second time; the admin then
/// signs in with the password; `gatehouse setup-link` refuses once someone can sign in, and a
/// restart logs no link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_logs_a_setup_link_that_creates_the_first_admin_once() {
    let cwd = tempfile::TempDir::new().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let start = || {
        gatehouse(cwd.path())
            .arg("serve")
            .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let mut child = start();
    let stderr = child.stderr.take().expect("stderr");
    let (lines, logged) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    wait_healthy(&mut child, &base);
    let mut log = String::new();
    let link = loop {
        let line = logged
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no setup link logged: {log}"));
        log.push_str(&line);
        log.push('\n');
        if let Some(at) = line.find(&format!("{base}/setup?token=")) {
            break line[at..]
                .split_whitespace()
                .next()
                .expect("link")
                .to_owned();
        }
    };
    assert!(log.contains("Nobody can sign in yet"), "{log}");

    // A browser: one cookie jar of one session cookie.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut cookie = String::new();
    let mut keep = |res: &reqwest::Response| {
        if let Some(set) = res.headers().get("set-cookie") {
            let set = set.to_str().expect("ascii");
            cookie = set.split(';').next().unwrap_or_default().to_owned();
        }
        cookie.clone()
    };
    let page = http.get(&link).send().await.expect("get");
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["referrer-policy"],
        "no-referrer",
        "the link's secret goes nowhere else"
    );
    let jar = keep(&page);
    let html = page.text().await.expect("body");
    assert!(html.contains("Create the first admin"), "{html}");
    let fields = vec![
        ("csrf", crate::support::hidden_input(&html, "csrf")),
        ("token", crate::support::hidden_input(&html, "token")),
        ("username", "root-admin".to_owned()),
        ("password", PASSWORD.to_owned()),
        ("password_again", PASSWORD.to_owned()),
    ];
    let done = http
        .post(format!("{base}/setup"))
        .header("cookie", &jar)
        .form(&fields)
        .send()
        .await
        .expect("post");
    assert_eq!(done.status(), 200);
    let jar = keep(&done);
    let html = done.text().await.expect("body");
    assert!(html.contains("is ready"), "{html}");
    assert!(
        html.contains(&format!("{base}/mcp")),
        "the URL to paste: {html}"
    );
    // Signed in already: the account page is theirs.
    let account = http
        .get(format!("{base}/account"))
        .header("cookie", &jar)
        .send()
        .await
        .expect("get");
    assert_eq!(account.status(), 200);
    assert!(account.text().await.expect("body").contains("root-admin"));

    // The same link, again: refused, whether opened or posted.
    let again = http.get(&link).send().await.expect("get");
    assert_eq!(again.status(), 404);
    assert!(
        again
            .text()
            .await
            .expect("body")
            .contains("This setup link does not work")
    );
    let replay = http
        .post(format!("{base}/setup"))
        .header("cookie", &jar)
        .form(&fields)
        .send()
        .await
        .expect("post");
    assert_eq!(replay.status(), 404);

    // The admin signs in with the password, in another browser.
    let login = http.get(format!("{base}/login")).send().await.expect("get");
    let jar = keep(&login);
    let login = login.text().await.expect("body");
    let signed_in = http
        .post(format!("{base}/login"))
        .header("cookie", &jar)
        .form(&[
            (
                "csrf",
                crate::support::hidden_input(&login, "csrf").as_str(),
            ),
            ("request", ""),
            ("username", "root-admin"),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .expect("post");
    assert_eq!(signed_in.status(), 200);
    assert!(
        signed_in
            .text()
            .await
            .expect("body")
            .contains("Signed in as root-admin")
    );

    let listed = gatehouse(cwd.path())
        .args(["users", "list"])
        .output()
        .expect("users list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.lines().any(|l| {
            let columns: Vec<&str> = l.split_whitespace().collect();
            columns.first() == Some(&"root-admin") && columns.get(1) == Some(&"admin,user")
        }),
        "{listed}"
    );
    let refused = gatehouse(cwd.path())
        .arg("setup-link")
        .output()
        .expect("setup-link");
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("has users already"), "{why}");

    // Stopped and started again: someone can sign in, so no link is logged.
    let output = crate::support::process::stop(child);
    assert!(output.status.success(), "{:?}", output.status);
    let mut child = start();
    wait_healthy(&mut child, &base);
    let output = crate::support::process::stop(child);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains("/setup?token="), "{log}");
}

/// `gatehouse setup-link` prints a working link on a fresh database, one line on standard
/// output; with password sign-in off it refuses and says why.
#[test]
fn the_setup_link_command_prints_a_link_and_explains_a_refusal() {
    let cwd = tempfile::TempDir::new().expect("tempdir");
    let printed = gatehouse(cwd.path())
        .arg("setup-link")
        .output()
        .expect("setup-link");
    assert!(printed.status.success(), "{printed:?}");
    let out = String::from_utf8_lossy(&printed.stdout);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("http://127.0.0.1:8080/setup?token=") && out.trim().len() > 60,
        "{out}"
    );
    let off = gatehouse(cwd.path())
        .arg("setup-link")
        .env("GATEHOUSE_LOCAL_LOGIN", "false")
        .output()
        .expect("setup-link");
    assert!(!off.status.success());
    let why = String::from_utf8_lossy(&off.stderr);
    assert!(why.contains("local_login = false"), "{why}");
}

/// The form refuses what it must, and keeps the link working meanwhile: a foreign CSRF token,
/// two different passwords, a short password, a bad name. An expired link, and any link once
/// another made the admin, is refused; a link is refused once a user exists by other means.
#[tokio::test]
async fn the_setup_form_refuses_bad_input_and_links_end_as_they_should() {
    let app = TestApp::sqlite().await;
    let link = path_of(&new_link(&app).await);
    let mut agent = Agent::new(&app);
    let page = agent.get(&link).await;
    assert_eq!(page.status, StatusCode::OK);
    let (csrf, token) = (page.hidden("csrf"), page.hidden("token"));
    for (csrf, name, password, again, status, says) in [
        (
            "forged",
            "ada",
            PASSWORD,
            PASSWORD,
            StatusCode::FORBIDDEN,
            "The form expired",
        ),
        (
            &csrf,
            "ada",
            PASSWORD,
            "something else entirely",
            StatusCode::BAD_REQUEST,
            "The two passwords differ",
        ),
        (
            &csrf,
            "ada",
            "short",
            "short",
            StatusCode::BAD_REQUEST,
            "The password must be 8 to 1024 characters long",
        ),
        (
            &csrf,
            "a d/a",
            PASSWORD,
            PASSWORD,
            StatusCode::BAD_REQUEST,
            "That user name does not work",
        ),
    ] {
        let res = submit(&mut agent, csrf, &token, name, password, again).await;
        assert_eq!(res.status, status, "{}", res.text());
        assert!(res.text().contains(says), "{}", res.text());
        assert!(res.text().contains("Create the first admin"));
    }
    assert!(!app.state.store.has_users().await.expect("users"));

    // A second link replaces the first; the second makes the admin.
    let second = path_of(&new_link(&app).await);
    let mut other = Agent::new(&app);
    let html = create_admin(&mut other, &second, "ada", PASSWORD).await;
    assert!(html.contains("is ready"), "{html}");
    assert_eq!(agent.get(&link).await.status, StatusCode::NOT_FOUND);
    let res = submit(&mut agent, &csrf, &token, "eve", PASSWORD, PASSWORD).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{}", res.text());
    assert!(
        gatehouse::account::setup::new_link(&app.state.config, &app.state.store, app.clock.now())
            .await
            .expect("no link")
            .is_none(),
        "no link once someone can sign in"
    );
    let users = app.state.store.users().await.expect("users");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].username.as_str(), "ada");
    assert_eq!(users[0].roles, ["admin", "user"]);
    let added = app
        .count_rows(
            "SELECT count(*) FROM audit_events WHERE kind = 'user.added' \
             AND detail LIKE '%setup link%'",
        )
        .await;
    assert_eq!(added, 1);

    // An hour later a link no longer works.
    let app = TestApp::sqlite().await;
    let link = path_of(&new_link(&app).await);
    let mut agent = Agent::new(&app);
    assert_eq!(agent.get(&link).await.status, StatusCode::OK);
    app.clock.advance(time::Duration::minutes(61));
    assert_eq!(agent.get(&link).await.status, StatusCode::NOT_FOUND);

    // A user added another way: the link stops working.
    let app = TestApp::sqlite().await;
    let link = path_of(&new_link(&app).await);
    app.add_user("bob", PASSWORD, &["user"]).await;
    let mut agent = Agent::new(&app);
    assert_eq!(agent.get(&link).await.status, StatusCode::NOT_FOUND);
    // And a made-up or empty token never works.
    assert_eq!(
        agent.get("/setup?token=made-up").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(agent.get("/setup").await.status, StatusCode::NOT_FOUND);
}

/// One link submitted twice at the same moment (two browsers, two names) makes one admin, on
/// PostgreSQL, where the two requests run in two transactions at once; and a new link replaces
/// the one before it.
#[tokio::test]
async fn a_link_used_twice_at_once_makes_one_admin_on_postgres() {
    let app = TestApp::postgres().await;
    let replaced = path_of(&new_link(&app).await);
    let link = path_of(&new_link(&app).await);
    let mut a = Agent::new(&app);
    let mut b = Agent::new(&app);
    assert_eq!(
        a.get(&replaced).await.status,
        StatusCode::NOT_FOUND,
        "replaced"
    );
    let (pa, pb) = (a.get(&link).await, b.get(&link).await);
    assert_eq!((pa.status, pb.status), (StatusCode::OK, StatusCode::OK));
    let (ta, tb) = (pa.hidden("token"), pb.hidden("token"));
    let (ca, cb) = (pa.hidden("csrf"), pb.hidden("csrf"));
    let (ra, rb) = tokio::join!(
        submit(&mut a, &ca, &ta, "ann", PASSWORD, PASSWORD),
        submit(&mut b, &cb, &tb, "ben", PASSWORD, PASSWORD)
    );
    let mut statuses = [ra.status.as_u16(), rb.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 404], "{} / {}", ra.text(), rb.text());
    assert_eq!(app.state.store.users().await.expect("users").len(), 1);
}
