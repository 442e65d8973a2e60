//! What one request costs the shared PostgreSQL: round trips, statements and commits of one
//! registration, one authorize with a remembered consent, one code exchange and one refresh, counted at the wire
//! by a proxy between Gatehouse and the server. Each is held to what it costs now, so a change
//! that adds round trips or commits fails here (`BENCHMARKS.md` has the figures).

use axum::http::StatusCode;

use crate::support::oauth::{authorization, exchange, refresh};
use crate::support::pg_count::{Counted, PgCounter};
use crate::support::{Agent, CALLBACK, PASSWORD, TestApp, fresh_postgres_url, query_of};

#[tokio::test]
async fn a_registration_an_authorize_a_code_exchange_and_a_refresh_cost_one_commit_each_on_postgres()
 {
    let (counter, proxied) = PgCounter::start(&fresh_postgres_url().await).await;
    let dir = tempfile::TempDir::new().expect("tempdir");
    let app = TestApp::with(dir, &proxied, |_| {}).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    counter.take();
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let registered = counter.take();
    // The first flow signs in and consents; the consent is remembered.
    let mut browser = Agent::new(&app);
    let (path, _) = authorization(&client_id);
    browser
        .authorize_and_allow(&path, "alice", PASSWORD, CALLBACK)
        .await;

    let (path, verifier) = authorization(&client_id);
    counter.take();
    let res = browser.get(&path).await;
    assert!(res.status.is_redirection(), "{}", res.text());
    let code = query_of(&res.location())["code"].clone();
    let authorize = counter.take();

    let res = exchange(&app, &client_id, &code, &verifier).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let refresh_token = res.json()["refresh_token"].as_str().expect("rt").to_owned();
    let exchanged = counter.take();

    let res = refresh(&app, &client_id, &refresh_token).await;
    assert_eq!(res.status, StatusCode::OK, "{}", res.text());
    let refreshed = counter.take();

    for (what, c) in [
        ("register", &registered),
        ("authorize", &authorize),
        ("code exchange", &exchanged),
        ("refresh", &refreshed),
    ] {
        eprintln!(
            "{what}: {} round trips (and {} preparations), {} statements, {} commits\n  {}",
            c.round_trips,
            c.prepares,
            c.statements,
            c.commits,
            c.sql.join("\n  ")
        );
    }
    // Ceilings: authorize at most 3 round trips and 1 commit; registration, the exchange and the
    // refresh one commit each (what they cost now; BENCHMARKS.md). Each writes, so each commits
    // once: a counter that saw nothing fails here rather than passing under every ceiling.
    let ceiling = |c: &Counted, round_trips, commits| {
        (1..=round_trips).contains(&c.round_trips) && c.commits == commits
    };
    assert!(ceiling(&registered, 1, 1), "register: {registered:?}");
    assert!(ceiling(&authorize, 3, 1), "authorize: {authorize:?}");
    assert!(ceiling(&exchanged, 1, 1), "code exchange: {exchanged:?}");
    assert!(ceiling(&refreshed, 2, 1), "refresh: {refreshed:?}");
}
