//! MCP requests as the SDKs send them, and a signed-in client's tokens for them.

use axum::body::Body;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope,
    TokenUrl,
};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{
    Agent, CALLBACK, ISSUER, PASSWORD, TestApp, TestResponse, oauth_http, request, sqlite_url,
};

/// The `Host` the in-process requests name.
const HOST: &str = "mcp.example.com";

/// One JSON-RPC message to /mcp, as a client sends it.
pub async fn mcp(
    app: &TestApp,
    token: Option<&str>,
    session: Option<&str>,
    protocol: &str,
    body: Value,
) -> TestResponse {
    let mut req = request("POST", "/mcp")
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", protocol);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    // 2026-07-28 repeats the method (and the tool's name) in headers, for intermediaries.
    if protocol == "2026-07-28" {
        if let Some(method) = body.get("method").and_then(Value::as_str) {
            req = req.header("mcp-method", method);
        }
        if let Some(name) = body.pointer("/params/name").and_then(Value::as_str) {
            req = req.header("mcp-name", name);
        }
    }
    app.send(req.body(Body::from(body.to_string())).expect("request"))
        .await
}

/// A `GET` (the server-to-client stream) or `DELETE` (end the session) of /mcp, as a 2025-06-18
/// client sends it with `token`, in `session` when given.
pub async fn bodiless(
    app: &TestApp,
    method: &str,
    token: &str,
    session: Option<&str>,
) -> TestResponse {
    let mut req = request(method, "/mcp")
        .header("host", HOST)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    app.send(req.body(Body::empty()).expect("request")).await
}

/// The JSON-RPC message of a response, JSON or SSE.
pub fn message(res: &TestResponse) -> Value {
    let text = res.text();
    if res
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"))
    {
        let data = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .rfind(|d| d.starts_with('{'))
            .unwrap_or_else(|| panic!("no message in {text}"));
        serde_json::from_str(data).expect("json")
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

pub fn initialize(protocol: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": { "protocolVersion": protocol, "capabilities": {}, "clientInfo": { "name": "test", "version": "1" } } })
}

pub fn call(id: i64, tool: &str, arguments: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call", "params": { "name": tool, "arguments": arguments } })
}

/// A request as a 2026-07-28 client sends it: no session, and the protocol signals in `_meta`
/// of every request (SEP-2567).
pub fn stateless(mut message: Value) -> Value {
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": { "name": "test", "version": "1" },
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    if message.get("params").is_none() {
        message["params"] = json!({});
    }
    message["params"]["_meta"] = meta;
    message
}

/// Signs in as `user` and consents; returns the token response.
pub async fn authorize(
    app: &TestApp,
    client_id: &str,
    user: &str,
    scope: &str,
    resource: &str,
) -> oauth2::basic::BasicTokenResponse {
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_auth_uri(AuthUrl::new(format!("{ISSUER}/authorize")).expect("url"))
        .set_token_uri(TokenUrl::new(format!("{ISSUER}/token")).expect("url"))
        .set_redirect_uri(RedirectUrl::new(CALLBACK.to_owned()).expect("url"));
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge)
        .add_extra_param("resource", resource);
    for s in scope.split(' ') {
        req = req.add_scope(Scope::new(s.to_owned()));
    }
    let (url, _) = req.url();
    let path = format!("{}?{}", url.path(), url.query().unwrap_or_default());
    let code = Agent::new(app)
        .authorize_and_allow(&path, user, PASSWORD, CALLBACK)
        .await;
    client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .add_extra_param("resource", resource)
        .request_async(&oauth_http(app))
        .await
        .expect("token")
}

/// An access token of `user` (already added) for a client of its own, from the whole flow
/// through the `oauth2` crate, with the base scope for this server's `/mcp`.
pub async fn access_token(app: &TestApp, user: &str) -> String {
    use oauth2::TokenResponse as _;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    authorize(app, &client_id, user, "mcp", &format!("{ISSUER}/mcp"))
        .await
        .access_token()
        .secret()
        .clone()
}

pub async fn app_with(tweak: impl FnOnce(&mut gatehouse::config::Config)) -> TestApp {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    TestApp::with(dir, &url, tweak).await
}

/// `tools/call whoami` as a 2026-07-28 client sends it, with bearer `token`.
pub async fn whoami(app: &TestApp, token: &str) -> TestResponse {
    mcp(
        app,
        Some(token),
        None,
        "2026-07-28",
        stateless(call(1, "whoami", json!({}))),
    )
    .await
}
