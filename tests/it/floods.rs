//! Floods and guessing (OAuth 2.1 §7.7, RFC 6749 §10.10): a burst of sign-ins costs a bounded
//! pool of password checks, failed token requests run out of budget and get 429 with
//! `Retry-After`, and a keep-alive client that is refused again and again still gets a complete
//! answer to each request on its one connection.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    Agent, TestApp, TestResponse, post_form, request, serve_on_loopback, sqlite_url,
};

async fn app_with(tweak: impl FnOnce(&mut gatehouse::config::Config)) -> TestApp {
    let dir = tempfile::TempDir::new().expect("dir");
    let url = sqlite_url(&dir);
    TestApp::with(dir, &url, tweak).await
}

/// A form POST from `forwarded_for` (the test router's peer is a trusted proxy in these tests).
async fn post_from(
    app: &TestApp,
    path: &str,
    forwarded_for: &str,
    fields: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> TestResponse {
    post_form(
        app,
        path,
        fields,
        basic,
        &[("x-forwarded-for", forwarded_for)],
    )
    .await
}

fn trusting_the_test_peer(config: &mut gatehouse::config::Config) {
    config.trusted_proxies = vec!["192.0.2.10/32".parse().expect("cidr")];
}

/// A 429 as the token endpoint gives it: `slow_down` JSON, not cached, with a `Retry-After` of
/// whole seconds.
fn assert_slow_down(res: &TestResponse) {
    assert_eq!(res.status, 429, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(res.header("cache-control"), Some("no-store"));
    assert_eq!(res.json()["error"], "slow_down");
    let wait: u64 = res
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
}

/// A burst of sign-ins, each from its own address and for its own name (so the per-name and
/// per-address delays never step in), against one password thread with room for two waiting:
/// no more than that ever runs or waits, the rest are told at once to come back (503 with
/// `Retry-After`), and nothing is counted as a failed sign-in for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_sign_ins_waits_in_a_bounded_queue() {
    let app = app_with(|config| {
        trusting_the_test_peer(config);
        config.password_hashing.workers = 1;
        config.password_hashing.queue = 2;
    })
    .await;
    let burst = 24;
    let mut forms = Vec::new();
    for n in 0..burst {
        let mut agent = Agent::new(&app);
        let page = agent.get("/login").await;
        assert_eq!(page.status, 200, "{}", page.text());
        let cookie: Vec<String> = agent
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("csrf", page.hidden("csrf").as_str()),
                ("request", ""),
                ("username", &format!("nobody{n}")),
                ("password", "not the password"),
            ])
            .finish();
        forms.push((cookie.join("; "), body, format!("198.51.100.{n}")));
    }
    let mut posts = tokio::task::JoinSet::new();
    for (cookie, body, ip) in forms {
        let router = app.router.clone();
        posts.spawn(async move {
            use tower::ServiceExt;
            let req = request("POST", "/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", cookie)
                .header("x-forwarded-for", ip)
                .body(Body::from(body))
                .expect("request");
            let res = router.oneshot(req).await.unwrap_or_else(|e| match e {});
            (
                res.status().as_u16(),
                res.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().expect("ascii").to_owned()),
            )
        });
    }
    let answers = posts.join_all().await;
    let checked = answers.iter().filter(|(status, _)| *status == 401).count();
    let busy: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == 503)
        .collect();
    assert_eq!(checked + busy.len(), burst, "{answers:?}");
    assert!(!busy.is_empty(), "the burst outran the queue: {answers:?}");
    for (_, retry_after) in &busy {
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    let stats = app.state.passwords.stats();
    assert!(stats.peak_running <= 1, "{stats:?}");
    assert!(
        stats.peak_in_flight <= 3,
        "one running, two waiting: {stats:?}"
    );
    assert_eq!(stats.refused, busy.len() as u64, "{stats:?}");
    assert_eq!(stats.done, checked as u64, "{stats:?}");
    // Only the checked attempts count as failures of their names.
    let failures = app
        .count_rows("SELECT count(*) FROM login_throttle WHERE throttle_key LIKE 'user:%'")
        .await;
    assert_eq!(failures, checked as i64);
}

/// Guessing codes with an unknown client: the address gets `rate_limits.failures_per_minute`
/// (20) failed answers, then 429 `slow_down` for every request, a good one included.
#[tokio::test]
async fn failed_token_requests_from_one_address_reach_429() {
    let app = app_with(trusting_the_test_peer).await;
    let guess = |n: usize| {
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", format!("guess-{n}")),
            ("code_verifier", "v".repeat(43)),
            ("client_id", "not-a-client".to_owned()),
        ]
    };
    for n in 0..20 {
        let fields = guess(n);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = post_from(&app, "/token", "203.0.113.5", &fields, None).await;
        assert_eq!(res.status, 401, "attempt {n}: {}", res.text());
        assert_eq!(res.json()["error"], "invalid_client");
    }
    let fields = guess(20);
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = post_from(&app, "/token", "203.0.113.5", &fields, None).await;
    assert_slow_down(&res);
    // The same address is refused at the other credential endpoints too. Another address is
    // not, with another client_id (this one has spent its own budget as well).
    let res = post_from(
        &app,
        "/revoke",
        "203.0.113.5",
        &[("token", "x"), ("client_id", "c")],
        None,
    )
    .await;
    assert_slow_down(&res);
    let mut fields = fields;
    fields[3] = ("client_id", "another-unknown-client");
    let res = post_from(&app, "/token", "203.0.113.6", &fields, None).await;
    assert_eq!(res.status, 401, "{}", res.text());
}

/// Guessing a confidential client's secret from many addresses: the client's own budget runs
/// out after 20 failures, whatever address asks next, at `/token`, `/revoke` and `/introspect`;
/// another client is unaffected.
#[tokio::test]
async fn failed_client_authentication_runs_out_the_clients_budget() {
    let app = app_with(trusting_the_test_peer).await;
    let grants = ["authorization_code", "refresh_token"];
    let basic = "client_secret_basic";
    let (id, _secret) = crate::support::oauth::confidential(&app, basic, &grants, "mcp").await;
    let (other, other_secret) =
        crate::support::oauth::confidential(&app, basic, &grants, "mcp").await;
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", "guess")];
    let paths = ["/token", "/revoke", "/introspect"];
    for n in 0..20 {
        let path = paths[n % 3];
        let fields: &[(&str, &str)] = if path == "/token" {
            &refresh
        } else {
            &[("token", "anything")]
        };
        let ip = format!("198.51.100.{n}");
        let res = post_from(&app, path, &ip, fields, Some((&id, "wrong secret"))).await;
        assert_eq!(res.status, 401, "{path} attempt {n}: {}", res.text());
        assert_eq!(res.json()["error"], "invalid_client");
        assert!(res.header("www-authenticate").is_some());
    }
    for path in paths {
        let fields: &[(&str, &str)] = if path == "/token" {
            &refresh
        } else {
            &[("token", "anything")]
        };
        let res = post_from(
            &app,
            path,
            "198.51.100.200",
            fields,
            Some((&id, "wrong secret")),
        )
        .await;
        assert_slow_down(&res);
    }
    let res = post_from(
        &app,
        "/token",
        "198.51.100.201",
        &refresh,
        Some((&other, &other_secret)),
    )
    .await;
    assert_eq!(res.status, 400, "{}", res.text());
    assert_eq!(res.json()["error"], "invalid_grant");
}

/// Serves the real router on a loopback socket, with the socket's peer as client address.
async fn serve(app: &TestApp) -> SocketAddr {
    serve_on_loopback(gatehouse::app(app.state.clone())).await
}

/// Reads from `stream` until `buffer` holds `want` bytes.
async fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>, want: usize) {
    while buffer.len() < want {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed inside a body");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// One HTTP/1.1 response read off `stream`: status, lower-cased headers, body (Content-Length
/// or chunked). `None` when the server closed the connection instead of answering.
async fn read_response(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Option<(u16, Vec<(String, String)>, Vec<u8>)> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).expect("ascii head");
    buffer.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(length) = find("content-length") {
        let length: usize = length.parse().expect("length");
        fill(stream, buffer, length).await;
        buffer.drain(..length).collect()
    } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = buffer.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                let have = buffer.len();
                fill(stream, buffer, have + 1).await;
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&buffer[..line_end])
                    .expect("ascii")
                    .trim(),
                16,
            )
            .expect("chunk size");
            buffer.drain(..line_end + 2);
            fill(stream, buffer, size + 2).await;
            body.extend(buffer.drain(..size));
            buffer.drain(..2);
            if size == 0 {
                break body;
            }
        }
    } else {
        Vec::new()
    };
    Some((status, headers, body))
}

/// A keep-alive client refused again and again on one connection (issue: the 429 closed the
/// connection, and the client's next request failed with "server disconnected"): each request,
/// written as many clients write it (the head, then the body in a second write), gets its own
/// complete answer, first the 401 that starts discovery, then 429s with `Retry-After`; and the
/// connection stays open unless an answer says `Connection: close`.
#[tokio::test]
async fn a_keep_alive_client_gets_every_429_on_its_one_connection() {
    let app = app_with(|config| config.mcp.rate_limit_unauthenticated = 1).await;
    let addr = serve(&app).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let mut buffer = Vec::new();
    let mut statuses = Vec::new();
    for n in 0..5 {
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write head");
        tokio::time::sleep(Duration::from_millis(20)).await;
        stream.write_all(body.as_bytes()).await.expect("write body");
        let (status, headers, answer) = read_response(&mut stream, &mut buffer)
            .await
            .unwrap_or_else(|| {
                panic!("request {n}: the server closed the connection without an answer")
            });
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_ne!(
            header("connection"),
            Some("close"),
            "request {n}: {headers:?}"
        );
        let json: Value = serde_json::from_slice(&answer).expect("JSON body");
        if n == 0 {
            assert_eq!(status, 401, "{json}");
        } else {
            assert_eq!(status, 429, "request {n}: {json}");
            assert_eq!(json["error"], "rate_limited");
            let wait: u64 = header("retry-after")
                .expect("Retry-After")
                .parse()
                .expect("seconds");
            assert!((1..=60).contains(&wait), "{wait}");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [401, 429, 429, 429, 429]);
}

/// A body too large to read just to keep the connection (over 256 KiB, refused unread): the
/// answer says `Connection: close`, and then the connection closes; never a silent close.
#[tokio::test]
async fn a_large_body_refused_unread_is_answered_with_connection_close() {
    let app = TestApp::sqlite().await;
    let addr = serve(&app).await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = vec![b' '; 300 * 1024];
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    // The server may answer and close before all of it is sent.
    let _ = stream.write_all(&body).await;
    let mut buffer = Vec::new();
    let (status, headers, _) = read_response(&mut stream, &mut buffer)
        .await
        .expect("an answer before the close");
    assert_eq!(status, 401);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "connection" && v == "close"),
        "{headers:?}"
    );
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut rest))
        .await
        .expect("closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the connection is closed after the answer");
}
