//! The socket edge of the real binary, tried as an attacker on the same network and as a load
//! balancer would: silent, trickling and idle connections are closed at their timeouts, a body
//! that does not come gets 408, connections past their caps get a fast 503 while `/health`
//! keeps answering, and SIGTERM during a burst of refreshes loses nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::instances::{authorize, try_refresh};
use crate::support::process::{Running, free_port, gatehouse, sigterm, wait_exit, wait_healthy};
use crate::support::{CALLBACK, PASSWORD, register_over_http};

/// `gatehouse serve` on a free loopback port in `cwd` (its SQLite file there), with `settings`
/// on top of limits raised out of the way; its log goes to `cwd/serve.log`.
fn start(cwd: &Path, port: u16, settings: &[(&str, &str)]) -> Running {
    let log = std::fs::File::create(cwd.join("serve.log")).expect("log");
    let mut cmd = gatehouse(cwd);
    cmd.arg("serve")
        .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
        .env("GATEHOUSE_RATE_LIMITS__OAUTH_PER_MINUTE", "100000")
        .env("GATEHOUSE_RATE_LIMITS__PUBLIC_PER_MINUTE", "100000")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    for (key, value) in settings {
        cmd.env(key, value);
    }
    let mut server = Running(Some(cmd.spawn().expect("spawn")));
    let child = server.0.as_mut().expect("child");
    wait_healthy(child, &format!("http://127.0.0.1:{port}"));
    server
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
}

/// One answer read off `stream`: status, head (lower case) and body; `None` when the server
/// closed the connection before an answer.
fn read_answer(stream: &mut TcpStream) -> Option<(u16, String, String)> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => raw.push(byte[0]),
        }
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((status, head, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `GET path` on `stream` (kept alive) and reads the answer.
fn get(stream: &mut TcpStream, path: &str) -> Option<(u16, String, String)> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    read_answer(stream)
}

/// How long the server took to close `stream`; whatever it sent first is no success.
fn closed_within(stream: &mut TcpStream, bound: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let mut sent = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Ok(n) => sent.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the connection was not closed within {bound:?}: {e}"),
        }
    }
    let sent = String::from_utf8_lossy(&sent);
    assert!(!sent.contains(" 200 "), "{sent}");
    started.elapsed()
}

/// The value of the sample `series` (name and labels, as written) on the metrics listener at
/// `port`; 0 when absent.
fn metric(port: u16, series: &str) -> f64 {
    let mut c = connect(port);
    let (status, _, text) = get(&mut c, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The error code of a JSON error body.
fn error_code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).expect("json")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn silent_trickling_idle_and_slow_body_connections_are_cut_off() {
    let cwd = TempDir::new().expect("tempdir");
    let (port, metrics) = (free_port(), free_port());
    let _server = start(
        cwd.path(),
        port,
        &[
            ("GATEHOUSE_CONNECTIONS__HEADER_TIMEOUT", "1"),
            ("GATEHOUSE_CONNECTIONS__IDLE_TIMEOUT", "10"),
            ("GATEHOUSE_CONNECTIONS__BODY_TIMEOUT", "1"),
            ("GATEHOUSE_METRICS_BIND", &format!("127.0.0.1:{metrics}")),
        ],
    );

    // A connection that sends nothing is closed after the header timeout.
    let mut silent = connect(port);
    let took = closed_within(&mut silent, Duration::from_secs(20));
    assert!(took < Duration::from_secs(10), "silent: {took:?}");

    // One that trickles a header line now and then never gets its request read.
    let mut trickle = connect(port);
    let mut writer = trickle.try_clone().expect("clone");
    let trickler = std::thread::spawn(move || {
        let _ = writer.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(250));
            if writer.write_all(b"X-Slow: 1\r\n").is_err() {
                return;
            }
        }
    });
    let took = closed_within(&mut trickle, Duration::from_secs(20));
    assert!(took < Duration::from_secs(10), "trickling: {took:?}");
    trickler.join().expect("trickler");

    // A kept-alive connection outlives the header timeout between requests, then is closed
    // after the idle timeout.
    let mut idle = connect(port);
    assert_eq!(get(&mut idle, "/health").expect("answer").0, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        get(&mut idle, "/jwks.json")
            .expect("still open past the header timeout")
            .0,
        200
    );
    let took = closed_within(&mut idle, Duration::from_secs(30));
    assert!(took < Duration::from_secs(20), "idle: {took:?}");

    // A body that does not come in full: 408, and the connection closes.
    let mut slow = connect(port);
    write!(
        slow,
        "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant_type"
    )
    .expect("write");
    let (status, head, body) = read_answer(&mut slow).expect("an answer");
    assert_eq!(status, 408, "{head}{body}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(error_code(&body), "request_timeout");

    // Each cut is counted by its phase.
    let timeouts = |phase: &str| {
        metric(
            metrics,
            &format!("gatehouse_connection_timeouts_total{{phase=\"{phase}\"}}"),
        )
    };
    assert!(timeouts("header") >= 2.0, "silent and trickling");
    assert!(timeouts("idle") >= 1.0);
    assert_eq!(timeouts("body"), 1.0);
}

/// A connection to `port` from the loopback address `from` (127.0.0.2 and so on are loopback
/// too, and are other clients to the server).
fn connect_from(from: &str, port: u16) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{from}:0").parse().expect("address"))
            .expect("bind");
        socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect")
    });
    let stream = stream.into_std().expect("std");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
}

#[test]
fn past_the_connection_caps_new_connections_get_503_and_health_still_answers() {
    let cwd = TempDir::new().expect("tempdir");
    let (port, metrics) = (free_port(), free_port());
    let _server = start(
        cwd.path(),
        port,
        &[
            ("GATEHOUSE_CONNECTIONS__MAX", "4"),
            ("GATEHOUSE_CONNECTIONS__MAX_PER_ADDRESS", "3"),
            ("GATEHOUSE_METRICS_BIND", &format!("127.0.0.1:{metrics}")),
        ],
    );
    // `wait_healthy`'s connections are closed; wait until the server has let them go.
    let mut held: Vec<TcpStream> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < 3 {
        let mut c = connect(port);
        match get(&mut c, "/jwks.json") {
            Some((200, _, _)) => held.push(c),
            other => assert!(Instant::now() < deadline, "could not hold 3: {other:?}"),
        }
    }

    // A fourth from the same address: 503 at once, with Retry-After, and closed. It came
    // through a proxy (X-Forwarded-For), so the log says to list the proxy.
    let mut fourth = connect(port);
    write!(
        fourth,
        "GET /jwks.json HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n"
    )
    .expect("write");
    let (status, head, body) = read_answer(&mut fourth).expect("an answer");
    assert_eq!(status, 503, "{head}{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(error_code(&body), "too_many_connections");
    closed_within(&mut fourth, Duration::from_secs(20));
    let log = std::fs::read_to_string(cwd.path().join("serve.log")).expect("log");
    assert!(log.contains("list it in trusted_proxies"), "{log}");

    // Another address is served, up to the total.
    let mut other = connect_from("127.0.0.2", port);
    assert_eq!(get(&mut other, "/jwks.json").expect("answer").0, 200);
    held.push(other);
    let mut past_total = connect_from("127.0.0.3", port);
    assert_eq!(get(&mut past_total, "/jwks.json").expect("answer").0, 503);

    // The health check is served past the caps.
    let mut check = connect_from("127.0.0.3", port);
    let (status, _, body) = get(&mut check, "/health").expect("an answer");
    assert_eq!(status, 200, "{body}");

    // The connections already open keep working.
    for c in &mut held {
        assert_eq!(get(c, "/jwks.json").expect("answer").0, 200);
    }
    assert_eq!(metric(metrics, "gatehouse_connections_open"), 4.0);
    let refused = |cap: &str| {
        metric(
            metrics,
            &format!("gatehouse_connections_refused_total{{reason=\"{cap}\"}}"),
        )
    };
    assert!(refused("max_per_address") >= 1.0);
    assert!(refused("max") >= 2.0);

    // One closes: its place comes back.
    drop(held.remove(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = connect(port);
        if get(&mut c, "/jwks.json").expect("answer").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn past_the_in_flight_cap_requests_get_503_at_once_and_health_still_answers() {
    let cwd = TempDir::new().expect("tempdir");
    let port = free_port();
    let _server = start(
        cwd.path(),
        port,
        &[
            ("GATEHOUSE_CONNECTIONS__MAX_IN_FLIGHT", "2"),
            ("GATEHOUSE_CONNECTIONS__BODY_TIMEOUT", "60"),
        ],
    );
    // Two requests whose bodies are slow to come hold both places.
    let open_post = |port| {
        let mut c = connect(port);
        write!(
            c,
            "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 30\r\n\r\ngrant_type="
        )
        .expect("write");
        c
    };
    let mut posts = [open_post(port), open_post(port)];

    // Until both hold a place and a third request is refused. A request sent while a POST was
    // not yet read may take its place, and that POST is refused: it is sent again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (head, body) = loop {
        std::thread::sleep(Duration::from_millis(100));
        for post in &mut posts {
            post.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            let mut byte = [0u8; 1];
            if post.peek(&mut byte).is_ok() {
                *post = open_post(port);
            } else {
                post.set_read_timeout(Some(Duration::from_secs(20)))
                    .expect("timeout");
            }
        }
        let mut c = connect(port);
        let (status, head, body) = get(&mut c, "/jwks.json").expect("answer");
        if status == 503 {
            break (head, body);
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "never refused past the cap");
    };
    assert!(head.contains("retry-after: 1"), "{head}");
    assert_eq!(error_code(&body), "too_many_requests");

    let mut check = connect(port);
    assert_eq!(get(&mut check, "/health").expect("answer").0, 200);

    // The first body arrives: it is answered, and its place comes back.
    let [mut first, _second] = posts;
    first.write_all(b"refresh_token&a=bcd").expect("rest");
    let (status, _, body) = read_answer(&mut first).expect("answer");
    assert_eq!(status, 401, "{body}");
    assert_eq!(error_code(&body), "invalid_client");
    let mut after = connect(port);
    assert_eq!(get(&mut after, "/jwks.json").expect("answer").0, 200);
}

/// Waits (at most 30 s) for `child` to exit; its exit code.
fn exit_code(child: Child) -> Option<i32> {
    wait_exit(child, Duration::from_secs(30)).status.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_burst_of_refreshes_loses_no_refresh() {
    let cwd = TempDir::new().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // A rotated token is refused after 1 s: a refresh the server made but never answered
    // would break its chain after the restart.
    let settings = [("GATEHOUSE_REFRESH_GRACE_PERIOD", "1")];
    crate::support::process::add_user(gatehouse(cwd.path()), "alice", PASSWORD);
    let mut server = tokio::task::block_in_place(|| start(cwd.path(), port, &settings));

    let client_id = register_over_http(&base, "Claude", CALLBACK).await;
    let mut chains = Vec::new();
    for _ in 0..6 {
        let tokens = authorize(&base, &base, &base, &client_id).await;
        chains.push(tokens["refresh_token"].as_str().expect("rt").to_owned());
    }

    // Each chain refreshes as fast as it can until the server is gone.
    let chain_count = chains.len();
    let under_way = Arc::new(AtomicUsize::new(0));
    let mut burst = tokio::task::JoinSet::new();
    for token in chains {
        let (base, client_id, under_way) = (base.clone(), client_id.clone(), under_way.clone());
        burst.spawn(async move {
            let (mut token, mut done) = (token, 0u32);
            loop {
                match try_refresh(&base, &client_id, &token).await {
                    Some((200, answer)) => {
                        token = answer["refresh_token"].as_str().expect("rt").to_owned();
                        done += 1;
                        if done == 1 {
                            under_way.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Some((status, answer)) => panic!("refresh refused: {status} {answer}"),
                    // Refused or cut before an answer: the server is stopping.
                    None => return (token, done),
                }
            }
        });
    }
    // SIGTERM once every chain has refreshed at least once, so the stop meets them all under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while under_way.load(Ordering::SeqCst) < chain_count {
        assert!(Instant::now() < deadline, "the burst never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let child = server.take();
    sigterm(&child);
    let mut chains = Vec::new();
    let mut done = 0;
    while let Some(ended) = burst.join_next().await {
        let (token, n) = ended.expect("chain");
        chains.push(token);
        done += n;
    }
    assert!(done > 0, "the burst refreshed");
    let code = tokio::task::block_in_place(|| exit_code(child));
    assert_eq!(code, Some(0), "a clean stop exits 0");
    let log = std::fs::read_to_string(cwd.path().join("serve.log")).expect("log");
    assert!(log.contains("Gatehouse stopped"), "{log}");

    // Past the grace window, on a new process over the same database: every chain goes on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _server = tokio::task::block_in_place(|| start(cwd.path(), port, &settings));
    for token in &chains {
        let (status, answer) = try_refresh(&base, &client_id, token)
            .await
            .expect("an answer");
        assert_eq!(status, 200, "a chain broke across the stop: {answer}");
    }
}

#[test]
fn a_stop_drains_health_first_then_exits_0() {
    let cwd = TempDir::new().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start(
        cwd.path(),
        port,
        &[("GATEHOUSE_CONNECTIONS__DRAIN_DELAY", "3")],
    );
    let mut check = connect(port);
    let (status, _, body) = get(&mut check, "/health").expect("answer");
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (health["ready"].as_bool(), health["live"].as_bool()),
        (Some(true), Some(true))
    );

    let child = server.take();
    sigterm(&child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, _, body) = get(&mut check, "/health").expect("answer while draining");
        if status == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "never draining");
        std::thread::sleep(Duration::from_millis(20));
    };
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "draining");
    assert_eq!(health["ready"], false);
    // Still serving while the load balancer takes it out; alive all along.
    assert_eq!(get(&mut check, "/health/live").expect("answer").0, 200);
    assert_eq!(get(&mut check, "/jwks.json").expect("answer").0, 200);
    assert_eq!(get(&mut check, "/health/ready").expect("answer").0, 503);
    assert_eq!(exit_code(child), Some(0));
    assert!(
        crate::support::process::raw_http::get(&format!("{base}/health")).is_err(),
        "nothing listens after the stop"
    );
}

/// Ctrl-C stops the server the same clean way (the terminal's SIGINT).
#[test]
fn ctrl_c_stops_cleanly_too() {
    let cwd = TempDir::new().expect("tempdir");
    let port = free_port();
    let mut server = start(cwd.path(), port, &[]);
    let mut kept = connect(port);
    assert_eq!(get(&mut kept, "/health").expect("answer").0, 200);
    let child = server.take();
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    // The idle connection is closed by the stop itself, well before `shutdown_timeout` (20 s).
    let took = closed_within(&mut kept, Duration::from_secs(20));
    assert!(took < Duration::from_secs(10), "kept: {took:?}");
    assert_eq!(exit_code(child), Some(0));
    let log = std::fs::read_to_string(cwd.path().join("serve.log")).expect("log");
    assert!(log.contains("Ctrl-C received"), "{log}");
    assert!(log.contains("Gatehouse stopped"), "{log}");
}
