//! Load run of the MCP endpoint: authenticated `tools/call whoami` throughput and latency at 1,
//! 16 and 64 concurrent clients, against the same application with a stand-in in the bearer
//! layer's place (a fixed caller put in the request), everything else equal (`app_with_mcp`,
//! `mcp::router_with_auth`), so the difference is the layer's cost: token verification
//! (cached), rate limiting, the scope gate's body read and session ownership. (Until
//! 2026-12-01 the stand-in was the bare MCP service, without the application's other layers
//! and routing, whose cost was counted as the bearer layer's.)
//!
//! `cargo bench --bench mcp_tools` (release build). Requests go through the real router in
//! process (no socket) on a SQLite file; each is a stateless 2026-07-28 `tools/call`. Run by
//! `cargo test` (without `--bench`) it does a tiny smoke pass instead.
//!
//! `cargo bench --bench mcp_tools -- --serve PORT` serves the two instead, through sockets as
//! `gatehouse serve` does (`server::listen`): the application on `127.0.0.1:PORT`, the one with
//! the stand-in on `PORT + 1`. It prints the bearer token and runs until stopped, for a load
//! generator outside the process (`benches/mcp_call.lua`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use gatehouse::clock::SystemClock;
use gatehouse::config::Config;
use gatehouse::mcp::verify::Principal;
use gatehouse::state::AppState;
use gatehouse::store::GrantRecord;
use tower::ServiceExt;

const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}"#;

async fn setup() -> (AppState, String, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().unwrap();
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let mut config =
        Config::for_tests("https://mcp.example.com", &db, &dir.path().join("keys")).unwrap();
    // No per-token rate limit: a bench client is one token.
    config.mcp.rate_limit_per_token = u32::MAX;
    let state = AppState::start(config, Arc::new(SystemClock))
        .await
        .unwrap();
    let now = state.clock.now();
    state
        .store
        .insert_user(&gatehouse::account::User::new(
            "u_bench".into(),
            gatehouse::account::Username::parse("bench").unwrap(),
            "unused".into(),
            vec!["user".into()],
            now,
        ))
        .await
        .unwrap();
    let grant = GrantRecord {
        grant_id: "g_bench".into(),
        client_id: "gh_bench".into(),
        user_id: Some("u_bench".into()),
        resource: state.config.resource(),
        scopes: "mcp".into(),
        created_at: now,
        expires_at: now + time::Duration::days(1),
        revoked_at: None,
    };
    let token = gatehouse::tokens::mint(
        &state.keys.snapshot(),
        state.config.issuer.as_str(),
        &grant,
        "mcp",
        now,
        time::Duration::hours(1),
    )
    .unwrap()
    .jwt;
    (state, token, dir)
}

async fn one(router: &Router, token: &str) -> Duration {
    let req = Request::builder()
        .method("POST")
        .uri("/mcp")
        .header("host", "mcp.example.com")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "whoami")
        .body(Body::from(BODY))
        .unwrap();
    let started = Instant::now();
    let res = router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    assert!(body.windows(7).any(|w| w == b"u_bench"), "whoami answered");
    started.elapsed()
}

/// Runs `clients` concurrent clients, each sending `per_client` requests; returns requests/s
/// and every request's latency.
async fn load(
    router: &Router,
    token: &str,
    clients: usize,
    per_client: usize,
) -> (f64, Vec<Duration>) {
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (router, token) = (router.clone(), token.to_owned());
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                latencies.push(one(&router, &token).await);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    (rate, all)
}

/// The `p` quantile of `latencies`, in milliseconds.
fn quantile(latencies: &mut [Duration], p: f64) -> f64 {
    latencies.sort();
    let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
    latencies[i].as_secs_f64() * 1e3
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The port after `--serve`, if given.
fn serve_port() -> Option<u16> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == "--serve")?;
    Some(args.get(at + 1)?.parse().expect("--serve PORT"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let total = if full { 4000 } else { 8 };
    // The runtime `gatehouse serve` runs on (`server::runtime`).
    let runtime = gatehouse::server::runtime().unwrap();
    runtime.block_on(async move {
        let (state, token, _dir) = setup().await;
        let guarded = gatehouse::app(state.clone());
        // The same service with the layer taken out: a fixed caller instead.
        let principal = Principal {
            kind: gatehouse::mcp::verify::CallerKind::User,
            subject: "u_bench".into(),
            client_id: "gh_bench".into(),
            scopes: vec!["mcp".into()],
            grant_id: "g_bench".into(),
            jti: "bench".into(),
            expires_at: i64::MAX,
            forwarded: None,
        };
        // The whole application both times, with a stand-in in the bearer layer's place.
        let stand_in = axum::middleware::from_fn(
            move |mut req: axum::extract::Request, next: axum::middleware::Next| {
                let principal = principal.clone();
                async move {
                    req.extensions_mut().insert(principal);
                    next.run(req).await
                }
            },
        );
        let bare = gatehouse::app_with_mcp(
            state.clone(),
            gatehouse::mcp::router_with_auth(&state, stand_in),
        );
        if let Some(port) = serve_port() {
            println!("{token}");
            let serve = |router: Router, port: u16| {
                let edge = gatehouse::edge::Edge::new(&state.config);
                async move {
                let listener = gatehouse::server::listen(([127, 0, 0, 1], port).into())
                    .await
                    .unwrap();
                gatehouse::edge::serve(
                    listener,
                    router,
                    edge,
                    tokio_util::sync::CancellationToken::new(),
                )
                .await;
                }
            };
            tokio::join!(serve(guarded, port), serve(bare, port + 1));
            return;
        }
        // Warm both (token cache, connections).
        for _ in 0..20.min(total) {
            one(&guarded, &token).await;
            one(&bare, &token).await;
        }
        // Rounds alternate the two variants, so that both see the same moments of a noisy
        // machine; the ratio is the median of the rounds' ratios.
        let rounds = if full { 5 } else { 1 };
        for clients in [1usize, 16, 64] {
            let per_client = (total / clients).max(1);
            let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            let (mut with_latency, mut without_latency) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let (bare_rate, bare_latency) = load(&bare, &token, clients, per_client).await;
                let (rate, latency) = load(&guarded, &token, clients, per_client).await;
                ratios.push(rate / bare_rate);
                with.push(rate);
                without.push(bare_rate);
                with_latency.extend(latency);
                without_latency.extend(bare_latency);
            }
            println!(
                "tools/call whoami, {clients:>2} clients: with the bearer layer {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); without {:.0}/s (p50 {:.2} ms, p99 {:.2} ms); ratio {:.0}% (rounds {:.0}%-{:.0}%)",
                median(&mut with),
                quantile(&mut with_latency, 0.50),
                quantile(&mut with_latency, 0.99),
                median(&mut without),
                quantile(&mut without_latency, 0.50),
                quantile(&mut without_latency, 0.99),
                100.0 * median(&mut ratios),
                100.0 * ratios.iter().copied().fold(f64::MAX, f64::min),
                100.0 * ratios.iter().copied().fold(f64::MIN, f64::max),
            );
        }
    });
}
