//! Two real `gatehouse serve` processes behind one issuer, sharing one real PostgreSQL database
//! (what breaks replicated authorization servers: state lost on restart, refresh races between
//! replicas, keys that differ per replica). Each instance has its own key directory: keys reach
//! the other through the database, sealed under the shared passphrase. Every request goes over a
//! loopback socket.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::kid_of;
use crate::support::mcp::{call, stateless};
use crate::support::process::{Running, free_port, gatehouse, wait_healthy};
use crate::support::{hidden_input, register_over_http};

use crate::support::{CALLBACK, PASSWORD};
const PASSPHRASE: &str = "shared by every instance";

/// One instance: its process (killed when this is dropped), its address, its own working and
/// key directory.
struct Instance {
    server: Running,
    base: String,
    _dir: TempDir,
}

/// The settings every instance shares: the issuer (the load balancer's address), the database,
/// the passphrase, and short sync intervals so the test's bounds are short.
/// The per-token budget of `/mcp` (a minute), shared by both instances: small, so that one call's
/// worth (10 s) comes back far slower than the test spends it.
const PER_TOKEN: u32 = 40;

fn configure(cmd: &mut Command, issuer: &str, db: &str) {
    cmd.env("GATEHOUSE_ISSUER", issuer)
        .env("GATEHOUSE_DATABASE_URL", db)
        .env("GATEHOUSE_KEYS_PASSPHRASE", PASSPHRASE)
        .env("GATEHOUSE_REVOCATION_SYNC_INTERVAL", "1")
        .env("GATEHOUSE_KEY_ROTATION__CHECK_INTERVAL", "1")
        .env("GATEHOUSE_MCP__RATE_LIMIT_UNAUTHENTICATED", "10000")
        .env("GATEHOUSE_MCP__RATE_LIMIT_PER_TOKEN", PER_TOKEN.to_string())
        .env("GATEHOUSE_RATE_LIMITS__OAUTH_PER_MINUTE", "10000");
}

async fn start(issuer: &str, db: &str, port: u16) -> Instance {
    let dir = TempDir::new().expect("tempdir");
    let mut cmd = gatehouse(dir.path());
    cmd.arg("serve")
        .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    configure(&mut cmd, issuer, db);
    let mut server = Running(Some(cmd.spawn().expect("spawn")));
    let base = format!("http://127.0.0.1:{port}");
    let child = server.0.as_mut().expect("child");
    tokio::task::block_in_place(|| wait_healthy(child, &base));
    Instance {
        server,
        base,
        _dir: dir,
    }
}

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A browser: follows nothing by itself, keeps cookies.
struct Browser {
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
}

impl Browser {
    fn new() -> Self {
        Self {
            http: http(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> (u16, String, String) {
        let res = req
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("send");
        for value in res.headers().get_all("set-cookie") {
            let pair = value
                .to_str()
                .expect("cookie")
                .split(';')
                .next()
                .expect("pair");
            if let Some((k, v)) = pair.split_once('=') {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let status = res.status().as_u16();
        let location = res
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, location, res.text().await.expect("body"))
    }
}

/// The browser leg on `base`: authorize, sign in, consent; returns the code.
pub(crate) async fn sign_in(base: &str, issuer: &str, client_id: &str, challenge: &str) -> String {
    let mut browser = Browser::new();
    let url = reqwest::Url::parse_with_params(
        &format!("{base}/authorize"),
        &[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", CALLBACK),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
            ("state", "s1"),
            ("scope", "mcp"),
            ("resource", &format!("{issuer}/mcp")),
        ],
    )
    .expect("url");
    let (_, mut location, _) = browser.send(browser.http.get(url)).await;
    loop {
        if location.starts_with(CALLBACK) {
            let url = reqwest::Url::parse(&location).expect("callback");
            let q: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
            assert_eq!(q["iss"], issuer);
            return q["code"].clone();
        }
        let page_url = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location.replace(issuer, base)
        };
        let (status, next, html) = browser.send(browser.http.get(&page_url)).await;
        if [302, 303].contains(&status) {
            location = next;
            continue;
        }
        assert_eq!(status, 200, "{page_url}: {html}");
        let (csrf, request) = (hidden_input(&html, "csrf"), hidden_input(&html, "request"));
        let (path, extra): (&str, Vec<(&str, &str)>) = if page_url.contains("/login") {
            (
                "/login",
                vec![("username", "alice"), ("password", PASSWORD)],
            )
        } else {
            ("/consent", vec![("decision", "allow")])
        };
        let mut form = vec![("csrf", csrf.as_str()), ("request", request.as_str())];
        form.extend(extra);
        let (status, next, body) = browser
            .send(browser.http.post(format!("{base}{path}")).form(&form))
            .await;
        assert!([302, 303].contains(&status), "{path}: {status} {body}");
        location = next;
    }
}

/// A token request; `None` when the connection failed (an instance that died under it).
pub(crate) async fn try_token_post(base: &str, form: &[(&str, &str)]) -> Option<(u16, Value)> {
    let res = http()
        .post(format!("{base}/token"))
        .form(form)
        .send()
        .await
        .ok()?;
    let status = res.status().as_u16();
    let body = res.bytes().await.ok()?;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    Some((status, json))
}

pub(crate) async fn token_post(base: &str, form: &[(&str, &str)]) -> (u16, Value) {
    try_token_post(base, form)
        .await
        .expect("token endpoint answered")
}

pub(crate) async fn try_refresh(base: &str, client_id: &str, token: &str) -> Option<(u16, Value)> {
    try_token_post(
        base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", client_id),
        ],
    )
    .await
}

async fn refresh(base: &str, client_id: &str, token: &str) -> (u16, Value) {
    try_refresh(base, client_id, token)
        .await
        .expect("token endpoint answered")
}

/// Signs alice in on `sign_in_base` and redeems the code on `redeem_base`; the token response.
pub(crate) async fn authorize(
    sign_in_base: &str,
    redeem_base: &str,
    issuer: &str,
    client_id: &str,
) -> Value {
    let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    let (challenge, verifier) = (challenge.as_str(), verifier.secret());
    let code = sign_in(sign_in_base, issuer, client_id, challenge).await;
    let (status, tokens) = token_post(
        redeem_base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", verifier),
            ("redirect_uri", CALLBACK),
            ("client_id", client_id),
            ("resource", &format!("{issuer}/mcp")),
        ],
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    tokens
}

pub(crate) async fn whoami(base: &str, token: &str) -> u16 {
    whoami_response(base, token).await.status().as_u16()
}

pub(crate) async fn whoami_response(base: &str, token: &str) -> reqwest::Response {
    let body = stateless(call(1, "whoami", json!({})));
    http()
        .post(format!("{base}/mcp"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "whoami")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("mcp")
}

/// Waits until `check` holds, polling; panics naming `what` after `bound`.
async fn within<F, Fut>(bound: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_behave_as_one() {
    let db = crate::support::fresh_postgres_url().await;
    let (port_a, port_b) = (free_port(), free_port());
    // Clients know one issuer (the load balancer); here it is A's address.
    let issuer = format!("http://127.0.0.1:{port_a}");
    let a = start(&issuer, &db, port_a).await;
    let b = start(&issuer, &db, port_b).await;

    // The operator adds a user with the CLI against the same database.
    let cwd = TempDir::new().expect("tempdir");
    let mut add = gatehouse(cwd.path());
    configure(&mut add, &issuer, &db);
    crate::support::process::add_user(add, "alice", PASSWORD);

    // Register on A.
    let client_id = register_over_http(&a.base, "Claude", CALLBACK).await;

    // Sign in on B; exchange the code on A; call /mcp on B.
    let tokens = authorize(&b.base, &a.base, &issuer, &client_id).await;
    let access = tokens["access_token"].as_str().expect("at").to_owned();
    let refresh_token = tokens["refresh_token"].as_str().expect("rt").to_owned();
    assert_eq!(whoami(&b.base, &access).await, 200);

    // The same refresh token on A and B at the same moment: one rotation, and the loser gets
    // the grace-window replay of the same pair.
    let (on_a, on_b) = tokio::join!(
        refresh(&a.base, &client_id, &refresh_token),
        refresh(&b.base, &client_id, &refresh_token)
    );
    assert_eq!((on_a.0, on_b.0), (200, 200), "{} / {}", on_a.1, on_b.1);
    assert_eq!(
        on_a.1["refresh_token"], on_b.1["refresh_token"],
        "one family, one winner"
    );
    assert_eq!(on_a.1["access_token"], on_b.1["access_token"]);
    let access = on_a.1["access_token"].as_str().expect("at").to_owned();
    let refresh_token = on_a.1["refresh_token"].as_str().expect("rt").to_owned();

    // Revoke on B; A refuses the token within the sync bound (1 s here).
    assert_eq!(whoami(&a.base, &access).await, 200);
    let res = http()
        .post(format!("{}/revoke", b.base))
        .form(&[
            ("token", access.as_str()),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .expect("revoke");
    assert_eq!(res.status(), 200);
    let revoked_at = Instant::now();
    within(
        Duration::from_secs(3),
        "revocation on B seen by A",
        || async { whoami(&a.base, &access).await == 401 },
    )
    .await;
    eprintln!(
        "revocation reached the other instance in {:?}",
        revoked_at.elapsed()
    );

    // Rotate keys on A (the CLI, at once); tokens from both verify on both.
    let (status, tokens) = refresh(&a.base, &client_id, &refresh_token).await;
    assert_eq!(status, 200, "{tokens}");
    let before = tokens["access_token"].as_str().expect("at").to_owned();
    let mut refresh_token = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let mut rotate = gatehouse(cwd.path());
    rotate.args(["keys", "rotate", "--now"]);
    configure(&mut rotate, &issuer, &db);
    let out = rotate.output().expect("keys rotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each instance signs with the new key within the check interval (1 s here).
    let old = kid_of(&before);
    let mut minted = vec![before.clone()];
    let deadline = Instant::now() + Duration::from_secs(5);
    for instance in [&a, &b] {
        loop {
            let (status, tokens) = refresh(&instance.base, &client_id, &refresh_token).await;
            assert_eq!(status, 200, "{tokens}");
            refresh_token = tokens["refresh_token"].as_str().expect("rt").to_owned();
            let access = tokens["access_token"].as_str().expect("at").to_owned();
            let rotated = kid_of(&access) != old;
            minted.push(access);
            if rotated {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still signs with {old}",
                instance.base
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for base in [&a.base, &b.base] {
        for token in &minted {
            assert_eq!(whoami(base, token).await, 200, "{base} {}", kid_of(token));
        }
    }

    // The per-token limit is one budget across both instances: a token (of a fresh grant: the
    // budget is the grant's) used on A and B in turn gets PER_TOKEN calls in all, then 429 on
    // either, with the remaining count shared.
    let tokens = authorize(&a.base, &a.base, &issuer, &client_id).await;
    let limited = tokens["access_token"].as_str().expect("at").to_owned();
    for n in 1..=PER_TOKEN {
        let base = if n % 2 == 0 { &a.base } else { &b.base };
        let res = whoami_response(base, &limited).await;
        assert_eq!(res.status(), 200, "call {n} on {base}");
        let remaining = res.headers()["x-ratelimit-remaining"]
            .to_str()
            .expect("header");
        assert_eq!(remaining, (PER_TOKEN - n).to_string(), "call {n} on {base}");
    }
    for base in [&a.base, &b.base] {
        let res = whoami_response(base, &limited).await;
        assert_eq!(res.status(), 429, "over the shared budget on {base}");
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .expect("header")
            .parse()
            .expect("seconds");
        assert!((1..=2).contains(&wait), "one call's worth (1.5 s): {wait}");
    }

    // kill -9 B in the middle of refresh chains on B: every rotation a client saw answered is
    // committed, and A keeps serving every family.
    let mut chains = Vec::new();
    for _ in 0..4 {
        let tokens = authorize(&a.base, &a.base, &issuer, &client_id).await;
        chains.push(tokens["refresh_token"].as_str().expect("rt").to_owned());
    }
    let mut load = Vec::new();
    let mut progress = Vec::new();
    for start_token in chains {
        let (base, cid) = (b.base.clone(), client_id.clone());
        let done = Arc::new(AtomicU32::new(0));
        progress.push(done.clone());
        load.push(tokio::spawn(async move {
            // The newest token this client was answered with. Each chain runs until B dies
            // under it (the bound only stops a chain that never meets the kill).
            let mut newest = start_token;
            for _ in 0..1_000_000 {
                let Some((status, body)) = try_refresh(&base, &cid, &newest).await else {
                    return (newest, true);
                };
                assert_eq!(status, 200, "refresh on B refused before the kill: {body}");
                newest = body["refresh_token"].as_str().expect("rt").to_owned();
                done.fetch_add(1, Ordering::Relaxed);
            }
            (newest, false)
        }));
    }
    // The kill lands while every chain is running: each has rotated a few times already.
    within(Duration::from_secs(60), "every chain rotating on B", || {
        let ready = progress.iter().all(|p| p.load(Ordering::Relaxed) >= 3);
        async move { ready }
    })
    .await;
    let mut b = b;
    let mut victim = b.server.take();
    Command::new("kill")
        .args(["-KILL", &victim.id().to_string()])
        .status()
        .expect("kill -9");
    let _ = victim.wait();
    let mut rotations = 0;
    for (handle, done) in load.into_iter().zip(&progress) {
        let (newest, cut_by_the_kill) = handle.await.expect("join");
        assert!(cut_by_the_kill, "a chain ended before the kill");
        rotations += done.load(Ordering::Relaxed);
        let (status, body) = refresh(&a.base, &client_id, &newest).await;
        assert_eq!(status, 200, "a family lost or corrupted by kill -9: {body}");
        let access = body["access_token"].as_str().expect("at");
        assert_eq!(whoami(&a.base, access).await, 200);
    }
    let health = http()
        .get(format!("{}/health", a.base))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200, "the survivor keeps serving");
    assert!(rotations > 0, "B rotated nothing before the kill");
    eprintln!("{rotations} rotations on B before kill -9; every family intact on A");

    // The operator removes the client with the CLI: A, which has it cached from the requests
    // above, refuses it within the revocation bound (1 s here) as an unknown client.
    let mut remove = gatehouse(cwd.path());
    remove.args(["clients", "remove", &client_id]);
    configure(&mut remove, &issuer, &db);
    let out = remove.output().expect("clients remove");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed_at = Instant::now();
    within(
        Duration::from_secs(3),
        "client removal seen by A",
        || async {
            let (status, body) = refresh(&a.base, &client_id, &refresh_token).await;
            status == 401 && body["error"] == "invalid_client"
        },
    )
    .await;
    eprintln!("client removal reached A in {:?}", removed_at.elapsed());
}
