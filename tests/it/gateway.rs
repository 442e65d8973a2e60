//! Gateway mode: the operator's MCP servers behind `/mcp`. Against the reference server nobody
//! here wrote (`@modelcontextprotocol/server-everything`, over Streamable HTTP and over stdio)
//! and a recorder that keeps what an upstream receives. Tokens come from the whole OAuth flow
//! through the `oauth2` crate.

use std::collections::BTreeSet;

use gatehouse::clock::Clock;
use gatehouse::config::{Config, ToolAccessConfig, Upstream, UpstreamConfig};
use gatehouse::domain::ScopeToken;
use oauth2::TokenResponse as _;
use serde_json::{Value, json};

use crate::support::mcp::{access_token, app_with, authorize, call, mcp, message};
use crate::support::upstream::{Everything, RECORDER_SESSION, Recorder, everything_js};
use crate::support::{
    CALLBACK, ISSUER, PASSWORD, TestApp, eventually, jwt_part, serve_on_loopback,
};

const PROTOCOL: &str = "2025-06-18";

fn upstream(entry: Value) -> Upstream {
    let raw: UpstreamConfig = serde_json::from_value(entry).expect("upstream entry");
    Upstream::check(&raw, &format!("{ISSUER}/mcp"), &|_| None).expect("valid upstream")
}

fn stdio_everything(name: &str) -> Upstream {
    upstream(json!({
        "name": name, "transport": "stdio", "command": "node",
        "args": [everything_js(), "stdio"], "env": { "FIXTURE_SETTING": "on" }
    }))
}

fn role(config: &mut Config, name: &str, allow: &[&str], deny: &[&str]) {
    config
        .roles
        .insert(name.into(), vec![ScopeToken::parse("mcp").expect("scope")]);
    let strings = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect();
    config.mcp.tool_access.insert(
        name.into(),
        ToolAccessConfig {
            allow: strings(allow),
            deny: strings(deny),
        },
    );
}

/// An access token of `user` for a client of its own, from the whole flow.
async fn token_of(app: &TestApp, user: &str) -> String {
    access_token(app, user).await
}

/// An upstream on Streamable HTTP at `url`, with the default identity (a minted token).
fn http_upstream(name: &str, url: &str) -> Upstream {
    upstream(json!({ "name": name, "transport": "streamable_http", "url": url }))
}

/// A loopback URL nothing listens on.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    format!("http://{}/mcp", port.local_addr().expect("addr"))
}

async fn rpc(app: &TestApp, token: &str, body: Value) -> Value {
    let res = mcp(app, Some(token), None, PROTOCOL, body).await;
    assert_eq!(res.status, 200, "{}", res.text());
    message(&res)
}

async fn tool_names(app: &TestApp, token: &str) -> BTreeSet<String> {
    let list = rpc(
        app,
        token,
        json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/list" }),
    )
    .await;
    list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|t| t["name"].as_str().expect("name").to_owned())
        .collect()
}

fn text_of(answer: &Value) -> String {
    answer["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {answer}"))
        .to_owned()
}

#[tokio::test]
async fn roles_decide_what_each_user_sees_and_calls_and_refusals_look_alike() {
    let everything = Everything::start().await;
    let url = everything.url.clone();
    let app = app_with(move |c| {
        c.upstreams = vec![http_upstream("everything", &url)];
        role(
            c,
            "user",
            &["whoami", "everything__echo", "everything__get-sum"],
            &[],
        );
        role(c, "analyst", &["everything__*"], &["everything__get-env"]);
        role(c, "contractor", &[], &["*__get-sum"]);
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    app.add_user("bob", PASSWORD, &["analyst"]).await;
    app.add_user("dave", PASSWORD, &["analyst", "contractor"])
        .await;
    let alice = token_of(&app, "alice").await;
    let bob = token_of(&app, "bob").await;
    let dave = token_of(&app, "dave").await;

    let seen_by_alice = tool_names(&app, &alice).await;
    assert_eq!(
        seen_by_alice,
        ["everything__echo", "everything__get-sum", "whoami"]
            .map(str::to_owned)
            .into()
    );
    let seen_by_bob = tool_names(&app, &bob).await;
    assert!(seen_by_bob.contains("everything__trigger-long-running-operation"));
    assert!(seen_by_bob.contains("everything__get-sum"));
    assert!(!seen_by_bob.contains("everything__get-env"), "denied");
    assert!(
        !seen_by_bob.contains("whoami"),
        "no role of bob's allows it"
    );
    // Deny wins over any allow: dave's analyst role allows get-sum, his contractor role denies it.
    let seen_by_dave = tool_names(&app, &dave).await;
    assert!(!seen_by_dave.contains("everything__get-sum"));
    assert!(seen_by_dave.contains("everything__echo"));

    // What each may call, runs at the upstream.
    let echo = rpc(
        &app,
        &alice,
        call(2, "everything__echo", json!({ "message": "hello" })),
    )
    .await;
    assert_eq!(text_of(&echo), "Echo: hello");
    let sum = rpc(
        &app,
        &bob,
        call(3, "everything__get-sum", json!({ "a": 2, "b": 3 })),
    )
    .await;
    assert!(text_of(&sum).contains('5'), "{sum}");

    // Hidden, denied and nonexistent tools get one and the same answer.
    let hidden = rpc(
        &app,
        &alice,
        call(4, "everything__get-tiny-image", json!({})),
    )
    .await;
    let denied = rpc(
        &app,
        &dave,
        call(4, "everything__get-sum", json!({ "a": 1, "b": 1 })),
    )
    .await;
    let missing = rpc(&app, &bob, call(4, "everything__no-such-tool", json!({}))).await;
    let unknown_prefix = rpc(&app, &bob, call(4, "nowhere__echo", json!({}))).await;
    assert!(hidden.get("error").is_some(), "{hidden}");
    assert_eq!(hidden, denied);
    assert_eq!(hidden, missing);
    assert_eq!(hidden, unknown_prefix);

    // Every call is audited, refusals too, with the upstream and the rule.
    let audited = |detail: &Value, tool: &str, outcome: &str| {
        detail["tool"] == tool && detail["outcome"] == outcome
    };
    eventually("the calls' audit events", || {
        let app = &app;
        async move {
            let calls = tool_calls_audited(app).await;
            // Arguments are not kept unless the operator asks for them.
            let echo = calls.iter().any(|d| {
                audited(d, "everything__echo", "success")
                    && d["upstream"] == "everything"
                    && d["upstream_tool"] == "echo"
                    && d.get("arguments").is_none()
            });
            let refused = calls.iter().any(|d| {
                audited(d, "everything__get-sum", "refused")
                    && d["rule"] == "role contractor denies *__get-sum"
            });
            (echo && refused).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn the_upstream_gets_a_token_minted_for_it_and_nothing_of_the_client() {
    let recorder = Recorder::start().await;
    let url = recorder.url.clone();
    let app = app_with(move |c| {
        c.upstreams = vec![upstream(json!({
            "name": "crm", "transport": "streamable_http", "url": url,
            "audience": "https://crm.internal/mcp"
        }))];
    })
    .await;
    let alice = app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    let token = authorize(&app, &client_id, "alice", "mcp", &format!("{ISSUER}/mcp"))
        .await
        .access_token()
        .secret()
        .clone();

    // The client sends a cookie and a session id of its own; neither may travel on.
    let res = app
        .send(
            crate::support::request("POST", "/mcp")
                .header("host", "mcp.example.com")
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", PROTOCOL)
                .header("authorization", format!("Bearer {token}"))
                .header("cookie", "secret-cookie=1")
                .body(axum::body::Body::from(
                    call(1, "crm__record", json!({})).to_string(),
                ))
                .expect("request"),
        )
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(text_of(&message(&res)), "recorded");

    let seen = recorder.headers();
    assert!(
        seen.len() >= 3,
        "initialize, initialized, the calls: {seen:?}"
    );
    let jwks = app.get("/jwks.json").await.json();
    for headers in &seen {
        let all = format!("{headers:?}");
        assert!(
            !all.contains(&token),
            "the client's token reached the upstream"
        );
        assert!(headers.get("cookie").is_none());
        if let Some(session) = headers.get("mcp-session-id") {
            assert_eq!(session, RECORDER_SESSION, "only the upstream's own session");
        }
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .expect("a token on every request");
        let header = jwt_part(bearer, 0);
        assert_eq!(header["typ"], "at+jwt");
        let key = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .expect("signed with a published key");
        let jwk = josekit::jwk::Jwk::from_bytes(key.to_string().as_bytes()).expect("jwk");
        let verifier = josekit::jws::ES256
            .verifier_from_jwk(&jwk)
            .expect("verifier");
        let (claims, _) =
            josekit::jwt::decode_with_verifier(bearer, &verifier).expect("signature verifies");
        assert_eq!(claims.issuer(), Some(ISSUER));
        assert_eq!(claims.audience(), Some(vec!["https://crm.internal/mcp"]));
        assert_eq!(claims.subject(), Some(alice.id.as_str()));
        assert_eq!(claims.claim("client_id"), Some(&json!(client_id)));
        assert_eq!(claims.claim("roles"), Some(&json!(["user"])));
        let now = app.clock.now().unix_timestamp();
        let exp = claims.claim("exp").and_then(Value::as_i64).expect("exp");
        assert!(exp > now && exp <= now + 300, "short-lived: {exp} vs {now}");
    }
}

#[tokio::test]
async fn each_person_gets_their_own_stdio_process_with_their_identity_only() {
    let app = app_with(|c| c.upstreams = vec![stdio_everything("local")]).await;
    let alice = app.add_user("alice", PASSWORD, &["user"]).await;
    let bob = app.add_user("bob", PASSWORD, &["user"]).await;
    let alice_token = token_of(&app, "alice").await;
    let bob_token = token_of(&app, "bob").await;

    let env_of = |answer: &Value| -> serde_json::Map<String, Value> {
        serde_json::from_str(&text_of(answer)).expect("get-env answers JSON")
    };
    let for_alice = env_of(&rpc(&app, &alice_token, call(1, "local__get-env", json!({}))).await);
    let for_bob = env_of(&rpc(&app, &bob_token, call(1, "local__get-env", json!({}))).await);
    assert_eq!(for_alice["GATEHOUSE_USER_ID"], alice.id.as_str());
    assert_eq!(for_alice["GATEHOUSE_USERNAME"], "alice");
    assert_eq!(for_bob["GATEHOUSE_USER_ID"], bob.id.as_str());
    assert_eq!(for_bob["GATEHOUSE_ROLES"], "user");
    // A cleared environment: what the configuration gives, PATH and HOME, the identity.
    let keys: BTreeSet<&str> = for_alice.keys().map(String::as_str).collect();
    let allowed: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "FIXTURE_SETTING",
        "GATEHOUSE_USER_ID",
        "GATEHOUSE_USERNAME",
        "GATEHOUSE_ROLES",
    ]
    .into();
    assert!(keys.is_subset(&allowed), "{keys:?}");

    let status = app.state.gateway.status();
    let pids: BTreeSet<u32> = status[0].sessions.iter().filter_map(|s| s.pid).collect();
    assert_eq!(pids.len(), 2, "{status:?}");
}

#[tokio::test]
async fn a_killed_upstream_is_an_error_naming_it_and_the_next_call_starts_it_again() {
    let app = app_with(|c| c.upstreams = vec![stdio_everything("local")]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = token_of(&app, "alice").await;
    rpc(
        &app,
        &token,
        call(1, "local__echo", json!({ "message": "up" })),
    )
    .await;
    let pid = app.state.gateway.status()[0].sessions[0]
        .pid
        .expect("a process");

    // A long call, and the process killed under it.
    let long = {
        let body = call(
            2,
            "local__trigger-long-running-operation",
            json!({ "duration": 10, "steps": 10 }),
        );
        let app = &app;
        let token = token.clone();
        async move { mcp(app, Some(&token), None, PROTOCOL, body).await }
    };
    let kill = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let status = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    let (res, ()) = tokio::join!(long, kill);
    assert_eq!(res.status, 200);
    let answer = message(&res);
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"local\""),
        "{answer}"
    );

    // The next call starts a new process.
    let again = rpc(
        &app,
        &token,
        call(3, "local__echo", json!({ "message": "back" })),
    )
    .await;
    assert_eq!(text_of(&again), "Echo: back");
    let new_pid = app.state.gateway.status()[0].sessions[0].pid;
    assert_ne!(new_pid, Some(pid));
}

#[tokio::test]
async fn revocation_reaches_upstream_tools_as_it_reaches_built_in_ones() {
    let everything = Everything::start().await;
    let url = everything.url.clone();
    let app = app_with(move |c| {
        c.upstreams = vec![http_upstream("everything", &url)];
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = token_of(&app, "alice").await;
    let echo = call(1, "everything__echo", json!({ "message": "x" }));
    assert_eq!(text_of(&rpc(&app, &token, echo.clone()).await), "Echo: x");

    let claims = jwt_part(&token, 1);
    let gid = claims["grant_id"].as_str().expect("gid");
    app.revoke_grant(gid).await;
    let res = mcp(&app, Some(&token), None, PROTOCOL, echo).await;
    assert_eq!(res.status, 401);
}

#[tokio::test]
async fn progress_from_a_long_running_upstream_tool_arrives_before_its_result() {
    let app = app_with(|c| c.upstreams = vec![stdio_everything("local")]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = token_of(&app, "alice").await;
    let addr = serve_on_loopback(gatehouse::app(app.state.clone())).await;

    // Four steps over two seconds, with a progress token of the client's choosing.
    let mut body = call(
        7,
        "local__trigger-long-running-operation",
        json!({ "duration": 2, "steps": 4 }),
    );
    body["params"]["_meta"] = json!({ "progressToken": "client-token-1" });
    let mut response = post_over_socket(addr, &token, body).await.expect("send");
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "an event stream, so that progress can go out before the result"
    );

    // Each message with the time it arrived.
    let started = std::time::Instant::now();
    let mut pending = String::new();
    let mut arrived: Vec<(std::time::Duration, Value)> = Vec::new();
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if let Ok(message) = serde_json::from_str::<Value>(data) {
                    arrived.push((started.elapsed(), message));
                }
            }
        }
    }
    let progress: Vec<&(std::time::Duration, Value)> = arrived
        .iter()
        .filter(|(_, m)| m["method"] == "notifications/progress")
        .collect();
    let (result_at, result) = arrived.last().expect("messages");
    assert_eq!(result["id"], 7, "the result comes last: {arrived:?}");
    assert!(result["result"]["content"].is_array(), "{result}");
    assert!(progress.len() >= 3, "{arrived:?}");
    for (_, p) in &progress {
        assert_eq!(p["params"]["progressToken"], "client-token-1", "{p}");
    }
    // Streamed, not buffered: the first step was out long before the last (steps are 500 ms
    // apart at the upstream).
    let (first_at, _) = progress[0];
    assert!(
        *result_at >= *first_at + std::time::Duration::from_millis(1000),
        "first progress at {first_at:?}, result at {result_at:?}"
    );
}

#[tokio::test]
async fn an_upstream_that_forgot_its_session_is_initialized_again_without_the_client_noticing() {
    let recorder = Recorder::start().await;
    let url = recorder.url.clone();
    let app = app_with(move |c| {
        c.upstreams = vec![http_upstream("crm", &url)];
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = token_of(&app, "alice").await;
    let first = rpc(&app, &token, call(1, "crm__record", json!({}))).await;
    assert_eq!(text_of(&first), "recorded");

    recorder.forget_sessions();
    let again = rpc(&app, &token, call(2, "crm__record", json!({}))).await;
    assert_eq!(text_of(&again), "recorded", "{again}");
    let sessions: BTreeSet<String> = recorder
        .headers()
        .iter()
        .filter_map(|h| h.get("mcp-session-id")?.to_str().ok().map(str::to_owned))
        .collect();
    assert!(
        sessions.contains("recorder-session-2"),
        "a second session was opened: {sessions:?}"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_an_error_naming_it_and_the_others_keep_working() {
    let dead_url = dead_url();
    let recorder = Recorder::start().await;
    let url = recorder.url.clone();
    let app = app_with(move |c| {
        c.upstreams = vec![http_upstream("crm", &url), http_upstream("gone", &dead_url)];
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = token_of(&app, "alice").await;

    // The list is what can be reached.
    let names = tool_names(&app, &token).await;
    assert!(names.contains("crm__record"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("gone__")));
    // A call to the unreachable one is a JSON-RPC error naming it, not a 500.
    let answer = rpc(&app, &token, call(1, "gone__anything", json!({}))).await;
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    assert_eq!(answer["error"]["data"]["upstream"], "gone");
    // Where it lives stays in the log: the client learns only which upstream failed.
    assert!(!answer.to_string().contains("127.0.0.1"), "{answer}");
    let ok = rpc(&app, &token, call(2, "crm__record", json!({}))).await;
    assert_eq!(text_of(&ok), "recorded");
}

#[tokio::test]
async fn prompts_and_resources_are_served_and_decided_on_like_tools() {
    let everything = Everything::start().await;
    let url = everything.url.clone();
    let app = app_with(move |c| {
        c.upstreams = vec![http_upstream("everything", &url)];
        role(
            c,
            "user",
            &["everything__simple-prompt", "everything__features_md"],
            &[],
        );
        role(c, "analyst", &["everything__*"], &[]);
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    app.add_user("bob", PASSWORD, &["analyst"]).await;
    let alice = token_of(&app, "alice").await;
    let bob = token_of(&app, "bob").await;

    // Prompts: listed under advertised names, only those the role allows.
    let listing = |method: &'static str, token: String| {
        let app = &app;
        async move {
            rpc(
                app,
                &token,
                json!({ "jsonrpc": "2.0", "id": 1, "method": method }),
            )
            .await
        }
    };
    let list = |token: String| listing("prompts/list", token);
    let names = |answer: &Value, key: &str, field: &str| -> BTreeSet<String> {
        answer["result"][key]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"))
            .iter()
            .map(|p| p[field].as_str().expect("name").to_owned())
            .collect()
    };
    let for_alice = names(&list(alice.clone()).await, "prompts", "name");
    assert_eq!(for_alice, ["everything__simple-prompt".to_owned()].into());
    let for_bob = names(&list(bob.clone()).await, "prompts", "name");
    assert!(for_bob.contains("everything__args-prompt"), "{for_bob:?}");

    let get = |id: i64, name: &str| {
        json!({ "jsonrpc": "2.0", "id": id, "method": "prompts/get",
                "params": { "name": name, "arguments": { "city": "Paris" } } })
    };
    let prompt = rpc(&app, &alice, get(2, "everything__simple-prompt")).await;
    assert!(prompt["result"]["messages"].is_array(), "{prompt}");
    let hidden = rpc(&app, &alice, get(3, "everything__args-prompt")).await;
    let missing = rpc(&app, &alice, get(3, "everything__no-such-prompt")).await;
    assert!(hidden.get("error").is_some(), "{hidden}");
    assert_eq!(hidden, missing);

    // Resources: their own URIs; decided on as `<upstream>__<name>`.
    let resources = rpc(
        &app,
        &bob,
        json!({ "jsonrpc": "2.0", "id": 4, "method": "resources/list" }),
    )
    .await;
    let uris = names(&resources, "resources", "uri");
    assert!(!uris.is_empty(), "{resources}");
    let listed = resources["result"]["resources"].as_array().expect("list");
    // The decision's name is cleaned like a tool's: `features.md` is `everything__features_md`.
    let text_doc = listed
        .iter()
        .find(|r| r["name"] == "features.md")
        .expect("features.md");
    let other = listed
        .iter()
        .find(|r| r["name"] == "startup.md")
        .expect("startup.md");
    let read = |id: i64, uri: &Value| json!({ "jsonrpc": "2.0", "id": id, "method": "resources/read", "params": { "uri": uri } });
    let content = rpc(&app, &alice, read(5, &text_doc["uri"])).await;
    assert!(content["result"]["contents"].is_array(), "{content}");
    let refused = rpc(&app, &alice, read(6, &other["uri"])).await;
    let unknown = rpc(&app, &alice, read(6, &json!("demo://no/such/thing"))).await;
    assert!(refused.get("error").is_some(), "{refused}");
    assert_eq!(refused, unknown);

    // Resource templates: passed on to whom the rules allow; a URI that only a template names
    // is read at the upstream that has the template, under the same decision.
    let templates = |token: String| listing("resources/templates/list", token);
    let for_bob = names(
        &templates(bob.clone()).await,
        "resourceTemplates",
        "uriTemplate",
    );
    assert!(
        for_bob.contains("demo://resource/dynamic/text/{resourceId}"),
        "{for_bob:?}"
    );
    let for_alice = names(
        &templates(alice.clone()).await,
        "resourceTemplates",
        "uriTemplate",
    );
    assert!(for_alice.is_empty(), "{for_alice:?}");
    let dynamic = json!("demo://resource/dynamic/text/3");
    let content = rpc(&app, &bob, read(8, &dynamic)).await;
    assert!(
        content["result"]["contents"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains('3')),
        "{content}"
    );
    let refused = rpc(&app, &alice, read(6, &dynamic)).await;
    assert_eq!(refused, unknown);
}

#[tokio::test]
async fn key_rotation_and_the_per_token_limit_apply_to_upstream_tools_as_to_built_in_ones() {
    use gatehouse::keys::{RotationPolicy, lifecycle};
    let recorder = Recorder::start().await;
    let url = recorder.url.clone();
    let app = app_with(move |c| {
        c.upstreams = vec![http_upstream("crm", &url)];
        c.mcp.rate_limit_per_token = 3;
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = token_of(&app, "alice").await;
    let first = rpc(&app, &token, call(1, "crm__record", json!({}))).await;
    assert_eq!(text_of(&first), "recorded");
    let old_kid = crate::support::kid_of(&token);

    // An emergency rotation: a new key signs at once; the client's token, signed by the old
    // one, keeps working, and what the upstream receives is signed by the new one.
    let policy = RotationPolicy::from_config(&app.state.config);
    let new_kid = lifecycle::rotate_now(
        &app.state.store,
        app.state.keys.vault(),
        gatehouse::domain::SigningAlgorithm::ES256,
        &policy,
        app.clock.now(),
    )
    .await
    .expect("rotate --now");
    app.state.maintain_keys().await.expect("maintain");
    let second = rpc(&app, &token, call(2, "crm__record", json!({}))).await;
    assert_eq!(text_of(&second), "recorded");
    let minted = recorder
        .headers()
        .last()
        .and_then(|h| h.get("authorization")?.to_str().ok().map(str::to_owned))
        .expect("a token");
    let minted = minted.strip_prefix("Bearer ").expect("bearer");
    assert_eq!(crate::support::kid_of(minted), new_kid);
    assert_ne!(new_kid, old_kid);

    // The per-token budget counts upstream calls like any other request: 429, not a token error.
    let third = rpc(&app, &token, call(3, "crm__record", json!({}))).await;
    assert_eq!(text_of(&third), "recorded");
    let res = mcp(
        &app,
        Some(&token),
        None,
        PROTOCOL,
        call(4, "crm__record", json!({})),
    )
    .await;
    assert_eq!(res.status, 429, "{}", res.text());
    assert!(res.header("retry-after").is_some());
}

#[tokio::test]
async fn the_operator_checks_the_upstreams_from_the_command_line() {
    let recorder = Recorder::start().await;
    let dir = tempfile::TempDir::new().expect("tempdir");
    let config = format!(
        r#"
[mcp.tool_access.user]
allow = ["crm__*"]

[[upstreams]]
name = "crm"
transport = "streamable_http"
url = "{}"
"#,
        recorder.url
    );
    std::fs::write(dir.path().join("gatehouse.toml"), &config).expect("config");
    let run = |args: &[&str]| {
        let mut cmd = crate::support::process::gatehouse(dir.path());
        cmd.args(args);
        async move {
            tokio::task::spawn_blocking(move || cmd.output().expect("run"))
                .await
                .expect("join")
        }
    };

    let list = run(&["upstreams", "list"]).await;
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{out}");
    assert!(out.contains("crm  streamable_http"), "{out}");
    assert!(out.contains("signed_jwt"), "{out}");

    let check = run(&["upstreams", "check"]).await;
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        out.contains("crm: reachable, 3 tools, protocol 2025 (initialize, session)"),
        "{out}"
    );
    assert!(out.contains("crm__record  (callable by: user)"), "{out}");

    // An upstream that cannot be reached fails the check, naming it.
    let dead_url = dead_url();
    std::fs::write(
        dir.path().join("gatehouse.toml"),
        format!(
            "{config}\n[[upstreams]]\nname = \"gone\"\ntransport = \"streamable_http\"\nurl = \"{dead_url}\"\nconnect_timeout = 2\n"
        ),
    )
    .expect("config");
    let check = run(&["upstreams", "check"]).await;
    assert_eq!(check.status.code(), Some(1));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("gone"), "{err}");
    assert!(String::from_utf8_lossy(&check.stdout).contains("gone: NOT REACHABLE"));
}

#[tokio::test]
async fn an_upstream_on_the_2026_protocol_is_detected_once_and_served_without_initialize() {
    let modern = crate::support::upstream::ModernEcho::start().await;
    let url = modern.url.clone();
    let app = app_with(move |c| {
        c.upstreams = vec![http_upstream("modern", &url)];
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    app.add_user("bob", PASSWORD, &["user"]).await;
    let alice = token_of(&app, "alice").await;
    let bob = token_of(&app, "bob").await;
    for (i, token) in [&alice, &bob, &alice].into_iter().enumerate() {
        let id = i64::try_from(i).expect("small");
        let answer = rpc(
            &app,
            token,
            call(id, "modern__echo", json!({ "message": "now" })),
        )
        .await;
        assert_eq!(text_of(&answer), "Echo: now", "{answer}");
    }
    assert_eq!(
        app.state.gateway.status()[0].protocol,
        Some("2026-07-28 (stateless)")
    );
    let methods = modern.methods.lock().expect("lock").clone();
    assert!(!methods.iter().any(|m| m == "initialize"), "{methods:?}");
    // Per caller's session: one `server/discover` (the 2026 protocol's own start) and one
    // listing (a name is resolved against what that caller was shown), then the calls.
    assert_eq!(
        methods,
        [
            "server/discover",
            "tools/list",
            "tools/call",
            "server/discover",
            "tools/list",
            "tools/call",
            "tools/call"
        ]
    );
}

#[tokio::test]
async fn a_client_cancellation_reaches_the_upstream_and_only_the_callers_own_call() {
    let recorder = Recorder::start().await;
    let url = recorder.url.clone();
    let app = app_with(move |c| c.upstreams = vec![http_upstream("rec", &url)]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    app.add_user("bob", PASSWORD, &["user"]).await;
    let alice = token_of(&app, "alice").await;
    let bob = token_of(&app, "bob").await;
    let addr = serve_on_loopback(gatehouse::app(app.state.clone())).await;
    let post = |token: &str, body: Value| post_over_socket(addr, token, body);
    let cancel = |id: u64| {
        json!({ "jsonrpc": "2.0", "method": "notifications/cancelled",
                "params": { "requestId": id, "reason": "the person pressed stop" } })
    };
    let upstream_waits = || {
        recorder
            .messages()
            .into_iter()
            .filter(|m| m["method"] == "tools/call" && m["params"]["name"] == "wait")
            .collect::<Vec<_>>()
    };

    // Alice's call runs at the upstream (which answers after 30 s).
    let call = tokio::spawn(post(&alice, call(41, "rec__wait", json!({}))));
    eventually("the call reaches the upstream", || {
        let waits = upstream_waits();
        async move { waits.into_iter().next() }
    })
    .await;

    // Bob names the same request id: his own calls only, so nothing stops.
    let res = post(&bob, cancel(41)).await.expect("bob's cancel");
    assert_eq!(res.status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !call.is_finished(),
        "another person's cancellation stopped alice's call"
    );

    // Alice cancels it: her call ends now, and the upstream is told which of its requests.
    let started = std::time::Instant::now();
    let res = post(&alice, cancel(41)).await.expect("alice's cancel");
    assert_eq!(res.status(), 202);
    let answer = call.await.expect("task").expect("answer");
    assert_eq!(answer.status(), 200);
    let answer = messages_of(answer).await.pop().expect("a JSON-RPC message");
    assert_eq!(answer["id"], 41, "{answer}");
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the call went on to the upstream's answer"
    );
    let upstream_id = upstream_waits()[0]["id"].clone();
    eventually("the upstream hears of the cancellation", || {
        let told = recorder.messages().into_iter().find(|m| {
            m["method"] == "notifications/cancelled" && m["params"]["requestId"] == upstream_id
        });
        async move { told }
    })
    .await;
}

#[tokio::test]
async fn an_upstream_event_that_never_ends_is_an_error_not_a_memory_sink() {
    let recorder = Recorder::start().await;
    let url = recorder.url.clone();
    let app = app_with(move |c| c.upstreams = vec![http_upstream("rec", &url)]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = token_of(&app, "alice").await;

    let started = std::time::Instant::now();
    let answer = rpc(&app, &token, call(5, "rec__flood", json!({}))).await;
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("rec"),
        "{answer}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the stream was read to its end or the call's timeout: {:?}",
        started.elapsed()
    );
    // The upstream still answers the next call.
    let next = rpc(&app, &token, call(6, "rec__record", json!({}))).await;
    assert_eq!(text_of(&next), "recorded", "{next}");
}

#[tokio::test]
async fn arguments_are_audited_only_for_an_upstream_configured_so_and_bounded() {
    let recorder = Recorder::start().await;
    let url = recorder.url.clone();
    let app = app_with(move |c| {
        c.upstreams = vec![upstream(json!({
            "name": "rec", "transport": "streamable_http", "url": url, "audit_arguments": true
        }))];
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = token_of(&app, "alice").await;
    let small = rpc(
        &app,
        &token,
        call(1, "rec__record", json!({ "customer": 42 })),
    )
    .await;
    assert_eq!(text_of(&small), "recorded");
    let large = rpc(
        &app,
        &token,
        call(2, "rec__record", json!({ "note": "x".repeat(10_000) })),
    )
    .await;
    assert_eq!(text_of(&large), "recorded");

    let details: Vec<Value> = eventually("both calls' audit events", || {
        let app = &app;
        async move {
            let calls = tool_calls_audited(app).await;
            (calls.len() == 2).then_some(calls)
        }
    })
    .await;
    assert!(
        details
            .iter()
            .any(|d| d["arguments"] == json!({ "customer": 42 })),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d["arguments"]["truncated"] == true
            && d["arguments"]["bytes"].as_u64() > Some(10_000)),
        "{details:?}"
    );
}

#[tokio::test]
async fn an_idle_stdio_process_is_ended_and_one_in_use_is_kept() {
    let app = app_with(|c| {
        c.upstreams = vec![upstream(json!({
            "name": "local", "transport": "stdio", "command": "node",
            "args": [everything_js(), "stdio"], "idle_timeout": 10
        }))];
    })
    .await;
    let alice_id = app.add_user("alice", PASSWORD, &["user"]).await.id;
    app.add_user("bob", PASSWORD, &["user"]).await;
    let alice = token_of(&app, "alice").await;
    let bob = token_of(&app, "bob").await;
    let echo = |n: i64| call(n, "local__echo", json!({ "message": "hi" }));
    assert_eq!(text_of(&rpc(&app, &alice, echo(1)).await), "Echo: hi");
    assert_eq!(text_of(&rpc(&app, &bob, echo(1)).await), "Echo: hi");
    let pid_of = |who: &str| {
        let status = app.state.gateway.status();
        status[0]
            .sessions
            .iter()
            .find(|s| s.subject == who)
            .and_then(|s| s.pid)
    };
    let alice_pid = pid_of(alice_id.as_str()).expect("alice's process");
    assert_eq!(
        app.state.gateway.sweep_every(),
        std::time::Duration::from_millis(2500)
    );

    // Bob keeps using his; alice leaves hers idle past the timeout.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(text_of(&rpc(&app, &bob, echo(2)).await), "Echo: hi");
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    app.state.gateway.end_idle();

    let status = app.state.gateway.status();
    assert_eq!(status[0].sessions.len(), 1, "{status:?}");
    assert!(pid_of(alice_id.as_str()).is_none(), "{status:?}");
    eventually("alice's idle process to exit", || {
        let stat = std::fs::read_to_string(format!("/proc/{alice_pid}/stat")).unwrap_or_default();
        let gone = stat.is_empty() || stat.contains(") Z ");
        async move { gone.then_some(()) }
    })
    .await;
    // Her next call starts a process again.
    assert_eq!(text_of(&rpc(&app, &alice, echo(3)).await), "Echo: hi");
    assert!(pid_of(alice_id.as_str()).is_some_and(|p| p != alice_pid));
}

/// The details of the `mcp.tool_call` events audited so far, newest first.
async fn tool_calls_audited(app: &TestApp) -> Vec<Value> {
    let events = app
        .state
        .store
        .audit_events(&Default::default(), None, 100)
        .await
        .expect("audit");
    events
        .into_iter()
        .filter(|r| r.event.kind == "mcp.tool_call")
        .map(|r| r.event.detail)
        .collect()
}

/// A `/mcp` POST through a real socket to the server at `addr` (its answer can be read as it
/// streams).
fn post_over_socket(
    addr: std::net::SocketAddr,
    token: &str,
    body: Value,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + use<> {
    reqwest::Client::new()
        .post(format!("http://{addr}/mcp"))
        .header("host", "mcp.example.com")
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", PROTOCOL)
        .body(body.to_string())
        .send()
}

/// Every JSON-RPC message of a `/mcp` answer, whether one JSON body or an event stream.
async fn messages_of(response: reqwest::Response) -> Vec<Value> {
    let text = response.text().await.expect("body");
    if let Ok(one) = serde_json::from_str::<Value>(&text) {
        return vec![one];
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

#[tokio::test]
async fn an_upstream_list_change_reaches_the_person_in_their_call() {
    let app = app_with(|c| c.upstreams = vec![stdio_everything("local")]).await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let token = token_of(&app, "alice").await;
    let addr = serve_on_loopback(gatehouse::app(app.state.clone())).await;
    let post = |body: Value| post_over_socket(addr, &token, body);
    let initialized = rpc(
        &app,
        &token,
        json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": { "name": "test", "version": "1" } } }),
    )
    .await;
    assert_eq!(
        initialized["result"]["capabilities"]["resources"]["listChanged"], true,
        "{initialized}"
    );

    // The tool adds a resource to the upstream session: the upstream says its resources
    // changed, and the person hears of it before the result.
    let response = post(call(
        2,
        "local__gzip-file-as-resource",
        json!({ "name": "hello.gz", "data": "data:text/plain;base64,aGVsbG8=" }),
    ))
    .await
    .expect("call");
    let messages = messages_of(response).await;
    let changed = messages
        .iter()
        .position(|m| m["method"] == "notifications/resources/list_changed");
    let result = messages.iter().position(|m| m["id"] == 2);
    assert!(changed.is_some() && changed < result, "{messages:?}");
    assert!(
        messages[result.unwrap_or_default()]["result"].is_object(),
        "{messages:?}"
    );

    // And the new resource is listed for this person.
    let listed = rpc(
        &app,
        &token,
        json!({ "jsonrpc": "2.0", "id": 3, "method": "resources/list" }),
    )
    .await;
    assert!(
        listed["result"]["resources"]
            .as_array()
            .is_some_and(|all| all.iter().any(|r| r["name"] == "hello.gz")),
        "{listed}"
    );
}
