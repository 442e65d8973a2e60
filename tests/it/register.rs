//! Dynamic client registration (RFC 7591): the exact bodies real MCP clients send, every
//! refused form with its error code, the operator's policy, and the clean-up of registrations
//! that were never used (RFC 7591 §2, §3.2; Cursor sends three redirect URIs in one request, and
//! refusing one refuses them all).

use crate::support::{TestApp, TestResponse, request, sqlite_url};
use axum::body::Body;
use gatehouse::clock::Clock;
use gatehouse::config::Config;
use serde_json::{Value, json};
use tempfile::TempDir;

async fn app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    TestApp::with(dir, &url, tweak).await
}

fn assert_no_nulls(v: &Value) {
    match v {
        Value::Null => panic!("null in registration response"),
        Value::Object(m) => m.values().for_each(assert_no_nulls),
        Value::Array(a) => a.iter().for_each(assert_no_nulls),
        _ => {}
    }
}

/// Registers `body` and checks what every client relies on in the answer.
async fn registers(app: &TestApp, body: Value) -> Value {
    let res = app.post_json("/register", &body).await;
    assert_eq!(res.status, 201, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let doc = res.json();
    assert_no_nulls(&doc);
    let id = doc["client_id"].as_str().expect("client_id");
    assert!(id.starts_with("gh_") && !id.starts_with("https://"), "{id}");
    assert!(doc["client_id_issued_at"].is_i64());
    // Redirect URIs are echoed exactly as sent (TS SDK schema requires them).
    assert_eq!(doc["redirect_uris"], body["redirect_uris"]);
    // The requested auth method is echoed (TS SDK picks its method from it).
    let method = body["token_endpoint_auth_method"]
        .as_str()
        .unwrap_or("client_secret_basic");
    assert_eq!(doc["token_endpoint_auth_method"], method);
    assert_eq!(doc["client_secret"].is_string(), method != "none", "{doc}");
    assert_eq!(doc["response_types"], json!(["code"]));
    let stored = app
        .state
        .store
        .client(id)
        .await
        .expect("store")
        .expect("stored");
    assert_eq!(
        stored.redirect_uris.len(),
        body["redirect_uris"].as_array().map_or(0, Vec::len)
    );
    doc
}

#[tokio::test]
async fn claude_registers() {
    let app = TestApp::sqlite().await;
    let doc = registers(
        &app,
        json!({
            "client_name": "Claude",
            "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "scope": "claudeai"
        }),
    )
    .await;
    // Claude's bogus scope is dropped, not an error.
    assert!(doc.get("scope").is_none(), "{doc}");
    assert_eq!(doc["client_name"], "Claude");
}

#[tokio::test]
async fn chatgpt_registers() {
    let app = TestApp::sqlite().await;
    registers(
        &app,
        json!({
            "client_name": "ChatGPT",
            "redirect_uris": [
                "https://chatgpt.com/connector_platform_oauth_redirect",
                "https://chatgpt.com/connector/oauth/abc123"
            ],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            "scope": "mcp activity:read offline_access"
        }),
    )
    .await;
}

#[tokio::test]
async fn vscode_registers() {
    let app = TestApp::sqlite().await;
    registers(
        &app,
        json!({
            "client_name": "Visual Studio Code",
            "redirect_uris": [
                "https://vscode.dev/redirect",
                "https://insiders.vscode.dev/redirect",
                "http://127.0.0.1/",
                "http://127.0.0.1:33418/"
            ],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none"
        }),
    )
    .await;
}

#[tokio::test]
async fn cursor_registers_all_three_uris_in_one_request() {
    let app = TestApp::sqlite().await;
    let doc = registers(
        &app,
        json!({
            "client_name": "Cursor",
            "redirect_uris": [
                "cursor://anysphere.cursor-mcp/oauth/callback",
                "https://www.cursor.com/agents/mcp/oauth/callback",
                "http://localhost:8787/callback"
            ],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none"
        }),
    )
    .await;
    assert_eq!(doc["redirect_uris"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn mcp_inspector_registers() {
    let app = TestApp::sqlite().await;
    let doc = registers(
        &app,
        json!({
            "redirect_uris": ["http://localhost:6274/oauth/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_name": "MCP Inspector",
            "client_uri": "https://github.com/modelcontextprotocol/inspector"
        }),
    )
    .await;
    assert_eq!(
        doc["client_uri"],
        "https://github.com/modelcontextprotocol/inspector"
    );
}

#[tokio::test]
async fn claude_code_registers() {
    let app = TestApp::sqlite().await;
    registers(
        &app,
        json!({
            "client_name": "Claude Code (gatehouse)",
            "redirect_uris": ["http://localhost:54212/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none"
        }),
    )
    .await;
}

/// A 2026-07-28 client: `application_type` is accepted and echoed; unknown fields are ignored.
#[tokio::test]
async fn application_type_and_unknown_metadata_are_accepted() {
    let app = TestApp::sqlite().await;
    let doc = registers(
        &app,
        json!({
            "client_name": "SDK client",
            "redirect_uris": ["http://127.0.0.1:9999/cb"],
            "token_endpoint_auth_method": "none",
            "application_type": "native",
            "software_id": "x",
            "software_version": "2.0.0",
            "contacts": ["ops@example.com"],
            "tos_uri": "https://example.com/tos",
            "jwks": {"keys": []},
            "future_field": {"nested": [1, 2, 3]}
        }),
    )
    .await;
    assert_eq!(doc["application_type"], "native");
    assert!(doc.get("software_id").is_none() && doc.get("future_field").is_none());
}

/// A secret only for secret-based methods, shown once, stored only as a hash: the database
/// files never contain it in clear.
#[tokio::test]
async fn client_secret_is_issued_for_secret_methods_and_stored_hashed() {
    let app = TestApp::sqlite().await;
    for method in [
        Some("client_secret_basic"),
        Some("client_secret_post"),
        None,
    ] {
        let mut body =
            json!({ "redirect_uris": ["https://app.example.com/cb"], "client_name": "Server app" });
        if let Some(m) = method {
            body["token_endpoint_auth_method"] = json!(m);
        }
        let doc = registers(&app, body).await;
        let secret = doc["client_secret"].as_str().expect("secret").to_owned();
        assert!(secret.len() >= 43, "256-bit secret");
        assert_eq!(doc["client_secret_expires_at"], 0);
        let stored = app
            .state
            .store
            .client(doc["client_id"].as_str().expect("id"))
            .await
            .expect("store")
            .expect("client");
        assert!(stored.verify_secret(&gatehouse::domain::Secret::presented(&secret)));
        assert!(!stored.verify_secret(&gatehouse::domain::Secret::presented("wrong")));
        for file in ["gatehouse.db", "gatehouse.db-wal"] {
            let bytes = std::fs::read(app.dir.path().join(file)).unwrap_or_default();
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "client secret found in clear in {file}");
        }
    }
}

async fn refused(app: &TestApp, body: Value, code: &str, names: &str) -> TestResponse {
    let res = app.post_json("/register", &body).await;
    assert_eq!(
        res.status,
        400,
        "{body}: {}",
        String::from_utf8_lossy(&res.body)
    );
    let doc = res.json();
    assert_eq!(doc["error"], code, "{body}");
    let description = doc["error_description"].as_str().expect("description");
    assert!(
        description.contains(names),
        "{description:?} should name {names:?}"
    );
    res
}

#[tokio::test]
async fn every_dangerous_redirect_uri_is_refused_naming_it() {
    let app = TestApp::sqlite().await;
    for uri in [
        "javascript:alert(document.cookie)",
        "data:text/html,<script>alert(1)</script>",
        "file:///etc/passwd",
        "vbscript:msgbox(1)",
        "https://app.example.com/cb#fragment",
        "https://user:pass@app.example.com/cb",
        "http://app.example.com/cb",
        "http://192.168.1.10/cb",
        "/relative/callback",
        "not a uri",
    ] {
        let body = json!({ "redirect_uris": ["https://ok.example.com/cb", uri], "token_endpoint_auth_method": "none" });
        refused(&app, body, "invalid_redirect_uri", uri).await;
    }
    // Nothing was stored for any of them: one bad URI refuses the whole request.
    assert!(app.state.store.clients().await.expect("list").is_empty());
}

#[tokio::test]
async fn missing_redirect_uris_are_refused() {
    let app = TestApp::sqlite().await;
    refused(
        &app,
        json!({ "token_endpoint_auth_method": "none" }),
        "invalid_redirect_uri",
        "redirect_uris",
    )
    .await;
    refused(
        &app,
        json!({ "redirect_uris": [], "token_endpoint_auth_method": "none" }),
        "invalid_redirect_uri",
        "redirect_uris",
    )
    .await;
}

#[tokio::test]
async fn unsupported_metadata_is_refused_with_invalid_client_metadata() {
    let app = TestApp::sqlite().await;
    let base = || json!({ "redirect_uris": ["https://app.example.com/cb"] });
    let cases = [
        (
            "token_endpoint_auth_method",
            json!("private_key_jwt"),
            "private_key_jwt",
        ),
        ("grant_types", json!(["implicit"]), "implicit"),
        (
            "grant_types",
            json!(["authorization_code", "password"]),
            "password",
        ),
        ("response_types", json!(["token"]), "token"),
        (
            "redirect_uris",
            json!("https://app.example.com/cb"),
            "redirect_uris",
        ),
        ("application_type", json!("desktop"), "application_type"),
        ("client_name", json!("a\u{0007}b"), "client_name"),
        // A right-to-left override: a reversed string that reads "Claude by Anthropic".
        (
            "client_name",
            json!("\u{202E}ciporhtnA yb edualC"),
            "client_name",
        ),
        ("client_name", json!("Clau\u{200B}de"), "client_name"),
    ];
    for (field, value, names) in cases {
        let mut body = base();
        body["token_endpoint_auth_method"] = json!("none");
        body[field] = value;
        refused(&app, body, "invalid_client_metadata", names).await;
    }
    // client_credentials is for confidential clients only.
    let mut body = base();
    body["token_endpoint_auth_method"] = json!("none");
    body["grant_types"] = json!(["client_credentials"]);
    refused(&app, body, "invalid_client_metadata", "client_credentials").await;
}

/// Informational URLs that are not https are dropped, not fatal (RFC 7591 §2).
#[tokio::test]
async fn non_https_client_and_logo_uris_are_dropped() {
    let app = TestApp::sqlite().await;
    let doc = registers(
        &app,
        json!({
            "redirect_uris": ["http://localhost:3000/cb"],
            "token_endpoint_auth_method": "none",
            "client_uri": "http://localhost:3000",
            "logo_uri": "javascript:alert(1)"
        }),
    )
    .await;
    assert!(
        doc.get("client_uri").is_none() && doc.get("logo_uri").is_none(),
        "{doc}"
    );
}

/// Private-use schemes: reverse-domain names and the operator's list only, so an OS handler
/// such as ms-msdt: (CVE-2022-30190) can never be a redirect target.
#[tokio::test]
async fn only_reverse_domain_or_listed_private_use_schemes_register() {
    let app = TestApp::sqlite().await;
    for uri in [
        "com.example.app:/oauth2redirect",
        "vscode://vscode.github-authentication/did-authenticate",
    ] {
        registers(
            &app,
            json!({ "redirect_uris": [uri], "token_endpoint_auth_method": "none" }),
        )
        .await;
    }
    for uri in [
        "ms-msdt:/id PCWDiagnostic",
        "search-ms:query=calc",
        "mailto:x@example.com",
        "ms-settings:display",
    ] {
        let res = app
            .post_json(
                "/register",
                &json!({ "redirect_uris": [uri], "token_endpoint_auth_method": "none" }),
            )
            .await;
        assert_eq!(res.status, 400, "{uri}");
        assert_eq!(res.json()["error"], "invalid_redirect_uri", "{uri}");
    }
}

#[tokio::test]
async fn malformed_bodies_get_4xx_never_5xx() {
    let app = TestApp::sqlite().await;
    let send = |content_type: &'static str, body: Vec<u8>| {
        request("POST", "/register")
            .header("content-type", content_type)
            .body(Body::from(body))
            .expect("request")
    };
    for (content_type, body) in [
        ("application/json", b"{not json".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"\"string\"".to_vec()),
        ("application/json", b"".to_vec()),
        ("application/json", vec![0xff, 0xfe, 0x00]),
        (
            "application/x-www-form-urlencoded",
            b"redirect_uris=https://a.example/cb".to_vec(),
        ),
        ("text/plain", b"{}".to_vec()),
    ] {
        let res = app.send(send(content_type, body.clone())).await;
        assert_eq!(
            res.status,
            400,
            "{content_type} {:?}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(res.json()["error"], "invalid_client_metadata");
    }
    // One megabyte: refused by size, as JSON.
    let mut big = b"{\"client_name\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    big.extend(b"\",\"redirect_uris\":[\"https://a.example/cb\"]}");
    let res = app.send(send("application/json", big)).await;
    assert_eq!(res.status, 413);
    assert_eq!(res.json()["error"], "invalid_client_metadata");
}

#[tokio::test]
async fn private_use_schemes_and_redirect_hosts_follow_operator_policy() {
    let app = app_with(|c| {
        c.registration.redirect.allow_private_use_schemes = false;
        c.registration.redirect.allowed_hosts = vec!["claude.ai".into()];
    })
    .await;
    let cursor = "cursor://anysphere.cursor-mcp/oauth/callback";
    refused(
        &app,
        json!({ "redirect_uris": [cursor], "token_endpoint_auth_method": "none" }),
        "invalid_redirect_uri",
        cursor,
    )
    .await;
    let other = "https://chatgpt.com/connector_platform_oauth_redirect";
    refused(
        &app,
        json!({ "redirect_uris": [other], "token_endpoint_auth_method": "none" }),
        "invalid_redirect_uri",
        other,
    )
    .await;
    registers(
        &app,
        json!({ "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"], "token_endpoint_auth_method": "none" }),
    )
    .await;
}

#[tokio::test]
async fn closed_registration_is_refused_and_not_advertised() {
    let app = app_with(|c| c.registration.enabled = false).await;
    let res = app
        .post_json("/register", &json!({ "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "none" }))
        .await;
    assert_eq!(res.status, 403);
    assert_eq!(res.json()["error"], "access_denied");
    let metadata = app
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert!(metadata.get("registration_endpoint").is_none());

    let open = TestApp::sqlite().await;
    let metadata = open
        .get("/.well-known/oauth-authorization-server")
        .await
        .json();
    assert_eq!(
        metadata["registration_endpoint"],
        "https://mcp.example.com/register"
    );
}

#[tokio::test]
async fn registrations_are_rate_limited_per_ip_with_a_clear_429() {
    let app =
        app_with(|c| c.registration.rate_limit_per_hour = std::num::NonZeroU32::new(2).expect("2"))
            .await;
    let body =
        json!({ "redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "none" });
    assert_eq!(app.post_json("/register", &body).await.status, 201);
    assert_eq!(app.post_json("/register", &body).await.status, 201);
    let res = app.post_json("/register", &body).await;
    assert_eq!(res.status, 429);
    let retry: u64 = res
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(res.json()["error"], "rate_limited");
    assert_eq!(app.state.store.clients().await.expect("list").len(), 2);
}

/// Registrations and refusals are audited, with the client IP and never a secret.
#[tokio::test]
async fn registrations_and_refusals_are_audited() {
    let app = TestApp::sqlite().await;
    let doc = registers(
        &app,
        json!({ "redirect_uris": ["https://app.example.com/cb"], "token_endpoint_auth_method": "client_secret_post", "client_name": "Audited" }),
    )
    .await;
    refused(
        &app,
        json!({ "redirect_uris": ["javascript:x"] }),
        "invalid_redirect_uri",
        "javascript:x",
    )
    .await;
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 10)
        .await
        .expect("audit");
    let refusal = &events[0].event;
    assert_eq!(refusal.kind, "client.registration_refused");
    assert_eq!(refusal.ip.as_deref(), Some("192.0.2.10"));
    let registered = &events[1].event;
    assert_eq!(registered.kind, "client.registered");
    assert_eq!(registered.client_id.as_deref(), doc["client_id"].as_str());
    assert_eq!(
        registered.detail["redirect_hosts"],
        json!(["app.example.com"])
    );
    let secret = doc["client_secret"].as_str().expect("secret");
    assert!(
        !events
            .iter()
            .any(|e| e.event.detail.to_string().contains(secret))
    );
}

/// Claude registers a new client on every connection: registrations that never completed a
/// sign-in are deleted after `unused_client_ttl`, each visibly in the audit log; used and
/// operator-registered clients stay.
#[tokio::test]
async fn never_used_registrations_expire_and_the_cleanup_is_audited() {
    let app = TestApp::sqlite().await;
    let body = json!({ "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"], "token_endpoint_auth_method": "none" });
    let unused = registers(&app, body.clone()).await["client_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let used = registers(&app, body).await["client_id"]
        .as_str()
        .expect("id")
        .to_owned();
    app.state
        .store
        .touch_client(&used, app.clock.now())
        .await
        .expect("touch");

    app.clock.advance(time::Duration::hours(23));
    assert_eq!(
        gatehouse::oauth::register::expire_unused_clients(&app.state)
            .await
            .expect("expire"),
        0
    );
    app.clock.advance(time::Duration::hours(2));
    assert_eq!(
        gatehouse::oauth::register::expire_unused_clients(&app.state)
            .await
            .expect("expire"),
        1
    );

    assert!(
        app.state
            .store
            .client(&unused)
            .await
            .expect("store")
            .is_none()
    );
    assert!(
        app.state
            .store
            .client(&used)
            .await
            .expect("store")
            .is_some()
    );
    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 1)
        .await
        .expect("audit");
    assert_eq!(events[0].event.kind, "client.expired");
    assert_eq!(events[0].event.client_id.as_deref(), Some(unused.as_str()));
}

#[tokio::test]
async fn browser_clients_can_register_cross_origin() {
    let app = TestApp::sqlite().await;
    let res = app
        .send(
            request("OPTIONS", "/register")
                .header("origin", "http://localhost:6274")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("access-control-allow-origin"), Some("*"));
    assert!(
        res.header("access-control-allow-methods")
            .unwrap_or_default()
            .contains("POST")
    );
}
