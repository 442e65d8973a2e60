//! Signing keys: generated on first start, kept private on disk, published without private
//! members, stable across restarts.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use crate::support::{TestApp, sqlite_url};
use gatehouse::clock::FixedClock;
use gatehouse::domain::SigningAlgorithm;
use gatehouse::keys::{KeyState, thumbprint};
use gatehouse::state::StartError;
use josekit::jwk::Jwk;
use josekit::jwt::JwtPayload;
use tempfile::TempDir;
use time::macros::datetime;

const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "k", "oth"];

fn published_keys(jwks: &serde_json::Value) -> Vec<serde_json::Map<String, serde_json::Value>> {
    jwks["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .map(|k| k.as_object().expect("object").clone())
        .collect()
}

#[tokio::test]
async fn jwks_publishes_public_members_only_with_kid_alg_use() {
    for alg in [
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
        SigningAlgorithm::RS256,
    ] {
        let dir = TempDir::new().expect("tempdir");
        let url = sqlite_url(&dir);
        let app = TestApp::with(dir, &url, |c| c.signing_algorithm = alg).await;
        let res = app.get("/jwks.json").await;
        assert_eq!(res.status, 200);
        assert_eq!(res.header("content-type"), Some("application/json"));
        let keys = published_keys(&res.json());
        assert_eq!(keys.len(), 1, "{alg}");
        for key in keys {
            for member in PRIVATE_MEMBERS {
                assert!(
                    !key.contains_key(member),
                    "{alg}: private member {member} published"
                );
            }
            assert_eq!(key["alg"], alg.as_str());
            assert_eq!(key["use"], "sig");
            // The kid is the RFC 7638 thumbprint of the published key itself.
            let jwk = Jwk::from_map(key.clone()).expect("jwk");
            assert_eq!(key["kid"].as_str(), thumbprint(&jwk).as_deref(), "{alg}");
        }
    }
}

#[tokio::test]
async fn private_key_file_is_0600_in_a_0700_directory_that_git_ignores() {
    let app = TestApp::sqlite().await;
    let keys_dir = app.dir.path().join("keys");
    let kid = app.state.keys.snapshot().current().kid().to_owned();
    let file = keys_dir.join(format!("{kid}.json"));
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&keys_dir), 0o700);
    let gitignore = std::fs::read_to_string(keys_dir.join(".gitignore")).expect(".gitignore");
    assert!(gitignore.lines().any(|l| l == "*"), "{gitignore}");
    assert!(keys_dir.join("README.md").is_file());
}

/// Security review: an existing `keys_dir` with mode 0755 was accepted without a word. It is
/// made the owner's alone at start.
#[tokio::test]
async fn an_existing_keys_dir_open_to_others_is_closed_at_start() {
    let app = TestApp::sqlite().await;
    let dir = app.restart_parts().await;
    let keys_dir = dir.path().join("keys");
    std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let url = crate::support::sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |_| {}).await;
    let mode = std::fs::metadata(app.dir.path().join("keys"))
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
}

/// A token signed before a restart verifies after it, with the key a relying party reads from
/// the JWK set; the kid does not change and no second key is generated.
#[tokio::test]
async fn key_survives_a_restart() {
    let app = TestApp::sqlite().await;
    let kid = app.state.keys.snapshot().current().kid().to_owned();
    let mut payload = JwtPayload::new();
    payload.set_subject("alice");
    let token = app
        .state
        .keys
        .snapshot()
        .sign_jwt("at+jwt", &payload)
        .expect("sign");

    let app = app.restart().await;
    assert_eq!(app.state.keys.snapshot().current().kid(), kid);
    let jwks = app.get("/jwks.json").await.json();
    let keys = published_keys(&jwks);
    assert_eq!(keys.len(), 1);
    let jwk = Jwk::from_map(keys[0].clone()).expect("jwk");
    let verifier = josekit::jws::ES256
        .verifier_from_jwk(&jwk)
        .expect("verifier");
    let (decoded, header) =
        josekit::jwt::decode_with_verifier(&token, &verifier).expect("verifies");
    assert_eq!(decoded.subject(), Some("alice"));
    assert_eq!(header.key_id(), Some(kid.as_str()));
    assert_eq!(header.token_type(), Some("at+jwt"));

    let generated = gatehouse::audit::read(&app.state.store, &Default::default(), None, 100)
        .await
        .expect("audit")
        .into_iter()
        .filter(|r| r.event.kind == "key.generated")
        .count();
    assert_eq!(generated, 1, "one key generated across two starts");
}

/// A key directory that outlived its database is reused, not replaced: tokens already issued
/// and JWK sets cached elsewhere stay valid.
#[tokio::test]
async fn a_key_directory_without_its_database_is_imported() {
    let app = TestApp::sqlite().await;
    let kid = app.state.keys.snapshot().current().kid().to_owned();
    app.state.store.close().await;
    let dir = app.dir;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("gatehouse.db{suffix}")));
    }
    let url = sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |_| {}).await;
    assert_eq!(app.state.keys.snapshot().current().kid(), kid);
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 10)
        .await
        .expect("audit");
    assert_eq!(events[0].event.kind, "key.imported");
}

#[tokio::test]
async fn missing_private_key_of_the_current_key_stops_start_with_a_clear_error() {
    let app = TestApp::sqlite().await;
    let kid = app.state.keys.snapshot().current().kid().to_owned();
    app.state.store.close().await;
    std::fs::remove_file(app.dir.path().join("keys").join(format!("{kid}.json"))).expect("rm");
    let clock = Arc::new(FixedClock::new(datetime!(2026-11-22 12:00 UTC)));
    let err = TestApp::try_start(&app.dir, &app.database_url, |_| {}, clock)
        .await
        .expect_err("must not start");
    let message = err.to_string();
    assert!(
        message.contains(&kid) && message.contains("missing"),
        "{message}"
    );
    assert!(!message.contains('\n'), "{message}");
}

#[tokio::test]
async fn keys_dir_that_is_a_file_stops_start_with_a_clear_error() {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    std::fs::write(dir.path().join("keys"), "not a directory").expect("write");
    let clock = Arc::new(FixedClock::new(datetime!(2026-11-22 12:00 UTC)));
    let err = TestApp::try_start(&dir, &url, |_| {}, clock)
        .await
        .expect_err("must not start");
    assert!(matches!(err, StartError::Keys(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("keys_dir") && message.contains("not a directory"),
        "{message}"
    );
}

#[tokio::test]
async fn the_generated_key_is_current_and_audited() {
    let app = TestApp::sqlite().await;
    let keys = app.state.store.signing_keys().await.expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].state, KeyState::Current);
    assert_eq!(keys[0].activated_at, Some(datetime!(2026-11-22 12:00 UTC)));
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 10)
        .await
        .expect("audit");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event.kind, "key.generated");
    assert_eq!(events[0].event.detail["kid"], keys[0].kid.as_str());
}

/// The session-cookie key an older version kept in clear in the database is moved at start, the
/// same key (browsers signed in stay signed in): to a 0600 file in `keys_dir` without a
/// passphrase, sealed in the database with one.
#[tokio::test]
async fn the_session_cookie_key_leaves_the_database() {
    use base64::Engine;
    let legacy = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 64]);
    for passphrase in [None, Some("a passphrase of some length")] {
        let app = TestApp::sqlite().await;
        let dir = app.restart_parts().await;
        std::fs::remove_file(dir.path().join("keys").join("session_cookie_key")).expect("rm");
        let url = crate::support::sqlite_url(&dir);
        {
            use sqlx::Connection;
            let mut db = sqlx::AnyConnection::connect(&url).await.expect("db");
            sqlx::query(
                "INSERT INTO server_secrets (name, value, created_at) VALUES ('session_cookie_key', $1, 0)",
            )
            .bind(&legacy)
            .execute(&mut db)
            .await
            .expect("legacy key");
        }
        let app = TestApp::with(dir, &url, |c| {
            c.keys_passphrase = passphrase.map(|p| gatehouse::config::Passphrase(p.into()));
        })
        .await;
        let store = &app.state.store;
        assert_eq!(
            store
                .existing_server_secret("session_cookie_key")
                .await
                .expect("read"),
            None
        );
        let file = app.dir.path().join("keys").join("session_cookie_key");
        let sealed = store
            .existing_server_secret("session_cookie_key_sealed")
            .await
            .expect("read");
        match passphrase {
            None => {
                assert_eq!(std::fs::read_to_string(&file).expect("file"), legacy);
                assert_eq!(sealed, None);
            }
            Some(_) => {
                assert!(!file.exists());
                let sealed = sealed.expect("sealed in the database");
                assert!(!sealed.contains(&legacy));
            }
        }
        assert_eq!(app.state.session_key.0.master(), [7u8; 64].as_slice());
    }
}
