//! Load run of the token endpoint on SQLite: code exchanges and refreshes per second at 1 and
//! 16 concurrent clients, against the cost of one ES256 signature on one core.
//!
//! `cargo bench --bench token_endpoint` (release build). Requests go through the real router
//! (axum, extractors, client authentication, grants, store, audit) in process on a SQLite file;
//! only the socket is left out, so the figures are the server's own work. Run by `cargo test`
//! (without `--bench`) it does a tiny smoke pass instead.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use base64::Engine;
use gatehouse::clock::SystemClock;
use gatehouse::config::Config;
use gatehouse::domain::{
    Client, ClientKind, RedirectPolicy, RedirectUri, Secret, TokenEndpointAuthMethod,
};
use gatehouse::state::AppState;
use gatehouse::store::CodeRecord;
use josekit::jwt::JwtPayload;
use tower::ServiceExt;

const CALLBACK: &str = "https://claude.ai/api/mcp/auth_callback";

struct Bench {
    state: AppState,
    router: axum::Router,
    _dir: tempfile::TempDir,
}

async fn setup() -> Bench {
    let dir = tempfile::TempDir::new().unwrap();
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let config =
        Config::for_tests("https://mcp.example.com", &db, &dir.path().join("keys")).unwrap();
    let state = AppState::start(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let now = state.clock.now();
    let user = gatehouse::account::User {
        id: "u_bench".into(),
        username: gatehouse::account::Username::parse("bench").unwrap(),
        password_hash: "unused".into(),
        roles: vec!["user".into()],
        created_at: now,
        password_changed_at: now,
        signed_out_at: None,
        locked_at: None,
    };
    state.store.insert_user(&user).await.unwrap();
    let client = Client {
        id: "gh_bench".into(),
        kind: ClientKind::Dynamic,
        name: Some("Bench".into()),
        redirect_uris: vec![RedirectUri::parse(CALLBACK, &RedirectPolicy::permissive()).unwrap()],
        auth_method: TokenEndpointAuthMethod::None,
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        response_types: vec!["code".into()],
        scope: None,
        client_uri: None,
        logo_uri: None,
        application_type: None,
        secret_hash: None,
        created_at: now,
        last_used_at: None,
    };
    state.store.insert_client(&client).await.unwrap();
    let router = gatehouse::app(state.clone());
    Bench {
        state,
        router,
        _dir: dir,
    }
}

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

/// Issues `n` codes directly in the store (the browser leg is not what is measured).
async fn codes(bench: &Bench, n: usize) -> Vec<String> {
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, VERIFIER.as_bytes()).as_ref());
    let now = bench.state.clock.now();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // As the consent page issues them (`oauth::authorize::issue_code`).
        let code = Secret::generate_ordered().unwrap();
        let record = CodeRecord {
            code_hash: code.hash().as_str().to_owned(),
            grant_id: gatehouse::domain::new_grant_id().unwrap(),
            client_id: "gh_bench".into(),
            user_id: "u_bench".into(),
            redirect_uri: CALLBACK.into(),
            code_challenge: challenge.clone(),
            resource: "https://mcp.example.com/mcp".into(),
            scopes: "mcp".into(),
            created_at: now,
            expires_at: now + time::Duration::minutes(30),
        };
        let event = gatehouse::audit::AuditEvent::new("code.issued", now, serde_json::json!({}));
        assert!(
            bench
                .state
                .store
                .issue_code(&record, &event, true)
                .await
                .unwrap()
        );
        out.push(code.expose().to_owned());
    }
    out
}

async fn post(router: &axum::Router, body: String) -> serde_json::Value {
    let req = Request::builder()
        .method("POST")
        .uri("/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn exchange_body(code: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", VERIFIER),
            ("redirect_uri", CALLBACK),
            ("client_id", "gh_bench"),
        ])
        .finish()
}

fn refresh_body(token: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", "gh_bench"),
        ])
        .finish()
}

/// Bytes and write calls this process has made so far (`/proc/self/io`), to show what each
/// request costs the disk: most of it is the SQLite log.
fn written() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("wchar:"), field("syscw:"))
}

fn per_request(before: (u64, u64), n: usize) -> String {
    let (bytes, calls) = written();
    let n = n.max(1) as f64;
    format!(
        "{:.1} KB in {:.1} writes per request",
        (bytes - before.0) as f64 / n / 1024.0,
        (calls - before.1) as f64 / n
    )
}

fn split(items: Vec<String>, parts: usize) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = (0..parts).map(|_| Vec::new()).collect();
    for (i, item) in items.into_iter().enumerate() {
        out[i % parts].push(item);
    }
    out
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `cargo bench --bench token_endpoint -- exchanges` (or `refreshes`) runs one half, to
    // profile it alone.
    let only = std::env::args().find(|a| a == "exchanges" || a == "refreshes");
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    // `BENCH_N=30000` makes each measured run longer (for a profiler); `BENCH_CLIENTS=16` runs
    // only that concurrency.
    let per_run = std::env::var("BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let only_clients: Option<usize> = std::env::var("BENCH_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok());
    let levels = move || {
        [1usize, 16]
            .into_iter()
            .filter(move |c| only_clients.is_none_or(|o| o == *c))
    };
    let (exchanges, refreshes, signs) = if full {
        (per_run, per_run, 20_000)
    } else {
        (16, 16, 10)
    };
    // The runtime `gatehouse serve` runs on (`server::runtime`).
    let runtime = gatehouse::server::runtime().unwrap();
    runtime.block_on(async move {
        let bench = setup().await;

        // One ES256 signature of a typical access-token payload, through the same key set.
        let keys = bench.state.keys.snapshot();
        let mut payload = JwtPayload::new();
        for (k, v) in [("iss", "https://mcp.example.com"), ("sub", "u_bench"), ("aud", "https://mcp.example.com/mcp"), ("client_id", "gh_bench"), ("scope", "mcp")] {
            payload.set_claim(k, Some(serde_json::json!(v))).unwrap();
        }
        // Signatures per second on one core, over `n` signatures.
        let signing = |n: usize| {
            let start = Instant::now();
            for _ in 0..n {
                std::hint::black_box(keys.sign_jwt("at+jwt", &payload).unwrap());
            }
            n as f64 / start.elapsed().as_secs_f64()
        };
        let sign_rate = signing(signs);
        println!(
            "ES256 JWT signature (josekit, one core): {:.1} µs = {sign_rate:.0} signatures/s",
            1e6 / sign_rate
        );
        // The machine's speed drifts by 10-25% over a minute (other guests on its host): each
        // level is compared with the signing rate measured just before and just after it.
        let around = signs / 2;

        // One database read (a primary-key lookup), alone and 16 at once: the round trip to a
        // SQLite connection's thread that every request pays at least once.
        if run("exchanges") && run("refreshes") {
            for clients in [1usize, 16] {
                let reads = if full { 20_000 } else { 16 };
                let start = Instant::now();
                let mut handles = Vec::new();
                for _ in 0..clients {
                    let store = bench.state.store.clone();
                    handles.push(tokio::spawn(async move {
                        for _ in 0..reads / clients {
                            std::hint::black_box(store.grant("g_none").await.unwrap());
                        }
                    }));
                }
                for h in handles {
                    h.await.unwrap();
                }
                let rate = reads as f64 / start.elapsed().as_secs_f64();
                println!(
                    "database reads, {clients:>2} concurrent: {rate:.0}/s ({:.1} µs each at 1)",
                    1e6 / rate
                );
            }
        }

        for clients in levels().filter(|_| run("exchanges")) {
            let work = split(codes(&bench, exchanges).await, clients);
            let io = written();
            let sign_before = signing(around);
            let start = Instant::now();
            let mut handles = Vec::new();
            for chunk in work {
                let router = bench.router.clone();
                handles.push(tokio::spawn(async move {
                    for code in &chunk {
                        post(&router, exchange_body(code)).await;
                    }
                    chunk.len()
                }));
            }
            let mut done = 0;
            for h in handles {
                done += h.await.unwrap();
            }
            let rate = done as f64 / start.elapsed().as_secs_f64();
            let written = per_request(io, done);
            let sign_rate = (sign_before + signing(around)) / 2.0;
            println!(
                "code exchanges, {clients:>2} concurrent clients: {rate:.0}/s ({:.0}% of the one-core signing rate around it, {sign_rate:.0}/s; {written})",
                100.0 * rate / sign_rate,
            );
        }

        for clients in levels().filter(|_| run("refreshes")) {
            // One refresh chain per client: each refresh rotates and the next uses the new token.
            let router = bench.router.clone();
            let starts = codes(&bench, clients).await;
            let mut tokens = Vec::new();
            for code in starts {
                let t = post(&router, exchange_body(&code)).await;
                tokens.push(vec![t["refresh_token"].as_str().unwrap().to_owned()]);
            }
            let per_client = (refreshes / clients).max(1);
            let io = written();
            let sign_before = signing(around);
            let start = Instant::now();
            let mut handles = Vec::new();
            for chain in tokens {
                let router = router.clone();
                handles.push(tokio::spawn(async move {
                    let mut token = chain[0].clone();
                    for _ in 0..per_client {
                        let t = post(&router, refresh_body(&token)).await;
                        token = t["refresh_token"].as_str().unwrap().to_owned();
                    }
                    per_client
                }));
            }
            let mut done = 0;
            for h in handles {
                done += h.await.unwrap();
            }
            let rate = done as f64 / start.elapsed().as_secs_f64();
            let written = per_request(io, done);
            let sign_rate = (sign_before + signing(around)) / 2.0;
            println!(
                "refreshes,      {clients:>2} concurrent clients: {rate:.0}/s ({:.0}% of the one-core signing rate around it, {sign_rate:.0}/s; {written})",
                100.0 * rate / sign_rate,
            );
        }

        // The periodic clean-up, run as if long after everything above had ended: how long it
        // takes to delete what the run left, in chunks that each hold the writer briefly.
        let later = bench.state.clock.now() + time::Duration::days(400);
        let start = Instant::now();
        let pruned = bench
            .state
            .store
            .prune(
                later,
                gatehouse::store::Keep {
                    access_token_ttl: time::Duration::hours(1),
                    leeway: time::Duration::seconds(30),
                    audit_events: None,
                    sign_in_failures: time::Duration::minutes(15),
                },
            )
            .await
            .unwrap();
        println!(
            "clean-up of what the run left: {:.0} ms ({} codes, {} grants with their refresh tokens, {} replay responses)",
            start.elapsed().as_secs_f64() * 1e3,
            pruned.codes,
            pruned.grants,
            pruned.refresh_responses
        );
    });
}
