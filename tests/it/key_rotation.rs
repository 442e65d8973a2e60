//! Signing-key rotation that never breaks a live session: a key is published before it signs
//! (verifiers must be able to fetch it first), and an old key keeps verifying until the tokens it
//! signed have expired. The schedule runs on a fixed clock; tokens come from the real token
//! endpoint and are spent on the real MCP endpoint.

use std::collections::BTreeSet;
use std::sync::Arc;

use gatehouse::clock::Clock;
use gatehouse::config::KeyRotation;
use gatehouse::keys::{KeyState, RotationPolicy, Transition, lifecycle};
use serde_json::{Value, json};
use tempfile::TempDir;
use time::Duration;

use crate::support::mcp::{call, mcp, message, stateless};
use crate::support::oauth::{code_for, exchange, refresh};
use crate::support::{CALLBACK, PASSWORD};
use crate::support::{TestApp, jwt_part, kid_of, sqlite_url};

const LEAD: Duration = Duration::hours(1);
const INTERVAL: Duration = Duration::hours(3);

fn rotation(config: &mut gatehouse::config::Config) {
    config.key_rotation = KeyRotation {
        interval: Some(INTERVAL),
        publish_lead: LEAD,
        check_interval: Duration::seconds(5),
        retired_retention: Duration::days(1),
    };
    config.mcp.rate_limit_per_token = 100_000;
}

async fn app_on(
    dir: TempDir,
    url: &str,
    tweak: impl FnOnce(&mut gatehouse::config::Config),
) -> TestApp {
    let app = TestApp::with(dir, url, tweak).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    app
}

/// Signs alice in with a registered client; returns (client_id, access token, refresh token).
async fn sign_in(app: &TestApp) -> (String, String, String) {
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let (code, verifier) = code_for(app, &client_id, &["mcp"]).await;
    let res = exchange(app, &client_id, &code, &verifier).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    (
        client_id,
        body["access_token"].as_str().expect("at").to_owned(),
        body["refresh_token"].as_str().expect("rt").to_owned(),
    )
}

/// A refresh through the token endpoint; returns (access token, refresh token).
async fn refreshed(app: &TestApp, client_id: &str, token: &str) -> (String, String) {
    let res = refresh(app, client_id, token).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    (
        body["access_token"].as_str().expect("at").to_owned(),
        body["refresh_token"].as_str().expect("rt").to_owned(),
    )
}

fn header_of(jwt: &str) -> Value {
    jwt_part(jwt, 0)
}

fn exp_of(jwt: &str) -> i64 {
    jwt_part(jwt, 1)["exp"].as_i64().expect("exp")
}

/// `tools/call whoami` with `token`, as a 2026-07-28 client sends it.
async fn whoami_response(app: &TestApp, token: &str) -> crate::support::TestResponse {
    mcp(
        app,
        Some(token),
        None,
        "2026-07-28",
        stateless(call(1, "whoami", json!({}))),
    )
    .await
}

/// `tools/call whoami` with `token`; the status.
async fn whoami(app: &TestApp, token: &str) -> u16 {
    let res = whoami_response(app, token).await;
    if res.status == 200 {
        assert!(
            message(&res)["result"].is_object(),
            "whoami answered: {}",
            res.text()
        );
    }
    res.status.as_u16()
}

async fn published_kids(app: &TestApp) -> BTreeSet<String> {
    let res = app.get("/jwks.json").await;
    assert_eq!(res.status, 200);
    res.json()["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// Every stored key with its state, in kid order.
async fn states(app: &TestApp) -> BTreeSet<(String, KeyState)> {
    app.state
        .store
        .signing_keys()
        .await
        .expect("keys")
        .into_iter()
        .map(|k| (k.kid, k.state))
        .collect()
}

async fn audit_kinds(app: &TestApp) -> Vec<String> {
    app.state
        .store
        .audit_events(&Default::default(), None, 1000)
        .await
        .expect("audit")
        .into_iter()
        .map(|e| e.event.kind)
        .collect()
}

/// Seven and a half hours of simulated time in ten-minute steps, two full rotations and their
/// retirements: at every step the schedule runs while every live token (minted before, during
/// and after each rotation) calls `/mcp` at the same moment. Zero failures, and the JWK set
/// always holds the `kid` of every token still valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_breaks_no_session() {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    let app = Arc::new(app_on(dir, &url, rotation).await);
    let (client_id, first, mut refresh_token) = sign_in(&app).await;
    let first_kid = kid_of(&first);
    assert!(app.key_file(&first_kid).exists(), "the key's private file");
    let mut live: Vec<String> = vec![first];
    let mut signing_kids = vec![first_kid.clone()];
    let mut calls = 0usize;
    for step in 0..45 {
        app.clock.advance(Duration::minutes(10));
        // Each step mints a token with whatever key signs now (a client refreshing).
        let (access, next_refresh) = refreshed(&app, &client_id, &refresh_token).await;
        refresh_token = next_refresh;
        if signing_kids.last() != Some(&kid_of(&access)) {
            signing_kids.push(kid_of(&access));
        }
        live.push(access);
        let now = app.clock.now().unix_timestamp();
        live.retain(|t| exp_of(t) > now);

        // The schedule and the load at the same moment.
        let maintenance = {
            let app = app.clone();
            tokio::spawn(async move { app.state.maintain_keys().await.expect("maintain") })
        };
        let mut load = Vec::new();
        for token in &live {
            for _ in 0..3 {
                let app = app.clone();
                let token = token.clone();
                load.push(tokio::spawn(async move { whoami(&app, &token).await }));
            }
        }
        for handle in load {
            assert_eq!(handle.await.expect("join"), 200, "step {step}");
            calls += 1;
        }
        maintenance.await.expect("join");

        let published = published_kids(&app).await;
        for token in &live {
            assert!(
                published.contains(&kid_of(token)),
                "step {step}: kid {} of a valid token missing from the JWK set {published:?}",
                kid_of(token)
            );
        }
    }
    assert!(calls > 500, "{calls} calls");
    // Two rotations happened, each through next -> current -> previous -> retired.
    assert_eq!(
        signing_kids.len(),
        3,
        "signing keys over time: {signing_kids:?}"
    );
    let kinds = audit_kinds(&app).await;
    for kind in ["key.published", "key.activated", "key.retired"] {
        assert_eq!(
            kinds.iter().filter(|k| *k == kind).count(),
            2,
            "{kind} in {kinds:?}"
        );
    }
    let now = states(&app).await;
    assert!(
        now.contains(&(first_kid.clone(), KeyState::Retired)),
        "{now:?}"
    );
    assert!(!published_kids(&app).await.contains(&first_kid));
    // A retired key's private half is destroyed.
    assert!(!app.key_file(&first_kid).exists());
}

/// The schedule step by step on a fixed clock: nothing early, publication one lead before the
/// rotation date, activation on it, retirement once the longest token has expired, deletion
/// after the retention.
#[tokio::test]
async fn schedule_follows_the_fixed_clock() {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    let app = app_on(dir, &url, rotation).await;
    let policy = RotationPolicy::from_config(&app.state.config);
    let a = app.state.keys.snapshot().current().kid().to_owned();

    app.clock.advance(INTERVAL - LEAD - Duration::seconds(1));
    assert_eq!(app.state.maintain_keys().await.expect("maintain"), vec![]);
    assert_eq!(published_kids(&app).await.len(), 1);

    app.clock.advance(Duration::seconds(1));
    let done = app.state.maintain_keys().await.expect("maintain");
    assert!(
        matches!(done.as_slice(), [Transition::PublishNext { .. }]),
        "{done:?}"
    );
    let keys = states(&app).await;
    let b = keys
        .iter()
        .find(|(_, s)| *s == KeyState::Next)
        .expect("next")
        .0
        .clone();
    // Published, but the old key still signs.
    assert_eq!(
        published_kids(&app).await,
        BTreeSet::from([a.clone(), b.clone()])
    );
    assert_eq!(app.state.keys.snapshot().current().kid(), a);
    // Running the schedule again at the same moment (as a second instance would) adds
    // nothing: the step is made, and the next one is not due.
    assert_eq!(app.state.maintain_keys().await.expect("maintain"), vec![]);

    app.clock.advance(LEAD - Duration::seconds(1));
    assert_eq!(app.state.maintain_keys().await.expect("maintain"), vec![]);
    app.clock.advance(Duration::seconds(1));
    let done = app.state.maintain_keys().await.expect("maintain");
    assert!(
        matches!(done.as_slice(), [Transition::Activate { .. }]),
        "{done:?}"
    );
    assert_eq!(app.state.keys.snapshot().current().kid(), b);
    assert_eq!(
        states(&app).await,
        BTreeSet::from([
            (a.clone(), KeyState::Previous),
            (b.clone(), KeyState::Current)
        ])
    );

    app.clock
        .advance(policy.retire_delay - Duration::seconds(1));
    assert_eq!(app.state.maintain_keys().await.expect("maintain"), vec![]);
    app.clock.advance(Duration::seconds(1));
    let done = app.state.maintain_keys().await.expect("maintain");
    assert_eq!(done, vec![Transition::Retire { kid: a.clone() }]);
    assert_eq!(published_kids(&app).await, BTreeSet::from([b.clone()]));

    app.clock.advance(Duration::days(1));
    let done = app.state.maintain_keys().await.expect("maintain");
    assert!(
        done.contains(&Transition::Delete { kid: a.clone() }),
        "{done:?}"
    );
    assert!(!states(&app).await.iter().any(|(k, _)| *k == a));
    let kinds = audit_kinds(&app).await;
    for kind in [
        "key.published",
        "key.activated",
        "key.retired",
        "key.deleted",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
}

/// `keys retire` of the signing key (a suspected leak): its tokens fail on the very next call,
/// even one the bearer layer had cached; a refresh gets a token from the new key that works.
#[tokio::test]
async fn emergency_retire_fails_its_tokens_at_once_and_new_tokens_work() {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    let app = app_on(dir, &url, rotation).await;
    let (client_id, token, refresh_token) = sign_in(&app).await;
    let leaked = kid_of(&token);
    assert_eq!(whoami(&app, &token).await, 200, "verified and cached");

    let retire = |kid: String| {
        let app = &app;
        async move {
            lifecycle::retire_now(
                &app.state.store,
                app.state.keys.vault(),
                app.state.config.signing_algorithm,
                &RotationPolicy::from_config(&app.state.config),
                &kid,
                app.clock.now(),
            )
            .await
        }
    };
    let signing = retire(leaked.clone()).await.expect("retire");
    assert_ne!(signing, leaked);
    // What the running server does every check_interval (or at once on SIGHUP).
    app.state.maintain_keys().await.expect("maintain");

    let res = whoami_response(&app, &token).await;
    assert_eq!(res.status, 401);
    assert!(
        res.header("www-authenticate")
            .is_some_and(|h| h.contains("error=\"invalid_token\"")),
        "{:?}",
        res.headers
    );
    assert!(!published_kids(&app).await.contains(&leaked));

    let (fresh, _) = refreshed(&app, &client_id, &refresh_token).await;
    assert_eq!(kid_of(&fresh), signing);
    assert_eq!(whoami(&app, &fresh).await, 200);

    // Retiring again, or a key that does not exist, is a clear operator error.
    let again = retire(leaked.clone()).await;
    assert!(
        matches!(again, Err(lifecycle::OperatorError::AlreadyRetired(_))),
        "{again:?}"
    );
    let unknown = retire("no-such-kid".to_owned()).await;
    assert!(
        matches!(unknown, Err(lifecycle::OperatorError::UnknownKey(_))),
        "{unknown:?}"
    );
    let kinds = audit_kinds(&app).await;
    assert!(kinds.iter().any(|k| k == "key.retired"), "{kinds:?}");
}

/// `keys rotate` publishes a next key and refuses a second; `--now` makes a key sign at once
/// while the old key's tokens keep working.
#[tokio::test]
async fn operator_rotation_normal_and_immediate() {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    let app = app_on(dir, &url, |c| {
        rotation(c);
        c.key_rotation.interval = None;
    })
    .await;
    let (client_id, token, refresh_token) = sign_in(&app).await;
    let a = kid_of(&token);
    let policy = RotationPolicy::from_config(&app.state.config);
    let (store, vault, alg) = (
        &app.state.store,
        app.state.keys.vault(),
        gatehouse::domain::SigningAlgorithm::EdDSA,
    );

    let next = lifecycle::rotate(store, vault, alg, &policy, app.clock.now())
        .await
        .expect("rotate");
    assert_eq!(next.state, KeyState::Next);
    assert_eq!(next.activate_after, Some(app.clock.now() + LEAD));
    let twice = lifecycle::rotate(store, vault, alg, &policy, app.clock.now()).await;
    assert!(
        matches!(twice, Err(lifecycle::OperatorError::NextWaiting { .. })),
        "{twice:?}"
    );
    app.state.maintain_keys().await.expect("maintain");
    assert_eq!(published_kids(&app).await.len(), 2);

    // Asking for another algorithm at once would activate the waiting key instead: refused,
    // saying which key waits, and nothing changes.
    let other = lifecycle::rotate_now(
        store,
        vault,
        gatehouse::domain::SigningAlgorithm::RS256,
        &policy,
        app.clock.now(),
    )
    .await;
    assert!(
        matches!(&other, Err(lifecycle::OperatorError::NextOtherAlgorithm { kid, .. }) if *kid == next.kid),
        "{other:?}"
    );
    assert_eq!(published_kids(&app).await.len(), 2);

    // Emergency: the waiting key signs at once.
    let now_kid = lifecycle::rotate_now(store, vault, alg, &policy, app.clock.now())
        .await
        .expect("rotate --now");
    assert_eq!(now_kid, next.kid);
    app.state.maintain_keys().await.expect("maintain");
    let (fresh, _) = refreshed(&app, &client_id, &refresh_token).await;
    assert_eq!(kid_of(&fresh), next.kid);
    assert_eq!(header_of(&fresh)["alg"], "EdDSA", "the chosen algorithm");
    assert_eq!(whoami(&app, &fresh).await, 200);
    assert_eq!(
        whoami(&app, &token).await,
        200,
        "the old key still verifies"
    );
    assert_eq!(
        states(&app).await,
        BTreeSet::from([(a, KeyState::Previous), (next.kid, KeyState::Current)])
    );
}

/// A restart in every state keeps the state: next stays next (and keeps its activation time),
/// previous keeps verifying, retired stays withdrawn.
#[tokio::test]
async fn restart_in_every_state_keeps_the_state() {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    let mut app = app_on(dir, &url, rotation).await;
    let a = app.state.keys.snapshot().current().kid().to_owned();

    // next published
    app.clock.advance(INTERVAL - LEAD);
    app.state.maintain_keys().await.expect("maintain");
    let before = app.state.store.signing_keys().await.expect("keys");
    let now = app.clock.now();
    app = TestApp::with(app.restart_parts().await, &url, rotation).await;
    app.clock.advance(now - app.clock.now());
    assert_eq!(app.state.store.signing_keys().await.expect("keys"), before);
    assert_eq!(app.state.keys.snapshot().current().kid(), a);
    assert_eq!(published_kids(&app).await.len(), 2);

    // previous after activation: a token of the old key still verifies after a restart
    app.clock.advance(LEAD / 2);
    let (client_id, _, refresh_token) = sign_in(&app).await;
    let (token, _) = refreshed(&app, &client_id, &refresh_token).await;
    assert_eq!(kid_of(&token), a);
    app.clock.advance(LEAD / 2);
    app.state.maintain_keys().await.expect("maintain");
    let now = app.clock.now();
    app = TestApp::with(app.restart_parts().await, &url, rotation).await;
    app.clock.advance(now - app.clock.now());
    assert_ne!(app.state.keys.snapshot().current().kid(), a);
    assert!(
        states(&app)
            .await
            .contains(&(a.clone(), KeyState::Previous)),
        "{:?}",
        states(&app).await
    );
    assert_eq!(whoami(&app, &token).await, 200);

    // retired: still withdrawn after a restart
    let policy = RotationPolicy::from_config(&app.state.config);
    app.clock.advance(policy.retire_delay);
    app.state.maintain_keys().await.expect("maintain");
    let now = app.clock.now();
    app = TestApp::with(app.restart_parts().await, &url, rotation).await;
    app.clock.advance(now - app.clock.now());
    assert!(states(&app).await.contains(&(a.clone(), KeyState::Retired)));
    assert!(!published_kids(&app).await.contains(&a));
}

/// Several instances on one PostgreSQL database with separate key directories and one
/// passphrase: a key one instance publishes is loaded by the other from its sealed copy in the
/// database, so tokens from either verify on both; the database never holds a private key in
/// clear, and a wrong passphrase is a clear start-up error.
#[tokio::test]
async fn instances_share_sealed_keys_through_postgres() {
    let url = crate::support::fresh_postgres_url().await;
    let passphrase = || {
        Some(gatehouse::config::Passphrase(
            "correct horse battery".to_owned(),
        ))
    };
    let a = app_on(TempDir::new().expect("tempdir"), &url, |c| {
        rotation(c);
        c.keys_passphrase = passphrase();
    })
    .await;
    let b = TestApp::with(TempDir::new().expect("tempdir"), &url, |c| {
        rotation(c);
        c.keys_passphrase = passphrase();
    })
    .await;
    b.clock.advance(a.clock.now() - b.clock.now());
    let c = TestApp::with(TempDir::new().expect("tempdir"), &url, |c| {
        rotation(c);
        c.keys_passphrase = passphrase();
    })
    .await;
    c.clock.advance(a.clock.now() - c.clock.now());
    let first = a.state.keys.snapshot().current().kid().to_owned();
    assert_eq!(
        b.state.keys.snapshot().current().kid(),
        first,
        "one key set"
    );

    // A's key file is sealed: no private member in clear.
    let file = std::fs::read_to_string(a.key_file(&first)).expect("key file");
    assert!(
        file.contains("sealed_private_jwk") && !file.contains("\"d\""),
        "{file}"
    );

    // A rotates at once; B picks the new key up from the database alone.
    let policy = RotationPolicy::from_config(&a.state.config);
    let second = lifecycle::rotate_now(
        &a.state.store,
        a.state.keys.vault(),
        a.state.config.signing_algorithm,
        &policy,
        a.clock.now(),
    )
    .await
    .expect("rotate --now");
    a.state.maintain_keys().await.expect("A reloads");
    let (client_id, token_a, refresh_token) = sign_in(&a).await;
    assert_eq!(kid_of(&token_a), second);
    // B has not read the key states since: the unknown kid makes it read them at once rather
    // than refuse a token another instance signed a moment ago.
    assert_ne!(b.state.keys.snapshot().current().kid(), second);
    assert_eq!(whoami(&b, &token_a).await, 200);
    assert_eq!(b.state.keys.snapshot().current().kid(), second);
    b.state.maintain_keys().await.expect("B reloads");
    let (token_b, refresh_b) = refreshed(&b, &client_id, &refresh_token).await;
    assert_eq!(kid_of(&token_b), second, "B signs with the key A made");
    // ... from the database's sealed copy: B never had a file for it.
    assert!(!b.key_file(&second).exists());
    for app in [&a, &b] {
        for token in [&token_a, &token_b] {
            assert_eq!(whoami(app, token).await, 200);
        }
    }
    // Every private key in the database is sealed: B opens it with the passphrase, and the
    // stored text does not hold its private member.
    let rows = a.state.store.signing_keys().await.expect("keys");
    for row in rows.iter().filter(|r| r.state.is_published()) {
        let sealed = row
            .private_sealed
            .as_deref()
            .expect("sealed copy in the database");
        let private = b
            .state
            .keys
            .vault()
            .load_private(row)
            .expect("opens")
            .expect("private key");
        let Some(serde_json::Value::String(d)) = private.parameter("d") else {
            panic!("no private member in {}", row.kid)
        };
        assert!(!sealed.contains(d.as_str()), "{} stored in clear", row.kid);
    }

    // Revocation reads a token's key the same way: C, which has not read the key states since
    // A's rotation, is asked to revoke a token of A's new key, and does (before, it did not
    // know the kid, answered 200 as RFC 7009 asks, and revoked nothing).
    assert_ne!(c.state.keys.snapshot().current().kid(), second);
    let (token_a2, _) = refreshed(&a, &client_id, &refresh_b).await;
    assert_eq!(kid_of(&token_a2), second);
    let res = crate::support::Agent::new(&c)
        .post_form(
            "/revoke",
            &[
                ("token", token_a2.as_str()),
                ("client_id", client_id.as_str()),
            ],
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(c.state.keys.snapshot().current().kid(), second);
    assert_eq!(whoami(&c, &token_a2).await, 401, "revoked on C");

    // A third instance with the wrong passphrase refuses to start, saying why.
    let dir = TempDir::new().expect("tempdir");
    let clock = Arc::new(gatehouse::clock::FixedClock::new(a.clock.now()));
    let err = TestApp::try_start(
        &dir,
        &url,
        |c| {
            rotation(c);
            c.keys_passphrase = Some(gatehouse::config::Passphrase(
                "a wrong passphrase".to_owned(),
            ));
        },
        clock,
    )
    .await
    .expect_err("wrong passphrase");
    assert!(err.to_string().contains("keys_passphrase"), "{err}");
    assert!(err.to_string().contains("not the passphrase"), "{err}");
}

/// A passphrase set on a database whose keys predate it (none sealed yet) is recorded on first
/// use: a later start with another passphrase is refused before it can seal a key nobody else
/// could open.
#[tokio::test]
async fn a_mistyped_passphrase_is_refused_before_any_key_is_sealed_with_it() {
    let plain = TestApp::sqlite().await;
    let url = plain.database_url.clone();
    let dir = plain.restart_parts().await;
    let with = |p: &str| {
        let p = p.to_owned();
        move |c: &mut gatehouse::config::Config| {
            c.keys_passphrase = Some(gatehouse::config::Passphrase(p));
        }
    };
    let clock = || {
        Arc::new(gatehouse::clock::FixedClock::new(
            time::macros::datetime!(2026-11-22 12:00 UTC),
        ))
    };
    let first = TestApp::try_start(&dir, &url, with("the right passphrase"), clock())
        .await
        .expect("first start with a passphrase");
    assert!(
        first
            .store
            .signing_keys()
            .await
            .expect("keys")
            .iter()
            .all(|k| k.private_sealed.is_none()),
        "nothing sealed yet"
    );
    first.store.close().await;
    let err = TestApp::try_start(&dir, &url, with("the wrong passphrase"), clock())
        .await
        .expect_err("another passphrase");
    assert!(err.to_string().contains("not the passphrase"), "{err}");
    TestApp::try_start(&dir, &url, with("the right passphrase"), clock())
        .await
        .expect("the right one still opens");
}
