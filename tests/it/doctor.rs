//! `gatehouse doctor URL` against a real Gatehouse process, reached directly and through a small
//! fixture proxy that breaks the deployment the ways operators break it in the field: an issuer
//! with a trailing slash, `/.well-known` dropped, a PRM `resource` that is not the pasted URL, a
//! 429 at the challenge; and plain http on a public host name. Each break is named, with the
//! clients it breaks, and the doctor exits non-zero.

use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::support::process::{Running, free_port, gatehouse, stop, wait_healthy};

/// How the proxy breaks what it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Break {
    Nothing,
    TrailingSlashIssuer,
    DropWellKnown,
    OtherResource,
    RateLimitedChallenge,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    mode: Arc<Mutex<Break>>,
    http: reqwest::Client,
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let mode = *proxy.mode.lock().expect("mode");
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if mode == Break::DropWellKnown && path.starts_with("/.well-known/") {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    if mode == Break::RateLimitedChallenge
        && path.starts_with("/mcp")
        && !parts.headers.contains_key("authorization")
        && parts.method == Method::POST
    {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "60")],
            "slow down",
        )
            .into_response();
    }
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != "content-length" && name != "connection" {
            headers.insert(name.clone(), value.clone());
        }
    }
    let answer = proxy
        .http
        .request(parts.method.clone(), format!("{}{path}", proxy.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("upstream");
    let status = answer.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            out_headers.insert(name.clone(), value.clone());
        }
    }
    let mut bytes: Bytes = answer.bytes().await.unwrap_or_default();
    if path.starts_with("/.well-known/oauth-protected-resource")
        && parts.method == Method::GET
        && status == StatusCode::OK
    {
        let mut doc: Value = serde_json::from_slice(&bytes).expect("PRM");
        match mode {
            Break::TrailingSlashIssuer => {
                let issuer = doc["authorization_servers"][0]
                    .as_str()
                    .expect("as")
                    .to_owned();
                doc["authorization_servers"][0] = Value::String(format!("{issuer}/"));
            }
            Break::OtherResource => {
                let resource = doc["resource"].as_str().expect("resource").to_owned();
                doc["resource"] = Value::String(format!("{resource}/"));
            }
            _ => {}
        }
        bytes = Bytes::from(doc.to_string());
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}

/// Runs the doctor with `args` on a blocking thread (the proxy keeps answering meanwhile); its
/// exit status and what it printed.
async fn doctor(cwd: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let cwd = cwd.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || run_doctor(&cwd, &args, stdin.as_deref()))
        .await
        .expect("doctor thread")
}

fn run_doctor(cwd: &std::path::Path, args: &[String], stdin: Option<&str>) -> (bool, String) {
    let mut child = gatehouse(cwd)
        .arg("doctor")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("doctor");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("doctor");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_passes_gatehouse_and_names_each_broken_deployment() {
    let cwd = tempfile::TempDir::new().expect("tempdir");
    let (port, proxy_port) = (free_port(), free_port());
    let front = format!("http://127.0.0.1:{proxy_port}");
    crate::support::process::add_user(gatehouse(cwd.path()), "alice", "correct horse battery");
    // Gatehouse behind the proxy: its issuer is the proxy's address.
    let mut server = Running(Some(
        gatehouse(cwd.path())
            .arg("serve")
            .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
            .env("GATEHOUSE_ISSUER", &front)
            .env("GATEHOUSE_MCP__RATE_LIMIT_UNAUTHENTICATED", "1000")
            .env("GATEHOUSE_REGISTRATION__RATE_LIMIT_PER_HOUR", "1000")
            // Metadata documents live on the internet, which this machine does not reach; the
            // second server below keeps them on and shows what the doctor says then.
            .env("GATEHOUSE_CLIENT_METADATA__ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve"),
    ));
    let proxy = Proxy {
        upstream: format!("http://127.0.0.1:{port}"),
        mode: Arc::new(Mutex::new(Break::Nothing)),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
    };
    let router = axum::Router::new()
        .fallback(forward)
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", proxy_port))
        .await
        .expect("bind proxy");
    tokio::spawn(async move { axum::serve(listener, router).await });
    wait_healthy(
        server.0.as_mut().expect("server"),
        &format!("http://127.0.0.1:{port}"),
    );
    let mcp = format!("{front}/mcp");

    // Healthy: every check passes, each client registers, and a real sign-in calls a tool.
    let (ok, out) = doctor(
        cwd.path(),
        &[&mcp, "--user", "alice", "--password-stdin"],
        Some("correct horse battery\n"),
    )
    .await;
    assert!(ok, "{out}");
    for client in [
        "Claude.ai",
        "ChatGPT",
        "Claude Code",
        "VS Code",
        "Cursor",
        "MCP Inspector",
    ] {
        assert!(
            out.contains(&format!("PASS  {client} registers")),
            "{client}: {out}"
        );
    }
    assert!(
        out.contains("PASS  PRM resource is the pasted URL"),
        "{out}"
    );
    assert!(out.contains("called whoami"), "{out}");
    assert!(
        out.contains("WARN  the URL is plain http on loopback"),
        "{out}"
    );
    assert!(out.contains("Every client checked would connect."), "{out}");

    for (mode, says) in [
        (Break::TrailingSlashIssuer, "the metadata's issuer"),
        (
            Break::DropWellKnown,
            "Protected Resource Metadata at the path form",
        ),
        (Break::OtherResource, "is not the pasted URL"),
        (Break::RateLimitedChallenge, "gets 429, not 401"),
    ] {
        *proxy.mode.lock().expect("mode") = mode;
        let (ok, out) = doctor(cwd.path(), &[&mcp, "--no-register"], None).await;
        assert!(!ok, "{mode:?} must fail: {out}");
        // The FAIL line itself, then the clients it breaks and its fix, right under it (a WARN
        // elsewhere has a fix too, so the whole output would not tell).
        let lines: Vec<&str> = out.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("FAIL") && l.contains(says))
            .unwrap_or_else(|| panic!("{mode:?}: no FAIL line with {says:?}: {out}"));
        let line = lines[at];
        let (breaks, fix) = (lines.get(at + 1), lines.get(at + 2));
        assert!(
            breaks
                .is_some_and(|b| b.trim_start().starts_with("breaks: ") && b.contains("Claude.ai")),
            "{mode:?}: {line}\n{out}"
        );
        assert!(
            fix.is_some_and(|f| f.trim_start().starts_with("fix: ")),
            "{out}"
        );
        assert!(out.contains("Would fail for:"), "{out}");
    }
    *proxy.mode.lock().expect("mode") = Break::TrailingSlashIssuer;
    let (_, out) = doctor(cwd.path(), &[&mcp, "--no-register"], None).await;
    assert!(
        out.contains("trailing slash"),
        "the fix names the usual cause: {out}"
    );

    // Plain http on a public host name (resolved to the proxy, as DNS would).
    *proxy.mode.lock().expect("mode") = Break::Nothing;
    let public = format!("http://mcp.gatehouse.test:{proxy_port}/mcp");
    let resolve = format!("mcp.gatehouse.test:127.0.0.1:{proxy_port}");
    let (ok, out) = doctor(
        cwd.path(),
        &[&public, "--no-register", "--resolve", &resolve],
        None,
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  the URL is plain http on a public host (mcp.gatehouse.test)"),
        "{out}"
    );

    let output = stop(server.take());
    assert!(output.status.success());

    // Client ID Metadata Documents advertised, but the server cannot fetch VS Code's (no route
    // to the internet here): VS Code is named, with the fix.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Running(Some(
        gatehouse(cwd.path())
            .arg("serve")
            .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve"),
    ));
    wait_healthy(server.0.as_mut().expect("server"), &base);
    let (ok, out) = doctor(cwd.path(), &[&format!("{base}/mcp"), "--no-register"], None).await;
    assert!(!ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("VS Code's Client ID Metadata Document"))
        .unwrap_or_else(|| panic!("the metadata-document check: {out}"));
    assert!(out.contains("breaks: VS Code"), "{line}\n{out}");
    assert!(out.contains("Would fail for: VS Code."), "{out}");
    let output = stop(server.take());
    assert!(output.status.success());
}
