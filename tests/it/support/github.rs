//! GitHub on loopback, for the sign-in tests: GitHub cannot be reached from CI, and nothing
//! offline implements its OAuth and REST API, so this serves the documented endpoints with
//! GitHub's own request rules and answer shapes (the GitHub Enterprise Server layout: the web at
//! the root, the REST API under `/api/v3`):
//! - `GET /login/oauth/authorize` (a sign-in form), then `POST` of it: a redirect to the
//!   registered callback with `code` and `state`, the PKCE challenge (S256) kept with the code;
//! - `POST /login/oauth/access_token`: the client id and secret as form fields, the code once,
//!   its redirect URI and PKCE verifier checked; errors answered with status 200 and an `error`
//!   body, as GitHub does;
//! - `GET /api/v3/user`, `/api/v3/user/emails`, `/api/v3/user/memberships/orgs/{org}`: with
//!   the token as a bearer and a `User-Agent` (GitHub refuses requests without one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::get;
use base64::Engine;
use serde_json::{Value, json};

use gatehouse::config::{
    AdmitConfig, IdentityProvider, IdentityProviderConfig, ORGS_CLAIM, ProviderKind, RoleRuleConfig,
};

pub const CLIENT_ID: &str = "Iv1.gatehouse";
const CLIENT_SECRET: &str = "github-test-secret";

/// A person at the fixture.
#[derive(Debug, Clone)]
pub struct Person {
    pub id: u64,
    pub login: String,
    /// (address, primary, verified)
    pub emails: Vec<(String, bool, bool)>,
    /// (organisation, "active" or "pending")
    pub orgs: Vec<(String, String)>,
}

#[derive(Debug, Default)]
struct Inner {
    people: HashMap<String, Person>,
    /// code -> (login, redirect_uri, code_challenge)
    codes: HashMap<String, (String, String, String)>,
    /// token -> login
    tokens: HashMap<String, String>,
    /// The query of the last authorization request.
    last_authorize: HashMap<String, String>,
    /// API paths called, in order.
    calls: Vec<String>,
}

/// The fixture, served until dropped.
pub struct Github {
    pub url: String,
    callback: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Fixture {
    callback: String,
    inner: Arc<Mutex<Inner>>,
}

fn random() -> String {
    gatehouse::domain::random_token(16).expect("random")
}

impl Github {
    /// Starts it with Gatehouse (`gatehouse_issuer`, provider `id`) as its one OAuth app, and
    /// the people of [`Github::people`].
    pub async fn start(gatehouse_issuer: &str, id: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let callback = format!("{gatehouse_issuer}/login/provider/{id}/callback");
        let inner = Arc::new(Mutex::new(Inner {
            people: Self::people()
                .into_iter()
                .map(|p| (p.login.clone(), p))
                .collect(),
            ..Inner::default()
        }));
        let fixture = Fixture {
            callback: callback.clone(),
            inner: inner.clone(),
        };
        let app = axum::Router::new()
            .route(
                "/login/oauth/authorize",
                get(authorize_page).post(authorize),
            )
            .route(
                "/login/oauth/access_token",
                axum::routing::post(access_token),
            )
            .route("/api/v3/user", get(user))
            .route("/api/v3/user/emails", get(emails))
            .route("/api/v3/user/memberships/orgs/{org}", get(membership))
            .with_state(fixture);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            callback,
            inner,
            task,
        }
    }

    /// octocat: a verified primary address, active in `acme` and `acme-admins`. pending: a
    /// verified address, only invited to `acme`. unverified: an unverified primary address in
    /// the admitted domain, and a verified one elsewhere, no organisation.
    pub fn people() -> Vec<Person> {
        vec![
            Person {
                id: 583231,
                login: "octocat".into(),
                emails: vec![
                    ("octo@old.example".into(), false, true),
                    ("octo@example.test".into(), true, true),
                ],
                orgs: vec![
                    ("acme".into(), "active".into()),
                    ("acme-admins".into(), "active".into()),
                ],
            },
            Person {
                id: 7,
                login: "pending".into(),
                emails: vec![("pending@example.org".into(), true, true)],
                orgs: vec![("acme".into(), "pending".into())],
            },
            Person {
                id: 8,
                login: "unverified".into(),
                emails: vec![
                    ("unverified@example.test".into(), true, false),
                    ("unverified@example.org".into(), false, true),
                ],
                orgs: Vec::new(),
            },
        ]
    }

    /// Changes person `login` (found by login) with `change`; they may rename themselves.
    pub fn change(&self, login: &str, change: impl FnOnce(&mut Person)) {
        let mut inner = self.inner.lock().expect("lock");
        let mut person = inner.people.remove(login).expect("person");
        change(&mut person);
        inner.people.insert(person.login.clone(), person);
    }

    /// Every code not yet exchanged stops working (as when it expires after ten minutes).
    pub fn expire_codes(&self) {
        self.inner.lock().expect("lock").codes.clear();
    }

    /// The last authorization request's parameters.
    pub fn last_authorize(&self) -> HashMap<String, String> {
        self.inner.lock().expect("lock").last_authorize.clone()
    }

    /// The REST API paths called so far.
    pub fn calls(&self) -> Vec<String> {
        self.inner.lock().expect("lock").calls.clone()
    }

    /// A person's browser at GitHub: from `authorize_url` through the sign-in form as `login`,
    /// to the redirect back; that redirect's `Location`.
    pub async fn sign_in(&self, authorize_url: &str, login: &str) -> String {
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let page = browser.get(authorize_url).send().await.expect("github");
        assert_eq!(
            page.status(),
            200,
            "{}",
            page.text().await.unwrap_or_default()
        );
        let query = url::Url::parse(authorize_url)
            .expect("url")
            .query()
            .unwrap_or_default()
            .to_owned();
        let back = browser
            .post(format!("{}/login/oauth/authorize?{query}", self.url))
            .form(&[("login", login)])
            .send()
            .await
            .expect("github");
        assert_eq!(
            back.status(),
            303,
            "{}",
            back.text().await.unwrap_or_default()
        );
        let location = back
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .expect("location")
            .to_owned();
        assert!(location.starts_with(&self.callback), "{location}");
        location
    }
}

impl Drop for Github {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The authorization request must be the registered app's, to its callback, with PKCE S256.
fn check_request(fixture: &Fixture, q: &HashMap<String, String>) -> Result<(), String> {
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return Err("unknown client_id".into());
    }
    if q.get("redirect_uri") != Some(&fixture.callback) {
        return Err(
            "The redirect_uri MUST match the registered callback URL for this application.".into(),
        );
    }
    if q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || q.get("code_challenge").is_none_or(String::is_empty)
    {
        return Err("code_challenge with S256 expected".into());
    }
    if q.get("state").is_none_or(String::is_empty) {
        return Err("state expected".into());
    }
    Ok(())
}

async fn authorize_page(
    State(fixture): State<Fixture>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(e) = check_request(&fixture, &q) {
        return (StatusCode::BAD_REQUEST, e).into_response();
    }
    fixture.inner.lock().expect("lock").last_authorize = q;
    Html("<form method=post><input name=login><button>Sign in</button></form>").into_response()
}

async fn authorize(
    State(fixture): State<Fixture>,
    Query(q): Query<HashMap<String, String>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(e) = check_request(&fixture, &q) {
        return (StatusCode::BAD_REQUEST, e).into_response();
    }
    let login = form.get("login").cloned().unwrap_or_default();
    let mut inner = fixture.inner.lock().expect("lock");
    if !inner.people.contains_key(&login) {
        return (StatusCode::UNAUTHORIZED, "Incorrect username or password.").into_response();
    }
    let code = random();
    inner.codes.insert(
        code.clone(),
        (
            login,
            q["redirect_uri"].clone(),
            q["code_challenge"].clone(),
        ),
    );
    let mut back = url::Url::parse(&fixture.callback).expect("callback");
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q["state"]);
    Redirect::to(back.as_str()).into_response()
}

fn token_error(error: &str) -> Response {
    // GitHub answers token errors with 200.
    Json(json!({
        "error": error,
        "error_description": "see error",
        "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors",
    }))
    .into_response()
}

async fn access_token(
    State(fixture): State<Fixture>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if headers.get("accept").and_then(|a| a.to_str().ok()) != Some("application/json") {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "form answers are not served here",
        )
            .into_response();
    }
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return token_error("incorrect_client_credentials");
    }
    let mut inner = fixture.inner.lock().expect("lock");
    let Some((login, redirect, challenge)) = form.get("code").and_then(|c| inner.codes.remove(c))
    else {
        return token_error("bad_verification_code");
    };
    if form.get("redirect_uri") != Some(&redirect) {
        return token_error("redirect_uri_mismatch");
    }
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    if base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest) != challenge {
        return token_error("bad_verification_code");
    }
    let token = format!("gho_{}", random());
    inner.tokens.insert(token.clone(), login);
    let scope = inner
        .last_authorize
        .get("scope")
        .cloned()
        .unwrap_or_default()
        .replace(' ', ",");
    Json(json!({"access_token": token, "token_type": "bearer", "scope": scope})).into_response()
}

/// The person the request's token belongs to, or GitHub's refusal.
fn caller(
    fixture: &Fixture,
    headers: &HeaderMap,
    path: &str,
) -> Result<Person, (StatusCode, Json<Value>)> {
    let mut inner = fixture.inner.lock().expect("lock");
    inner.calls.push(path.to_owned());
    if headers.get("user-agent").is_none() {
        return Err((
            StatusCode::FORBIDDEN,
            Json(
                json!({"message": "Request forbidden by administrative rules. Please make sure your request has a User-Agent header"}),
            ),
        ));
    }
    let token = headers
        .get("authorization")
        .and_then(|a| a.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or_default();
    let login = inner.tokens.get(token).cloned();
    login.and_then(|l| inner.people.get(&l).cloned()).ok_or((
        StatusCode::UNAUTHORIZED,
        Json(json!({"message": "Bad credentials"})),
    ))
}

async fn user(State(fixture): State<Fixture>, headers: HeaderMap) -> Response {
    match caller(&fixture, &headers, "/user") {
        Ok(p) => Json(json!({
            "login": p.login,
            "id": p.id,
            "type": "User",
            "name": format!("The {}", p.login),
            "email": Value::Null,
        }))
        .into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn emails(State(fixture): State<Fixture>, headers: HeaderMap) -> Response {
    match caller(&fixture, &headers, "/user/emails") {
        Ok(p) => Json(
            p.emails
                .iter()
                .map(|(email, primary, verified)| {
                    json!({"email": email, "primary": primary, "verified": verified, "visibility": Value::Null})
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn membership(
    State(fixture): State<Fixture>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/user/memberships/orgs/{org}");
    match caller(&fixture, &headers, &path) {
        Ok(p) => match p.orgs.iter().find(|(o, _)| o.eq_ignore_ascii_case(&org)) {
            Some((o, state)) => Json(json!({
                "state": state,
                "role": "member",
                "organization": {"login": o},
            }))
            .into_response(),
            None => (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response(),
        },
        Err(refused) => refused.into_response(),
    }
}

/// Gatehouse's configuration of the fixture as provider `id`: members of `acme` (or verified
/// addresses at `example.test`) are admitted; `acme-admins` are admins.
pub fn config_for(id: &str, url: &str) -> IdentityProvider {
    let raw = IdentityProviderConfig {
        id: id.to_owned(),
        name: "GitHub".to_owned(),
        kind: ProviderKind::Github,
        issuer: url.to_owned(),
        api_url: None,
        client_id: CLIENT_ID.to_owned(),
        client_secret_env: "unused-in-tests".to_owned(),
        scopes: Vec::new(),
        admit: AdmitConfig {
            github_orgs: vec!["ACME".to_owned()],
            email_domains: vec!["example.test".to_owned()],
            ..AdmitConfig::default()
        },
        default_roles: vec!["user".to_owned()],
        roles: vec![RoleRuleConfig {
            claim: ORGS_CLAIM.to_owned(),
            value: "acme-admins".to_owned(),
            role: "admin".to_owned(),
        }],
        link_existing_by_email: false,
    };
    IdentityProvider::check(&raw, &|_| Some(CLIENT_SECRET.to_owned()), &|_| true)
        .unwrap_or_else(|e| panic!("{e:?}"))
}
