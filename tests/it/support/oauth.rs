//! The authorization server as a client uses it: the browser leg through the independent `oauth2`
//! crate, code exchange, refresh, and confidential registrations.

use oauth2::basic::BasicClient;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};
use serde_json::json;

use super::{Agent, CALLBACK, ISSUER, PASSWORD, TestApp, TestResponse};

/// This server's MCP resource (RFC 8707).
pub fn resource() -> String {
    format!("{ISSUER}/mcp")
}

/// The path (and query) of an authorization request of `client_id` for the base scope and
/// this server's resource, as the `oauth2` crate builds it, and its PKCE verifier.
pub fn authorization(client_id: &str) -> (String, String) {
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_auth_uri(AuthUrl::new(format!("{ISSUER}/authorize")).expect("url"))
        .set_redirect_uri(RedirectUrl::new(CALLBACK.to_owned()).expect("url"));
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, _) = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_scope(Scope::new("mcp".to_owned()))
        .add_extra_param("resource", resource())
        .url();
    (
        format!("{}?{}", url.path(), url.query().unwrap_or_default()),
        verifier.secret().clone(),
    )
}

/// Runs the browser leg for `client_id`; returns the code and the PKCE verifier.
pub async fn code_for(app: &TestApp, client_id: &str, scopes: &[&str]) -> (String, String) {
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_auth_uri(AuthUrl::new(format!("{ISSUER}/authorize")).expect("url"))
        .set_redirect_uri(RedirectUrl::new(CALLBACK.to_owned()).expect("url"));
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_extra_param("resource", resource());
    for s in scopes {
        req = req.add_scope(Scope::new((*s).to_owned()));
    }
    let (url, _) = req.url();
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let code = Agent::new(app)
        .authorize_and_allow(&path, "alice", PASSWORD, CALLBACK)
        .await;
    (code, verifier.secret().clone())
}

/// POSTs a form to `path` with optional Basic credentials.
pub async fn post(
    app: &TestApp,
    path: &str,
    fields: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> TestResponse {
    crate::support::post_form(app, path, fields, basic, &[]).await
}

pub async fn exchange(app: &TestApp, client_id: &str, code: &str, verifier: &str) -> TestResponse {
    post(
        app,
        "/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier),
            ("redirect_uri", CALLBACK),
            ("client_id", client_id),
            ("resource", &resource()),
        ],
        None,
    )
    .await
}

pub async fn refresh(app: &TestApp, client_id: &str, token: &str) -> TestResponse {
    post(
        app,
        "/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("client_id", client_id),
        ],
        None,
    )
    .await
}

/// Registers a confidential client; returns (id, secret).
pub async fn confidential(
    app: &TestApp,
    method: &str,
    grants: &[&str],
    scope: &str,
) -> (String, String) {
    let res = app
        .post_json(
            "/register",
            &json!({ "redirect_uris": ["https://service.example.com/cb"], "token_endpoint_auth_method": method, "grant_types": grants, "scope": scope }),
        )
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let doc = res.json();
    (
        doc["client_id"].as_str().expect("id").to_owned(),
        doc["client_secret"].as_str().expect("secret").to_owned(),
    )
}

/// An authorization request as a real client builds it: PKCE S256, random state, scopes and the
/// RFC 8707 resource. Returns the path+query to visit and the state.
pub fn authorize_request(client_id: &str, redirect_uri: &str, scopes: &[&str]) -> (String, String) {
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_auth_uri(AuthUrl::new(format!("{ISSUER}/authorize")).expect("auth url"))
        .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned()).expect("redirect url"));
    let (challenge, _verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_extra_param("resource", format!("{ISSUER}/mcp"));
    for scope in scopes {
        request = request.add_scope(Scope::new((*scope).to_owned()));
    }
    let (url, state) = request.url();
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    (path, state.secret().clone())
}
