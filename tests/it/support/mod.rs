//! `TestApp`: a fresh database (SQLite file or PostgreSQL database), a fresh key directory, a
//! fixed clock, and the real router driven in process.

pub mod github;
pub mod mcp;
pub mod oauth;
pub mod oidc;
pub mod pg_count;
pub mod process;
pub mod upstream;

/// The password every test user is given.
pub const PASSWORD: &str = "correct horse battery staple";
/// The redirect URI Claude registers.
pub const CALLBACK: &str = "https://claude.ai/api/mcp/auth_callback";

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use gatehouse::clock::{Clock, FixedClock};
use gatehouse::config::Config;
use gatehouse::state::{AppState, StartError};
use sqlx::Connection;
use tempfile::TempDir;
use time::macros::datetime;
use tower::ServiceExt;

/// The issuer of in-process tests (production shape: https, no trailing slash).
pub const ISSUER: &str = "https://mcp.example.com";

/// Where the test command's throwaway PostgreSQL listens.
pub const PG_ENV: &str = "TEST_PG_URL";

/// A server state plus its router, on a fresh database and key directory.
pub struct TestApp {
    pub state: AppState,
    pub router: Router,
    pub clock: Arc<FixedClock>,
    pub dir: TempDir,
    pub database_url: String,
}

/// A response, read whole.
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A SQLite URL for a file in `dir`.
pub fn sqlite_url(dir: &TempDir) -> String {
    format!("sqlite://{}", dir.path().join("gatehouse.db").display())
}

/// A new, empty database on the test PostgreSQL server. Fails loudly when there is none: the
/// suite never silently skips the PostgreSQL half.
pub async fn fresh_postgres_url() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let admin = std::env::var(PG_ENV).unwrap_or_else(|_| {
        panic!(
            "{PG_ENV} is not set: run the suite with `tests/run`, which starts a throwaway PostgreSQL \
             server on loopback, or point {PG_ENV} at a server where this user may create databases"
        )
    });
    let name = format!(
        "gh_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000_000
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {PG_ENV}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test database: {e}"));
    let _ = conn.close().await;
    let mut url = url::Url::parse(&admin).unwrap_or_else(|e| panic!("{PG_ENV}: {e}"));
    url.set_path(&format!("/{name}"));
    url.to_string()
}

impl TestApp {
    /// On a fresh SQLite file.
    pub async fn sqlite() -> Self {
        let dir = TempDir::new().unwrap_or_else(|e| panic!("{e}"));
        let url = sqlite_url(&dir);
        Self::with(dir, &url, |_| {}).await
    }

    /// On a fresh PostgreSQL database.
    pub async fn postgres() -> Self {
        let dir = TempDir::new().unwrap_or_else(|e| panic!("{e}"));
        let url = fresh_postgres_url().await;
        Self::with(dir, &url, |_| {}).await
    }

    /// On `dir` and `database_url`, with the configuration adjusted by `tweak`.
    pub async fn with(dir: TempDir, database_url: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        let clock = Arc::new(FixedClock::new(datetime!(2026-11-22 12:00 UTC)));
        let state = Self::try_start(&dir, database_url, tweak, clock.clone())
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        Self::serving(state, clock, dir, database_url)
    }

    /// The router over `state`. Requests come from 192.0.2.10 unless a test says otherwise (as
    /// with connect info under `gatehouse serve`).
    fn serving(state: AppState, clock: Arc<FixedClock>, dir: TempDir, database_url: &str) -> Self {
        let router = gatehouse::app(state.clone())
            .layer(MockConnectInfo(SocketAddr::from(([192, 0, 2, 10], 40000))));
        Self {
            state,
            router,
            clock,
            dir,
            database_url: database_url.to_owned(),
        }
    }

    /// A second instance on the same database, keys and clock, as another process would be:
    /// with caches, hints and a revocation view of its own.
    pub async fn another_instance(&self) -> Self {
        let state = AppState::start(self.state.config.as_ref().clone(), self.clock.clone())
            .await
            .unwrap_or_else(|e| panic!("second instance: {e}"));
        let dir = TempDir::new().unwrap_or_else(|e| panic!("{e}"));
        Self::serving(state, self.clock.clone(), dir, &self.database_url)
    }

    /// Starts the state only, returning the start-up error.
    pub async fn try_start(
        dir: &TempDir,
        database_url: &str,
        tweak: impl FnOnce(&mut Config),
        clock: Arc<FixedClock>,
    ) -> Result<AppState, StartError> {
        let mut config = Config::for_tests(ISSUER, database_url, &dir.path().join("keys"))
            .unwrap_or_else(|e| panic!("config: {e}"));
        tweak(&mut config);
        AppState::start(config, clock).await
    }

    /// Stops this instance (closing its pool) and starts another on the same database and keys.
    pub async fn restart(self) -> Self {
        self.state.store.close().await;
        Self::with(self.dir, &self.database_url, |_| {}).await
    }

    /// Stops this instance (closing its pool) and hands back its directory, for a restart with
    /// other settings.
    pub async fn restart_parts(self) -> TempDir {
        self.state.store.close().await;
        self.dir
    }

    /// The number a `SELECT count(*)` gives in the app's database, read on a connection of its
    /// own.
    pub async fn count_rows(&self, sql: &str) -> i64 {
        let mut conn = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect");
        let n: i64 = sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect("count");
        let _ = conn.close().await;
        n
    }

    /// The one text value `sql` selects, read on a connection of its own.
    pub async fn scalar_string(&self, sql: &str) -> String {
        let mut conn = sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect");
        let value: String = sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect("value");
        let _ = conn.close().await;
        value
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|e| match e {});
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 4 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("body: {e}"))
            .to_vec();
        TestResponse {
            status,
            headers,
            body,
        }
    }

    /// POSTs a JSON body.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> TestResponse {
        self.send(
            request("POST", path)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.send(
            request("GET", path)
                .body(Body::empty())
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await
    }
}

/// Serves `router` on a fresh loopback socket through the socket edge `gatehouse serve` uses
/// (each connection's peer as its client address, the default bounds); returns the address.
pub async fn serve_on_loopback(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = Config::for_tests(
        &format!("http://{addr}"),
        "sqlite://unused.db",
        std::path::Path::new("keys"),
    )
    .expect("config");
    tokio::spawn(gatehouse::edge::serve(
        listener,
        router,
        gatehouse::edge::Edge::new(&config),
        tokio_util::sync::CancellationToken::new(),
    ));
    addr
}

/// POSTs a form to `path`, with Basic credentials when given, and `headers` besides.
pub async fn post_form(
    app: &TestApp,
    path: &str,
    fields: &[(&str, &str)],
    basic: Option<(&str, &str)>,
    headers: &[(&str, &str)],
) -> TestResponse {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut req = request("POST", path).header("content-type", "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        req = req.header("authorization", format!("Basic {encoded}"));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    app.send(req.body(Body::from(body)).expect("request")).await
}

/// A request builder for `method path`.
pub fn request(method: &str, path: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(path)
}

/// A user-agent with a cookie jar, driving the in-process router like a browser.
pub struct Agent<'a> {
    pub app: &'a TestApp,
    pub cookies: std::collections::BTreeMap<String, String>,
    pub set_cookie_headers: Vec<String>,
}

impl<'a> Agent<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            cookies: Default::default(),
            set_cookie_headers: Vec::new(),
        }
    }

    fn with_cookies(&self, builder: axum::http::request::Builder) -> axum::http::request::Builder {
        if self.cookies.is_empty() {
            return builder;
        }
        let header: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        builder.header("cookie", header.join("; "))
    }

    fn keep_cookies(&mut self, res: &TestResponse) {
        for value in res.headers.get_all("set-cookie") {
            let text = value.to_str().expect("ascii cookie").to_owned();
            let pair = text.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if text.to_ascii_lowercase().contains("max-age=0") {
                    self.cookies.remove(name);
                } else {
                    self.cookies.insert(name.to_owned(), value.to_owned());
                }
            }
            self.set_cookie_headers.push(text);
        }
    }

    pub async fn get(&mut self, path: &str) -> TestResponse {
        let req = self
            .with_cookies(request("GET", path))
            .body(Body::empty())
            .expect("request");
        let res = self.app.send(req).await;
        self.keep_cookies(&res);
        res
    }

    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> TestResponse {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let req = self
            .with_cookies(
                request("POST", path).header("content-type", "application/x-www-form-urlencoded"),
            )
            .body(Body::from(body))
            .expect("request");
        let res = self.app.send(req).await;
        self.keep_cookies(&res);
        res
    }

    /// Fills in the sign-in page at `location` and posts it.
    pub async fn sign_in(
        &mut self,
        location: &str,
        username: &str,
        password: &str,
    ) -> TestResponse {
        let page = self.get(location).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let (csrf, request) = (page.hidden("csrf"), page.hidden("request"));
        self.post_form(
            "/login",
            &[
                ("csrf", &csrf),
                ("request", &request),
                ("username", username),
                ("password", password),
            ],
        )
        .await
    }

    /// Answers the consent page at `location` with `decision` (`allow` or `deny`).
    pub async fn decide(&mut self, location: &str, decision: &str) -> TestResponse {
        let page = self.get(location).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let (csrf, request) = (page.hidden("csrf"), page.hidden("request"));
        self.post_form(
            "/consent",
            &[
                ("csrf", &csrf),
                ("request", &request),
                ("decision", decision),
            ],
        )
        .await
    }

    /// The browser leg as a person goes through it: from an authorization request
    /// (`authorize_path`, path and query), signs in and allows whenever a page asks, until the
    /// redirect to `callback`; the code it carries.
    pub async fn authorize_and_allow(
        &mut self,
        authorize_path: &str,
        username: &str,
        password: &str,
        callback: &str,
    ) -> String {
        let mut res = self.get(authorize_path).await;
        loop {
            let location = res.location();
            if location.starts_with(callback) {
                return query_of(&location)["code"].clone();
            }
            res = if location.starts_with("/login") {
                self.sign_in(&location, username, password).await
            } else {
                self.decide(&location, "allow").await
            };
        }
    }
}

impl TestResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `Location` of a redirect.
    pub fn location(&self) -> String {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location (status {}): {}", self.status, self.text()))
            .to_owned()
    }

    /// The value of the hidden input `name` in an HTML page.
    pub fn hidden(&self, name: &str) -> String {
        hidden_input(&self.text(), name)
    }
}

/// The value of the hidden input `name` in an HTML page.
pub fn hidden_input(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden {name} in {html}"))
        + marker.len();
    let end = html[start..].find('"').expect("closing quote") + start;
    html[start..end].to_owned()
}

/// The query parameters of a URL.
pub fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    let parsed = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    parsed.query_pairs().into_owned().collect()
}

impl TestApp {
    /// Adds a confidential client the way `gatehouse clients add --confidential` does (the
    /// operator vouches for it), registered for `grants` with `scope`; returns its id and secret.
    pub async fn operator_client(
        &self,
        method: &str,
        grants: &[&str],
        scope: &str,
    ) -> (String, String) {
        let (id, secret) = self
            .operator_client_with(method, grants, scope, "https://service.example.com/cb")
            .await;
        (id, secret.expect("a confidential client has a secret"))
    }

    /// Adds a client the way `gatehouse clients add` does, with `redirect_uri`; returns its id
    /// and its secret if it has one (`method` other than `none`).
    pub async fn operator_client_with(
        &self,
        method: &str,
        grants: &[&str],
        scope: &str,
        redirect_uri: &str,
    ) -> (String, Option<String>) {
        use gatehouse::oauth::register;
        let request = register::RegistrationRequest {
            redirect_uris: Some(vec![redirect_uri.to_owned()]),
            token_endpoint_auth_method: Some(method.to_owned()),
            grant_types: Some(grants.iter().map(|g| (*g).to_owned()).collect()),
            scope: Some(scope.to_owned()),
            client_name: Some("Operator's client".to_owned()),
            ..register::RegistrationRequest::default()
        };
        let mut client = register::validate(
            request,
            &self.state.config,
            &gatehouse::domain::RedirectPolicy::permissive(),
            gatehouse::domain::ClientKind::Operator,
            register::new_client_id().expect("id"),
            self.clock.now(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let secret = register::issue_secret(&mut client).expect("secret");
        self.state
            .store
            .insert_client(&client)
            .await
            .expect("insert");
        (client.id, secret.map(|s| s.expose().to_owned()))
    }

    /// Adds a user with `roles` directly in the store.
    pub async fn add_user(
        &self,
        name: &str,
        password: &str,
        roles: &[&str],
    ) -> gatehouse::account::User {
        let now = gatehouse::clock::Clock::now(self.clock.as_ref());
        let user = gatehouse::account::User::new(
            format!("u_{name}"),
            gatehouse::account::Username::parse(name).expect("name"),
            gatehouse::password::hash(password.to_owned())
                .await
                .expect("hash"),
            roles.iter().map(|r| (*r).to_owned()).collect(),
            now,
        );
        self.state
            .store
            .insert_user(&user)
            .await
            .expect("insert user");
        user
    }

    /// Where this app keeps the private key file of `kid`.
    pub fn key_file(&self, kid: &str) -> std::path::PathBuf {
        self.dir.path().join("keys").join(format!("{kid}.json"))
    }

    /// Registers a public client with these redirect URIs; returns its id.
    /// Revokes a grant as `/revoke` or the CLI does: in the database and in this instance's
    /// revocation view at once.
    pub async fn revoke_grant(&self, grant_id: &str) {
        let now = gatehouse::clock::Clock::now(self.clock.as_ref());
        self.state
            .store
            .revoke_grant(grant_id, "test", now)
            .await
            .expect("revoke");
        self.state.revocations.revoke_grant(grant_id, now);
    }

    pub async fn register_client(&self, name: &str, redirect_uris: &[&str]) -> String {
        let res = self
            .post_json(
                "/register",
                &serde_json::json!({ "client_name": name, "redirect_uris": redirect_uris, "token_endpoint_auth_method": "none" }),
            )
            .await;
        assert_eq!(res.status, 201, "{}", res.text());
        res.json()["client_id"].as_str().expect("id").to_owned()
    }
}

/// Registers a public client over HTTP at `base` (a real server on a socket); returns its id.
pub async fn register_over_http(base: &str, name: &str, redirect_uri: &str) -> String {
    let res = reqwest::Client::new()
        .post(format!("{base}/register"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({ "client_name": name, "redirect_uris": [redirect_uri], "token_endpoint_auth_method": "none" })
                .to_string(),
        )
        .send()
        .await
        .expect("register");
    assert_eq!(res.status(), 201);
    let registered: serde_json::Value =
        serde_json::from_slice(&res.bytes().await.expect("body")).expect("json");
    registered["client_id"]
        .as_str()
        .expect("client_id")
        .to_owned()
}

/// Part `index` of a compact JWT (0: header, 1: claims), decoded, without checking anything.
pub fn jwt_part(jwt: &str, index: usize) -> serde_json::Value {
    use base64::Engine;
    let part = jwt.split('.').nth(index).expect("JWT part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// The `oauth2` crate's HTTP client for this app: requests go to the router in process.
pub fn oauth_http(
    app: &TestApp,
) -> impl Fn(
    oauth2::HttpRequest,
) -> std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<oauth2::HttpResponse, std::convert::Infallible>>
            + Send,
    >,
> {
    let router = app.router.clone();
    move |req: oauth2::HttpRequest| {
        let router = router.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let request = axum::http::Request::from_parts(parts, Body::from(body));
            let response = router.oneshot(request).await.unwrap_or_else(|e| match e {});
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, 4 * 1024 * 1024)
                .await
                .expect("body")
                .to_vec();
            Ok(axum::http::Response::from_parts(parts, bytes))
        })
    }
}

/// Waits for what the server does after its answer (an audit event written once the response is
/// out, say): `check` until it returns something, for at most 5 s; then the test fails, naming
/// `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited 5 s for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The `kid` in a JWT's header (not verified: for telling which key signed a token).
pub fn kid_of(jwt: &str) -> String {
    jwt_part(jwt, 0)["kid"].as_str().expect("kid").to_owned()
}

/// The secret a page shows once (an API token just created): the text of its
/// `<code class="secret">`.
pub fn shown_token(html: &str) -> String {
    let at = html.find("<code class=\"secret\">").expect("the new token") + 21;
    html[at..at + html[at..].find('<').expect("end")].to_owned()
}
