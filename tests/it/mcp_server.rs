//! The MCP resource server (RFC 6750 challenges, RFC 8707 audiences, MCP Streamable HTTP
//! transport): a real MCP session behind the bearer layer. The end-to-end test is an independent
//! client that starts from a bare 401 and discovers everything itself; the rest reproduces the
//! failures seen in the field (a 200 where a 401 was needed, an audience mismatch, a 429 that
//! looks like an invalid token, sessions across a refresh).

use crate::support::{ISSUER, TestApp, oauth_http, request};
use axum::body::Body;
use gatehouse::clock::Clock;
use oauth2::basic::BasicClient;
use oauth2::{ClientId, TokenResponse as _, TokenUrl};
use serde_json::{Value, json};

use crate::support::mcp::{app_with, authorize, call, initialize, mcp, message, stateless};
use crate::support::{CALLBACK, PASSWORD};
const HOST: &str = "mcp.example.com";

/// A parameter of a `WWW-Authenticate: Bearer` challenge, read the way the SDKs read it.
fn challenge_param(header: &str, name: &str) -> Option<String> {
    let start = header.find(&format!("{name}=\""))? + name.len() + 2;
    let end = header[start..].find('"')? + start;
    Some(header[start..end].to_owned())
}

/// Discovery from a 401, registration, sign-in, tokens, initialize, tools, a 403 step-up and
/// re-authorization, as an MCP client does it (RFC 9728 and RFC 8414 discovery).
#[tokio::test]
async fn an_independent_client_discovers_signs_in_steps_up_and_calls_tools() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;

    // 1. A bare request: 401 and where to look.
    let res = mcp(&app, None, None, "2025-06-18", initialize("2025-06-18")).await;
    assert_eq!(res.status, 401);
    let header = res
        .header("www-authenticate")
        .expect("challenge")
        .to_owned();
    let prm_url = challenge_param(&header, "resource_metadata").expect("resource_metadata");
    let first_scope = challenge_param(&header, "scope").expect("scope");
    let prm = app
        .get(prm_url.strip_prefix(ISSUER).expect("same origin"))
        .await
        .json();
    let resource = prm["resource"].as_str().expect("resource").to_owned();
    assert_eq!(resource, format!("{ISSUER}/mcp"));
    let issuer = prm["authorization_servers"][0]
        .as_str()
        .expect("as")
        .to_owned();
    let metadata = app
        .get(&format!(
            "{}/.well-known/oauth-authorization-server",
            issuer.strip_prefix(ISSUER).unwrap_or("")
        ))
        .await
        .json();
    assert_eq!(metadata["issuer"], issuer.as_str());

    // 2. Registration, as the TS SDK does it.
    let registration = metadata["registration_endpoint"]
        .as_str()
        .expect("dcr")
        .strip_prefix(ISSUER)
        .expect("path")
        .to_owned();
    let client = app
        .post_json(&registration, &json!({ "client_name": "SDK client", "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "grant_types": ["authorization_code", "refresh_token"], "application_type": "web" }))
        .await
        .json();
    let client_id = client["client_id"].as_str().expect("client_id").to_owned();

    // 3. Sign-in and tokens with the scope the challenge named.
    let tokens = authorize(&app, &client_id, "alice", &first_scope, &resource).await;
    let token = tokens.access_token().secret().clone();

    // 4. MCP.
    let res = mcp(
        &app,
        Some(&token),
        None,
        "2025-06-18",
        initialize("2025-06-18"),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    // Stateless by default: no session, a plain JSON answer.
    assert_eq!(res.header("mcp-session-id"), None);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let session: Option<String> = None;
    let session = session.as_deref();
    assert_eq!(message(&res)["result"]["protocolVersion"], "2025-06-18");
    let res = mcp(
        &app,
        Some(&token),
        session,
        "2025-06-18",
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    )
    .await;
    assert_eq!(res.status, 202);
    let list = message(
        &mcp(
            &app,
            Some(&token),
            session,
            "2025-06-18",
            json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/list" }),
        )
        .await,
    );
    let names: Vec<_> = list["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["whoami"], "only what this token may call");
    let whoami = message(
        &mcp(
            &app,
            Some(&token),
            session,
            "2025-06-18",
            call(3, "whoami", json!({})),
        )
        .await,
    );
    let text = whoami["result"]["content"][0]["text"]
        .as_str()
        .expect("text");
    let me: Value = serde_json::from_str(text).expect("json");
    assert_eq!(me["username"], "alice");
    assert_eq!(me["client_id"], client_id.as_str());

    // 5. A tool that needs more: 403 naming every scope the call needs.
    let res = mcp(
        &app,
        Some(&token),
        session,
        "2025-06-18",
        call(4, "get_activity_log", json!({})),
    )
    .await;
    assert_eq!(res.status, 403);
    let header = res
        .header("www-authenticate")
        .expect("challenge")
        .to_owned();
    assert!(
        header.starts_with("Bearer error=\"insufficient_scope\""),
        "{header}"
    );
    let needed = challenge_param(&header, "scope").expect("scope");
    assert_eq!(needed, "mcp activity:read");
    assert_eq!(res.json()["error"], "insufficient_scope");

    // 6. Step up with exactly those scopes, and succeed.
    let stepped = authorize(&app, &client_id, "alice", &needed, &resource).await;
    let token = stepped.access_token().secret().clone();
    let res = mcp(
        &app,
        Some(&token),
        session,
        "2025-06-18",
        call(5, "get_activity_log", json!({ "limit": 5 })),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let log: Value = serde_json::from_str(
        message(&res)["result"]["content"][0]["text"]
            .as_str()
            .expect("text"),
    )
    .expect("json");
    let entries = log["entries"].as_array().expect("entries");
    assert!(!entries.is_empty() && entries.len() <= 5);
    assert!(
        entries.iter().all(|e| e["subject"] == "u_alice"),
        "only the caller's own entries"
    );
}

/// Every protocol version current clients send.
#[tokio::test]
async fn initialize_works_with_every_current_protocol_version() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let token = authorize(&app, &client_id, "alice", "mcp", &format!("{ISSUER}/mcp"))
        .await
        .access_token()
        .secret()
        .clone();
    for version in ["2025-06-18", "2025-11-25"] {
        let res = mcp(&app, Some(&token), None, version, initialize(version)).await;
        assert_eq!(res.status, 200, "{version}: {}", res.text());
        assert_eq!(message(&res)["result"]["protocolVersion"], version);
    }
    // 2026-07-28 has no initialize handshake: server/discover, then stateless calls.
    let discover = stateless(json!({ "jsonrpc": "2.0", "id": 8, "method": "server/discover" }));
    let res = mcp(&app, Some(&token), None, "2026-07-28", discover).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let found = message(&res);
    assert!(found["result"].is_object(), "{found}");
    let res = mcp(
        &app,
        Some(&token),
        None,
        "2026-07-28",
        stateless(call(9, "whoami", json!({}))),
    )
    .await;
    assert_eq!(
        res.status,
        200,
        "2026-07-28 is stateless: a call needs no session: {}",
        res.text()
    );
    assert!(res.header("mcp-session-id").is_none());
    assert_eq!(message(&res)["result"]["isError"], false);
}

/// Tokens a resource server must refuse, each with 401 invalid_token (RFC 6750 §3.1).
#[tokio::test]
async fn every_bad_token_is_a_401_invalid_token() {
    // A dozen bad tokens from one address: more than the default unauthenticated budget.
    let app = app_with(|c| c.mcp.rate_limit_unauthenticated = 100).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let good = authorize(&app, &client_id, "alice", "mcp", &format!("{ISSUER}/mcp"))
        .await
        .access_token()
        .secret()
        .clone();
    let (claims, kid) = {
        let (payload, header) = app.state.keys.snapshot().verify_jwt(&good).expect("valid");
        (
            payload.claims_set().clone(),
            header.key_id().expect("kid").to_owned(),
        )
    };
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let with = |changes: Value| {
        let mut c = claims.clone();
        for (k, v) in changes.as_object().expect("object") {
            c.insert(k.clone(), v.clone());
        }
        josekit::jwt::JwtPayload::from_map(c).expect("payload")
    };
    let keys = app.state.keys.snapshot();
    let now = app.clock.now().unix_timestamp();
    // alg none.
    let none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "typ": "at+jwt", "kid": kid })),
        b64(&Value::Object(claims.clone()))
    );
    // HS256 keyed with the public key (algorithm confusion).
    let public = serde_json::to_vec(&keys.jwks()["keys"][0]).expect("jwk");
    let hmac = josekit::jws::HS256
        .signer_from_bytes(&public)
        .expect("hmac");
    let mut header = josekit::jws::JwsHeader::new();
    header.set_token_type("at+jwt");
    header.set_key_id(&kid);
    let hs256 = josekit::jwt::encode_with_signer(&with(json!({})), &header, &hmac).expect("hs256");
    // Another key, unknown kid.
    let stranger =
        gatehouse::keys::generate(gatehouse::domain::SigningAlgorithm::ES256).expect("key");
    let signer = josekit::jws::ES256
        .signer_from_jwk(&stranger)
        .expect("signer");
    let mut header = josekit::jws::JwsHeader::new();
    header.set_token_type("at+jwt");
    header.set_key_id("unknown-kid");
    let unknown_kid =
        josekit::jwt::encode_with_signer(&with(json!({})), &header, &signer).expect("sign");
    // Our key, but wrong claims or type.
    let expired = keys
        .sign_jwt(
            "at+jwt",
            &with(json!({ "exp": now - 3600, "iat": now - 7200, "nbf": now - 7200 })),
        )
        .expect("sign");
    let wrong_aud = keys
        .sign_jwt(
            "at+jwt",
            &with(json!({ "aud": "https://elsewhere.example/mcp" })),
        )
        .expect("sign");
    let wrong_iss = keys
        .sign_jwt("at+jwt", &with(json!({ "iss": "https://evil.example" })))
        .expect("sign");
    let id_token = keys.sign_jwt("JWT", &with(json!({}))).expect("sign");
    let future = keys
        .sign_jwt("at+jwt", &with(json!({ "nbf": now + 3600 })))
        .expect("sign");
    let mut tampered = good.clone();
    tampered.insert(tampered.len() - 5, 'A');

    let cases = [
        ("alg none", none),
        ("HS256 with the public key", hs256),
        ("unknown kid", unknown_kid),
        ("expired", expired),
        ("wrong audience", wrong_aud),
        ("wrong issuer", wrong_iss),
        ("typ JWT", id_token),
        ("not yet valid", future),
        ("tampered", tampered),
        ("garbage", "abc.def.ghi".to_owned()),
    ];
    for (what, token) in cases {
        let res = mcp(
            &app,
            Some(&token),
            None,
            "2025-06-18",
            initialize("2025-06-18"),
        )
        .await;
        assert_eq!(res.status, 401, "{what}");
        let header = res.header("www-authenticate").expect("challenge");
        assert!(
            header.starts_with("Bearer error=\"invalid_token\", error_description=\""),
            "{what}: {header}"
        );
        assert!(header.contains(
            "resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        ));
        assert_eq!(res.json()["error"], "invalid_token", "{what}");
    }
    // The good one works; then, revoked, it fails on the very next call.
    assert_eq!(
        mcp(
            &app,
            Some(&good),
            None,
            "2025-06-18",
            initialize("2025-06-18")
        )
        .await
        .status,
        200
    );
    let gid = claims["grant_id"].as_str().expect("gid");
    app.revoke_grant(gid).await;
    let res = mcp(
        &app,
        Some(&good),
        None,
        "2025-06-18",
        initialize("2025-06-18"),
    )
    .await;
    assert_eq!(res.status, 401);
    assert!(
        res.header("www-authenticate")
            .unwrap_or_default()
            .contains("revoked")
    );
    // A token in the query string is never read.
    let res = app
        .send(
            request("POST", &format!("/mcp?access_token={good}"))
                .header("host", HOST)
                .header("content-type", "application/json")
                .body(Body::from(initialize("2025-06-18").to_string()))
                .expect("req"),
        )
        .await;
    assert_eq!(res.status, 401);
    assert_eq!(res.json()["error"], "unauthorized");
}

/// 429 says "rate limited", with Retry-After, never invalid_token; every answer carries the
/// rate-limit headers.
#[tokio::test]
async fn rate_limits_answer_429_with_headers() {
    let app = app_with(|c| {
        c.mcp.rate_limit_per_token = 3;
        c.mcp.rate_limit_unauthenticated = 2;
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let tokens = authorize(&app, &client_id, "alice", "mcp", &format!("{ISSUER}/mcp")).await;
    let token = tokens.access_token().secret().clone();
    for remaining in ["2", "1", "0"] {
        let res = mcp(
            &app,
            Some(&token),
            None,
            "2026-07-28",
            stateless(call(1, "whoami", json!({}))),
        )
        .await;
        assert_eq!(res.status, 200);
        assert_eq!(res.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(res.header("x-ratelimit-remaining"), Some(remaining));
    }
    let res = mcp(
        &app,
        Some(&token),
        None,
        "2026-07-28",
        stateless(call(1, "whoami", json!({}))),
    )
    .await;
    assert_eq!(res.status, 429);
    assert!(
        res.header("retry-after")
            .is_some_and(|s| s.parse::<u64>().is_ok())
    );
    assert!(
        res.header("www-authenticate").is_none(),
        "a 429 must not look like a token problem"
    );
    assert_eq!(res.json()["error"], "rate_limited");

    // Security review: a refresh minted a token with a budget of its own. The budget is the
    // grant's: the refreshed token is refused too.
    let refresh = tokens.refresh_token().expect("refresh token").secret();
    let refreshed = crate::support::oauth::refresh(&app, &client_id, refresh).await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text());
    let fresh = refreshed.json()["access_token"]
        .as_str()
        .expect("at")
        .to_owned();
    assert_ne!(fresh, token);
    let res = mcp(
        &app,
        Some(&fresh),
        None,
        "2026-07-28",
        stateless(call(1, "whoami", json!({}))),
    )
    .await;
    assert_eq!(res.status, 429, "{}", res.text());

    // Without a token: per client address.
    for _ in 0..2 {
        assert_eq!(
            mcp(&app, None, None, "2025-06-18", initialize("2025-06-18"))
                .await
                .status,
            401
        );
    }
    let res = mcp(&app, None, None, "2025-06-18", initialize("2025-06-18")).await;
    assert_eq!(res.status, 429);
    assert_eq!(res.header("x-ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn configured_origins_are_enforced_and_server_clients_pass() {
    let app = app_with(|c| c.allowed_origins = vec!["https://app.example.com".into()]).await;
    let with_origin = |origin: &'static str| {
        request("POST", "/mcp")
            .header("host", HOST)
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(Body::from(initialize("2025-06-18").to_string()))
            .expect("req")
    };
    let res = app.send(with_origin("https://evil.example")).await;
    assert_eq!(res.status, 403, "DNS-rebinding defence");
    assert_eq!(res.json()["error"], "forbidden");
    assert_eq!(
        app.send(with_origin("https://app.example.com"))
            .await
            .status,
        401,
        "allowed origin reaches authentication"
    );
    assert_eq!(
        mcp(&app, None, None, "2025-06-18", initialize("2025-06-18"))
            .await
            .status,
        401,
        "no Origin: a server-side client"
    );
}

/// Stateful mode: a session survives its owner's refresh; another subject's token cannot use it.
#[tokio::test]
async fn sessions_continue_after_refresh_and_refuse_other_subjects() {
    let app = app_with(|c| c.mcp.session_mode = gatehouse::config::SessionMode::Stateful).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    app.add_user("bob", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let resource = format!("{ISSUER}/mcp");
    let alice = authorize(&app, &client_id, "alice", "mcp", &resource).await;
    let res = mcp(
        &app,
        Some(alice.access_token().secret()),
        None,
        "2025-06-18",
        initialize("2025-06-18"),
    )
    .await;
    let session = res.header("mcp-session-id").expect("session").to_owned();
    mcp(
        &app,
        Some(alice.access_token().secret()),
        Some(&session),
        "2025-06-18",
        json!({ "jsonrpc": "2.0", "method": "notifications/initialized" }),
    )
    .await;

    let refreshed = BasicClient::new(ClientId::new(client_id.clone()))
        .set_token_uri(TokenUrl::new(format!("{ISSUER}/token")).expect("url"))
        .exchange_refresh_token(alice.refresh_token().expect("rt"))
        .request_async(&oauth_http(&app))
        .await
        .expect("refresh");
    let res = mcp(
        &app,
        Some(refreshed.access_token().secret()),
        Some(&session),
        "2025-06-18",
        call(2, "whoami", json!({})),
    )
    .await;
    assert_eq!(
        res.status,
        200,
        "the session continues after a refresh: {}",
        res.text()
    );

    let bob = authorize(&app, &client_id, "bob", "mcp", &resource).await;
    let res = mcp(
        &app,
        Some(bob.access_token().secret()),
        Some(&session),
        "2025-06-18",
        call(3, "whoami", json!({})),
    )
    .await;
    assert_eq!(
        res.status, 404,
        "another subject's token never reaches the session"
    );
    assert!(!res.text().contains("alice"));
}

/// Every tool call is audited with tool, outcome and duration; refusals with their reason.
#[tokio::test]
async fn tool_calls_and_refusals_are_audited() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let token = authorize(&app, &client_id, "alice", "mcp", &format!("{ISSUER}/mcp"))
        .await
        .access_token()
        .secret()
        .clone();
    mcp(
        &app,
        Some(&token),
        None,
        "2026-07-28",
        stateless(call(1, "whoami", json!({}))),
    )
    .await;
    mcp(
        &app,
        Some(&token),
        None,
        "2026-07-28",
        stateless(call(2, "get_activity_log", json!({}))),
    )
    .await;
    mcp(
        &app,
        Some("not-a-token"),
        None,
        "2026-07-28",
        stateless(call(3, "whoami", json!({}))),
    )
    .await;
    // The tool-call event is written after the answer.
    let events = crate::support::eventually("the tool call's audit event", || async {
        let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 100)
            .await
            .expect("audit");
        events
            .iter()
            .any(|e| e.event.kind == "mcp.tool_call")
            .then_some(events)
    })
    .await;
    let call = events
        .iter()
        .find(|e| e.event.kind == "mcp.tool_call")
        .expect("tool call audited");
    assert_eq!(call.event.detail["tool"], "whoami");
    assert_eq!(call.event.detail["outcome"], "success");
    assert!(call.event.detail["duration_ms"].is_number());
    assert_eq!(call.event.subject.as_deref(), Some("u_alice"));
    assert!(call.event.detail["jti"].is_string());
    let refusals: Vec<_> = events
        .iter()
        .filter(|e| e.event.kind == "mcp.refused")
        .map(|e| e.event.detail["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        refusals.iter().any(|r| r == "insufficient scope"),
        "{refusals:?}"
    );
    assert!(
        refusals.iter().any(|r| r.contains("signature")),
        "{refusals:?}"
    );
    for e in &events {
        assert!(
            !e.event.detail.to_string().contains(&token),
            "no token in the audit log"
        );
    }
}

/// A broader scope implies a narrower one where the catalog says so.
#[tokio::test]
async fn broader_scopes_imply_narrower_ones() {
    let app = app_with(|c| {
        c.scopes.push(gatehouse::config::ScopeEntry {
            name: gatehouse::domain::ScopeToken::parse("admin:all").expect("scope"),
            description: "Everything".into(),
            implies: vec!["mcp".into(), "activity:read".into()],
        });
        c.roles.insert(
            "user".into(),
            vec![gatehouse::domain::ScopeToken::parse("admin:all").expect("scope")],
        );
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let token = authorize(
        &app,
        &client_id,
        "alice",
        "admin:all",
        &format!("{ISSUER}/mcp"),
    )
    .await
    .access_token()
    .secret()
    .clone();
    let res = mcp(
        &app,
        Some(&token),
        None,
        "2026-07-28",
        stateless(call(1, "get_activity_log", json!({}))),
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
}

#[tokio::test]
async fn annotate_mode_lists_every_tool_with_what_it_needs() {
    let app =
        app_with(|c| c.mcp.unauthorized_tools = gatehouse::config::UnauthorizedTools::Annotate)
            .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let token = authorize(&app, &client_id, "alice", "mcp", &format!("{ISSUER}/mcp"))
        .await
        .access_token()
        .secret()
        .clone();
    let list = message(
        &mcp(
            &app,
            Some(&token),
            None,
            "2026-07-28",
            stateless(json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" })),
        )
        .await,
    );
    let tools = list["result"]["tools"].as_array().expect("tools");
    assert_eq!(tools.len(), 2);
    let gated = tools
        .iter()
        .find(|t| t["name"] == "get_activity_log")
        .expect("listed");
    assert!(
        gated["description"]
            .as_str()
            .unwrap_or("")
            .contains("activity:read"),
        "{gated}"
    );
}
