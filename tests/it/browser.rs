//! A real browser: headless Chromium, driven over WebDriver (chromedriver), signs in and
//! consents on the real server listening on loopback, and reaches the client's callback with a
//! code. Screenshots of the login and consent pages (desktop and phone width) are saved under
//! `test-output/screenshots/` for a person to look at.
//!
//! `tests/run` installs Debian's `chromium` and `chromium-driver`; without them this test fails
//! with a message saying so, never skips.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use base64::Engine;
use gatehouse::clock::SystemClock;
use gatehouse::config::Config;
use gatehouse::state::AppState;
use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use serde_json::{Value, json};
use tempfile::TempDir;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("test-output")
        .join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// A WebDriver session over chromedriver's HTTP API (W3C WebDriver).
struct Driver {
    http: reqwest::Client,
    base: String,
    session: String,
    process: Child,
}

impl Driver {
    async fn start(profile: &std::path::Path) -> Self {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: run the suite with tests/run, which installs Debian's chromium and chromium-driver"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-default-apps",
                    "--password-store=basic", "--window-size=1100,1300",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let mut driver = Self {
            http,
            base,
            session: String::new(),
            process,
        };
        let created = driver.call("POST", "/session", Some(capabilities)).await;
        driver.session = created["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        driver
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let response = request.send().await.expect("webdriver request");
        let bytes = response.bytes().await.expect("webdriver body");
        let value: Value = serde_json::from_slice(&bytes).expect("webdriver JSON");
        if let Some(error) = value["value"].get("error") {
            panic!(
                "webdriver {method} {path}: {error}: {}",
                value["value"]["message"]
            );
        }
        value["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML as the browser holds it.
    async fn source(&self) -> String {
        self.call("GET", "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The page's HTML once it contains `part`: a form answered with a page rather than a
    /// redirect gives no URL to wait for, and a click may return before the answer is shown.
    async fn wait_for_text(&self, part: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let html = self.source().await;
            if html.contains(part) {
                return html;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {part}: {html}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_url(&self, part: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = self.url().await;
            if url.contains(part) {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "browser never reached {part}; it is at {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call("POST", &format!("/element/{element}/click"), None)
            .await;
    }

    async fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.call("GET", "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 png"))
            .expect("decode png");
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
        let path = screenshot_dir().join(name);
        std::fs::write(&path, bytes).expect("write screenshot");
        path
    }

    async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

type Captured = Arc<Mutex<Option<HashMap<String, String>>>>;

async fn callback(
    State(captured): State<Captured>,
    Query(q): Query<HashMap<String, String>>,
) -> Html<&'static str> {
    *captured.lock().expect("lock") = Some(q);
    Html(
        "<!doctype html><title>Connected</title><h1>Connected</h1><p>You can close this window.</p>",
    )
}

/// A listener on a free loopback port, and the issuer that is its URL.
async fn loopback_issuer() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, issuer)
}

/// Gatehouse with `config`, serving on `listener` (a real socket, as for a browser).
async fn serve(listener: tokio::net::TcpListener, config: Config) -> AppState {
    let state = AppState::start(config, Arc::new(SystemClock))
        .await
        .expect("start");
    tokio::spawn(gatehouse::edge::serve(
        listener,
        gatehouse::app(state.clone()),
        gatehouse::edge::Edge::new(&state.config),
        tokio_util::sync::CancellationToken::new(),
    ));
    state
}

/// What the browser brought back to the client's callback; it must have got there.
fn reached(captured: &Captured) -> HashMap<String, String> {
    captured
        .lock()
        .expect("lock")
        .clone()
        .expect("the callback was reached")
}

/// The "MCP client": a loopback callback that records what the browser brings back; its
/// redirect URI.
async fn client_callback() -> (Captured, String) {
    let captured: Captured = Arc::default();
    let callback_addr = crate::support::serve_on_loopback(
        Router::new()
            .route("/callback", get(callback))
            .with_state(captured.clone()),
    )
    .await;
    let redirect_uri = format!("http://127.0.0.1:{}/callback", callback_addr.port());
    (captured, redirect_uri)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_and_consents_in_headless_chromium() {
    let dir = TempDir::new().expect("tempdir");
    // The server on a real loopback socket, its issuer being that socket's URL.
    let (listener, issuer) = loopback_issuer().await;
    let config = Config::for_tests(
        &issuer,
        &crate::support::sqlite_url(&dir),
        &dir.path().join("keys"),
    )
    .expect("config");
    let state = serve(listener, config).await;
    let (captured, redirect_uri) = client_callback().await;

    let now = time::OffsetDateTime::now_utc();
    state
        .store
        .insert_user(&gatehouse::account::User::new(
            "u_alice".into(),
            gatehouse::account::Username::parse("alice").expect("name"),
            gatehouse::password::hash("correct horse battery".into())
                .await
                .expect("hash"),
            vec!["user".into()],
            now,
        ))
        .await
        .expect("user");
    let client_id =
        crate::support::register_over_http(&issuer, "MCP Inspector", &redirect_uri).await;
    let client_id = client_id.as_str();

    let oauth = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_auth_uri(AuthUrl::new(format!("{issuer}/authorize")).expect("url"))
        .set_redirect_uri(RedirectUrl::new(redirect_uri.clone()).expect("url"));
    let (challenge, _verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, state_param) = oauth
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_scope(Scope::new("mcp".into()))
        .add_scope(Scope::new("activity:read".into()))
        .add_extra_param("resource", format!("{issuer}/mcp"))
        .url();

    let profile = TempDir::new().expect("profile");
    let driver = Driver::start(profile.path()).await;
    driver.goto(authorize_url.as_str()).await;
    driver.wait_for_url("/login?request=").await;
    driver.type_into("#username", "alice").await;
    driver.type_into("#password", "correct horse battery").await;
    let login_shot = driver.screenshot("login.png").await;
    driver.click("button[type=submit]").await;

    driver.wait_for_url("/consent?request=").await;
    let consent_shot = driver.screenshot("consent.png").await;
    driver.resize(390, 844).await;
    driver.screenshot("consent-phone.png").await;
    driver.resize(1100, 1300).await;
    driver.click("button[name=decision][value=allow]").await;

    driver.wait_for_url(&redirect_uri).await;
    driver.screenshot("callback.png").await;

    // A client registered before deceptive names were refused: a right-to-left override that
    // makes a reversed name read "Claude by Anthropic". The consent page shows it neutralised:
    // the characters as stored, in their order, with nothing that reverses them.
    let disguised = gatehouse::domain::Client {
        id: "gh_disguised".into(),
        kind: gatehouse::domain::ClientKind::Dynamic,
        name: Some("\u{202E}ciporhtnA yb edualC".into()),
        redirect_uris: vec![
            gatehouse::domain::RedirectUri::parse(
                &redirect_uri,
                &gatehouse::domain::RedirectPolicy::permissive(),
            )
            .expect("uri"),
        ],
        auth_method: gatehouse::domain::TokenEndpointAuthMethod::None,
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
    state.store.insert_client(&disguised).await.expect("client");
    let (challenge, _verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, _) = BasicClient::new(ClientId::new("gh_disguised".into()))
        .set_auth_uri(AuthUrl::new(format!("{issuer}/authorize")).expect("url"))
        .set_redirect_uri(RedirectUrl::new(redirect_uri.clone()).expect("url"))
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_scope(Scope::new("mcp".into()))
        .url();
    driver.goto(authorize_url.as_str()).await;
    driver.wait_for_url("/consent?request=").await;
    let disguised_shot = driver.screenshot("consent-disguised-name.png").await;
    let html = driver.source().await;
    assert!(!html.contains('\u{202E}'), "the override reached the page");
    assert!(html.contains("ciporhtnA yb edualC"), "{html}");
    driver.quit().await;

    let q = reached(&captured);
    assert!(q.get("code").is_some_and(|c| c.len() >= 43), "{q:?}");
    assert_eq!(q.get("state"), Some(state_param.secret()));
    assert_eq!(q.get("iss"), Some(&issuer));
    for shot in [login_shot, consent_shot, disguised_shot] {
        assert!(
            std::fs::metadata(&shot).expect("screenshot").len() > 10_000,
            "{}",
            shot.display()
        );
    }
}

/// From the sign-in page: "Continue with ...", then the provider's own form filled in as `login`.
async fn at_the_provider(driver: &Driver, provider: &str, login: &str) {
    driver.click("a.provider").await;
    driver
        .wait_for_url(&format!("{provider}/interaction/"))
        .await;
    driver.type_into("input[name=login]", login).await;
    driver.type_into("input[name=password]", "any").await;
    driver.click("button[type=submit]").await;
}

/// Signing in through an identity provider in headless Chromium: the sign-in page offers
/// "Continue with ...", the provider (panva's `oidc-provider` on loopback) signs the person in
/// with its own form, Gatehouse asks for consent and the client gets its code; a person the
/// provider's rules do not admit sees the refusal page. Screenshots of both pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_through_an_identity_provider_in_headless_chromium() {
    let dir = TempDir::new().expect("tempdir");
    let (listener, issuer) = loopback_issuer().await;
    let provider = crate::support::oidc::OidcProvider::start(&issuer, "corp").await;
    let mut config = Config::for_tests(
        &issuer,
        &crate::support::sqlite_url(&dir),
        &dir.path().join("keys"),
    )
    .expect("config");
    config.identity_providers = vec![crate::support::oidc::config_for("corp", &provider.issuer)];
    serve(listener, config).await;
    let (captured, redirect_uri) = client_callback().await;
    let client_id =
        crate::support::register_over_http(&issuer, "MCP Inspector", &redirect_uri).await;
    let authorize = || {
        let (challenge, _verifier) = PkceCodeChallenge::new_random_sha256();
        BasicClient::new(ClientId::new(client_id.clone()))
            .set_auth_uri(AuthUrl::new(format!("{issuer}/authorize")).expect("url"))
            .set_redirect_uri(RedirectUrl::new(redirect_uri.clone()).expect("url"))
            .authorize_url(CsrfToken::new_random)
            .set_pkce_challenge(challenge)
            .add_scope(Scope::new("mcp".into()))
            .add_extra_param("resource", format!("{issuer}/mcp"))
            .url()
            .0
    };

    let profile = TempDir::new().expect("profile");
    let driver = Driver::start(profile.path()).await;
    driver.goto(authorize().as_str()).await;
    driver.wait_for_url("/login?request=").await;
    let login_shot = driver.screenshot("login-with-provider.png").await;
    at_the_provider(&driver, &provider.issuer, "alice").await;
    driver.wait_for_url("/consent?request=").await;
    driver.screenshot("consent-after-provider.png").await;
    driver.click("button[name=decision][value=allow]").await;
    driver.wait_for_url(&redirect_uri).await;
    let q = reached(&captured);
    assert!(q.get("code").is_some_and(|c| c.len() >= 43), "{q:?}");

    // Her own page: the provider account is her one way to sign in, so it cannot be unlinked.
    driver.goto(&format!("{issuer}/account")).await;
    let html = driver.source().await;
    assert!(html.contains("alice@example.test"), "{html}");
    let account_shot = driver.screenshot("account.png").await;
    driver
        .click(".rows form[action='/account/unlink'] button")
        .await;
    driver.wait_for_url("/account?notice=last-way").await;
    let html = driver.source().await;
    assert!(html.contains("That is your only way to sign in"), "{html}");
    driver.screenshot("account-last-way.png").await;
    // An API token from the page: shown once, in its own box.
    driver.type_into("#token-name", "laptop script").await;
    driver.click("form[action='/account/tokens'] button").await;
    let html = driver.wait_for_text("<code class=\"secret\">").await;
    assert!(
        html.contains("Copy it now") && html.contains("gh_pat_"),
        "{html}"
    );
    let token_shot = driver.screenshot("account-new-token.png").await;
    driver.quit().await;

    // Another person, in another browser: outside the admitted domain.
    let profile = TempDir::new().expect("profile");
    let driver = Driver::start(profile.path()).await;
    driver.goto(authorize().as_str()).await;
    driver.wait_for_url("/login?request=").await;
    at_the_provider(&driver, &provider.issuer, "mallory").await;
    driver
        .wait_for_url(&format!("{issuer}/login/provider/corp/callback"))
        .await;
    let refused_shot = driver.screenshot("provider-refused.png").await;
    let html = driver.source().await;
    assert!(html.contains("You may not sign in here"), "{html}");
    assert!(html.contains("mallory@elsewhere.test"), "{html}");
    driver.quit().await;
    for shot in [login_shot, refused_shot, account_shot, token_shot] {
        assert!(
            std::fs::metadata(&shot).expect("screenshot").len() > 10_000,
            "{}",
            shot.display()
        );
    }
}

/// A 2026-07-28 `method` request to `{issuer}/mcp` with bearer `token`: status and body.
async fn mcp_over_http(issuer: &str, token: &str, method: &str, params: Value) -> (u16, String) {
    let mut message = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    message["params"]["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": { "name": "browser-test", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let mut req = reqwest::Client::new()
        .post(format!("{issuer}/mcp"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = message.pointer("/params/name").and_then(Value::as_str) {
        req = req.header("mcp-name", name.to_owned());
    }
    let res = req.body(message.to_string()).send().await.expect("mcp");
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

/// The person's own page in headless Chromium: an application connected by an earlier flow is
/// listed, and disconnecting it makes its access token fail at the next `/mcp` call; an API
/// token created on the page is read once from it, lists and calls tools, and is refused at the
/// next call once revoked on the page. Screenshots of the page with the app and with the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_manages_apps_and_api_tokens_on_their_page_in_headless_chromium() {
    let dir = TempDir::new().expect("tempdir");
    let (listener, issuer) = loopback_issuer().await;
    let config = Config::for_tests(
        &issuer,
        &crate::support::sqlite_url(&dir),
        &dir.path().join("keys"),
    )
    .expect("config");
    let state = serve(listener, config).await;
    let (captured, redirect_uri) = client_callback().await;
    let now = time::OffsetDateTime::now_utc();
    state
        .store
        .insert_user(&gatehouse::account::User::new(
            "u_alice".into(),
            gatehouse::account::Username::parse("alice").expect("name"),
            gatehouse::password::hash("correct horse battery".into())
                .await
                .expect("hash"),
            vec!["user".into()],
            now,
        ))
        .await
        .expect("user");
    let client_id =
        crate::support::register_over_http(&issuer, "MCP Inspector", &redirect_uri).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, _) = BasicClient::new(ClientId::new(client_id.clone()))
        .set_auth_uri(AuthUrl::new(format!("{issuer}/authorize")).expect("url"))
        .set_redirect_uri(RedirectUrl::new(redirect_uri.clone()).expect("url"))
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_scope(Scope::new("mcp".into()))
        .add_extra_param("resource", format!("{issuer}/mcp"))
        .url();

    let profile = TempDir::new().expect("profile");
    let driver = Driver::start(profile.path()).await;
    driver.goto(authorize_url.as_str()).await;
    driver.wait_for_url("/login?request=").await;
    driver.type_into("#username", "alice").await;
    driver.type_into("#password", "correct horse battery").await;
    driver.click("button[type=submit]").await;
    driver.wait_for_url("/consent?request=").await;
    driver.click("button[name=decision][value=allow]").await;
    driver.wait_for_url(&redirect_uri).await;
    let code = reached(&captured)["code"].clone();
    let answer = reqwest::Client::new()
        .post(format!("{issuer}/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("client_id", client_id.as_str()),
            ("code_verifier", verifier.secret().as_str()),
            ("resource", format!("{issuer}/mcp").as_str()),
        ])
        .send()
        .await
        .expect("token")
        .text()
        .await
        .expect("body");
    let tokens: Value = serde_json::from_str(&answer).expect("json");
    let access = tokens["access_token"]
        .as_str()
        .expect("access token")
        .to_owned();
    let (status, _) = mcp_over_http(&issuer, &access, "tools/list", json!({})).await;
    assert_eq!(status, 200);

    driver.goto(&format!("{issuer}/account")).await;
    let html = driver.source().await;
    assert!(
        html.contains("MCP Inspector") && html.contains("last got tokens"),
        "{html}"
    );
    let app_shot = driver.screenshot("account-connected-app.png").await;
    driver
        .click("form[action='/account/apps/disconnect'] button")
        .await;
    driver.wait_for_url("/account?notice=disconnected").await;
    let (status, _) = mcp_over_http(&issuer, &access, "tools/list", json!({})).await;
    assert_eq!(status, 401, "the disconnected app's token is refused");

    driver.type_into("#token-name", "laptop script").await;
    driver.click("form[action='/account/tokens'] button").await;
    let html = driver.wait_for_text("<code class=\"secret\">").await;
    let token = crate::support::shown_token(&html);
    assert!(token.starts_with("gh_pat_"), "{token}");
    let token_shot = driver.screenshot("account-with-token.png").await;
    let (status, body) = mcp_over_http(&issuer, &token, "tools/list", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("whoami"), "{body}");
    let (status, body) = mcp_over_http(
        &issuer,
        &token,
        "tools/call",
        json!({ "name": "whoami", "arguments": {} }),
    )
    .await;
    assert!(status == 200 && body.contains("alice"), "{status}: {body}");
    driver.goto(&format!("{issuer}/account")).await;
    assert!(!driver.source().await.contains(&token), "shown once");
    driver
        .click("form[action='/account/tokens/revoke'] button")
        .await;
    driver.wait_for_url("/account?notice=token-revoked").await;
    let (status, _) = mcp_over_http(&issuer, &token, "tools/list", json!({})).await;
    assert_eq!(status, 401, "the revoked token is refused");
    driver.quit().await;
    for shot in [app_shot, token_shot] {
        assert!(
            std::fs::metadata(&shot).expect("screenshot").len() > 10_000,
            "{}",
            shot.display()
        );
    }
}

/// The operator's first run and the admin console in headless Chromium: the setup link of a
/// fresh server opens the page that creates the first admin; that admin locks a person and
/// retires the signing key from `/admin`, and reads both in the audit log. Screenshots of each
/// page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_locks_a_user_and_retires_a_key_in_headless_chromium() {
    let dir = TempDir::new().expect("tempdir");
    let (listener, issuer) = loopback_issuer().await;
    let config = Config::for_tests(
        &issuer,
        &crate::support::sqlite_url(&dir),
        &dir.path().join("keys"),
    )
    .expect("config");
    let state = serve(listener, config).await;
    let now = time::OffsetDateTime::now_utc();
    let link = gatehouse::account::setup::new_link(&state.config, &state.store, now)
        .await
        .expect("link")
        .expect("a fresh server has a setup link");

    let profile = TempDir::new().expect("profile");
    let driver = Driver::start(profile.path()).await;
    driver.goto(&link).await;
    let setup_shot = driver.screenshot("setup.png").await;
    driver.type_into("#username", "root").await;
    driver.type_into("#password", "correct horse battery").await;
    driver
        .type_into("#password_again", "correct horse battery")
        .await;
    driver.click("button[type=submit]").await;
    let html = driver.wait_for_text("is ready").await;
    assert!(html.contains(&format!("{issuer}/mcp")), "{html}");
    let ready_shot = driver.screenshot("setup-ready.png").await;

    state
        .store
        .insert_user(&gatehouse::account::User::new(
            "u_alice".into(),
            gatehouse::account::Username::parse("alice").expect("name"),
            gatehouse::password::hash("alices password".into())
                .await
                .expect("hash"),
            vec!["user".into()],
            now,
        ))
        .await
        .expect("user");
    driver.goto(&format!("{issuer}/admin")).await;
    let users_shot = driver.screenshot("admin-users.png").await;
    driver.click("button[name=lock][value=alice]").await;
    driver.wait_for_url("/admin?notice=locked").await;
    let html = driver.source().await;
    assert!(html.contains("badge bad\">locked"), "{html}");
    let locked_shot = driver.screenshot("admin-user-locked.png").await;
    let alice = state
        .store
        .user("u_alice")
        .await
        .expect("read")
        .expect("alice");
    assert!(alice.locked_at.is_some());

    let kid = state.keys.snapshot().current().kid().to_owned();
    driver.goto(&format!("{issuer}/admin/keys")).await;
    driver
        .type_into(
            "form[action='/admin/keys/retire'] input[name=confirm]",
            &kid,
        )
        .await;
    driver
        .click("form[action='/admin/keys/retire'] button")
        .await;
    driver.wait_for_url("/admin/keys?notice=retired").await;
    let keys_shot = driver.screenshot("admin-key-retired.png").await;
    let retired = state
        .store
        .signing_key(&kid)
        .await
        .expect("read")
        .expect("key");
    assert_eq!(retired.state, gatehouse::domain::KeyState::Retired);
    assert_ne!(
        state.keys.snapshot().current().kid(),
        kid,
        "a new key signs"
    );

    driver
        .goto(&format!("{issuer}/admin/audit?kind=user.locked"))
        .await;
    let html = driver.source().await;
    assert!(
        html.contains("<td>user.locked</td>") && html.contains(r#""by":"root""#),
        "{html}"
    );
    let audit_shot = driver.screenshot("admin-audit.png").await;
    driver.quit().await;
    for shot in [
        setup_shot,
        ready_shot,
        users_shot,
        locked_shot,
        keys_shot,
        audit_shot,
    ] {
        assert!(
            std::fs::metadata(&shot).expect("screenshot").len() > 10_000,
            "{}",
            shot.display()
        );
    }
}
