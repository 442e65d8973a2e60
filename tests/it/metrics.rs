//! Prometheus metrics: `/metrics` is OpenMetrics text that the Prometheus project's own Python
//! parser reads (strictly), its counters move with a sign-in, a token, a tool call, a refusal
//! and a 429, and it is served only where the operator says: on `metrics_bind`, or on the
//! public listener behind `metrics_token`.

use std::io::Write;
use std::process::{Command, Stdio};

use axum::body::Body;
use axum::http::StatusCode;
use serde_json::Value;

use crate::support::mcp::{access_token, app_with, mcp, whoami};
use crate::support::process::{free_port, gatehouse, stop, wait_healthy};
use crate::support::{PASSWORD, TestApp, request};

const TOKEN: &str = "metrics-token-0123456789-abcdefghijklmnop";

/// Where `tests/run` installs the Prometheus client library for Python (its parser).
fn python_path() -> String {
    format!("{}/target/test-python", env!("CARGO_MANIFEST_DIR"))
}

/// One sample as the parser read it.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: serde_json::Map<String, Value>,
    value: f64,
}

/// `text` parsed by `prometheus_client.openmetrics.parser` (which refuses anything that is not
/// valid OpenMetrics text), as its samples.
fn parse(text: &str) -> Vec<Sample> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .env("PYTHONPATH", python_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text (tests/run installs prometheus-client into {}): {}\n{text}",
        python_path(),
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parser output");
    samples
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().expect("name").to_owned(),
            labels: s["labels"].as_object().expect("labels").clone(),
            value: s["value"].as_f64().expect("value"),
        })
        .collect()
}

/// The value of sample `name` with at least `labels`, or 0 when there is none yet.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(app: &TestApp) -> Vec<Sample> {
    let res = app
        .send(
            request("GET", "/metrics")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        res.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert_eq!(res.header("cache-control"), Some("no-store"));
    parse(&String::from_utf8_lossy(&res.body))
}

/// The counters move with what happens: a password sign-in (and a failed one), a code
/// exchange, a tool call, a call without a token, and a 429 of the per-token budget; the
/// signing key's age and next rotation step and the database's timings are there.
#[tokio::test]
async fn metrics_parse_as_openmetrics_and_move_with_sign_ins_tokens_and_tool_calls() {
    let app = app_with(|c| {
        c.metrics_token = Some(gatehouse::config::Passphrase(TOKEN.to_owned()));
        c.mcp.rate_limit_per_token = 3;
    })
    .await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let before = scrape(&app).await;
    let signed_in = |s: &[Sample]| {
        value(
            s,
            "gatehouse_sign_ins_total",
            &[("provider", "password"), ("outcome", "success")],
        )
    };
    assert_eq!(signed_in(&before), 0.0);

    let token = access_token(&app, "alice").await;
    let mut agent = crate::support::Agent::new(&app);
    let failed = agent.sign_in("/login", "alice", "not her password").await;
    assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    assert_eq!(whoami(&app, &token).await.status, StatusCode::OK);
    let anonymous = mcp(&app, None, None, "2025-06-18", serde_json::json!({})).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let mut limited = false;
    for _ in 0..5 {
        limited |= whoami(&app, &token).await.status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited, "the per-token budget of 3 ran out");

    let after = scrape(&app).await;
    assert_eq!(signed_in(&after), 1.0);
    assert_eq!(
        value(
            &after,
            "gatehouse_sign_ins_total",
            &[("provider", "password"), ("outcome", "failure")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "gatehouse_tokens_issued_total",
            &[("grant", "authorization_code")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "gatehouse_http_requests_total",
            &[("endpoint", "/mcp"), ("method", "POST"), ("status", "200")]
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "gatehouse_http_request_duration_seconds_count",
            &[("endpoint", "/token")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &after,
            "gatehouse_mcp_refusals_total",
            &[("reason", "no_token")]
        ),
        1.0
    );
    assert!(
        value(
            &after,
            "gatehouse_rate_limited_total",
            &[("budget", "token")]
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "gatehouse_mcp_refusals_total",
            &[("reason", "rate_limited")]
        ) >= 1.0
    );
    // The fixed clock has not moved since the key was made: age 0; the next key is published
    // 30 days less an hour after it (the default schedule).
    assert_eq!(value(&after, "gatehouse_signing_key_age_seconds", &[]), 0.0);
    assert_eq!(
        value(
            &after,
            "gatehouse_signing_key_next_step_seconds",
            &[("step", "publish_next")]
        ),
        (30 * 86_400 - 3_600) as f64
    );
    assert!(
        value(
            &after,
            "gatehouse_database_operation_duration_seconds_count",
            &[("operation", "guarded_write")]
        ) >= 1.0
    );
    // A path no route has is counted as such, not by its path.
    let _ = app.get("/no/such/path/42").await;
    let last = scrape(&app).await;
    assert!(
        value(
            &last,
            "gatehouse_http_requests_total",
            &[("endpoint", "unmatched")]
        ) >= 1.0
    );
    assert!(
        !last
            .iter()
            .any(|s| s.labels.values().any(|v| v == "/no/such/path/42"))
    );
}

/// On the public listener `/metrics` is absent unless `metrics_token` is set, and then answers
/// only to that token.
#[tokio::test]
async fn public_metrics_need_the_token() {
    let app = TestApp::sqlite().await;
    assert_eq!(app.get("/metrics").await.status, StatusCode::NOT_FOUND);

    let app =
        app_with(|c| c.metrics_token = Some(gatehouse::config::Passphrase(TOKEN.to_owned()))).await;
    let res = app.get("/metrics").await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.header("www-authenticate"),
        Some("Bearer realm=\"metrics\"")
    );
    let wrong = app
        .send(
            request("GET", "/metrics")
                .header("authorization", format!("Bearer {TOKEN}x"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(!scrape(&app).await.is_empty());
}

/// The real binary with `metrics_bind`: the metrics listener answers `/metrics` (and nothing
/// else), the public listener does not; a short `metrics_token` is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_metrics_apart_from_the_public_one() {
    let cwd = tempfile::TempDir::new().expect("tempdir");
    let (port, metrics_port) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{port}");
    let mut child = gatehouse(cwd.path())
        .arg("serve")
        .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
        .env(
            "GATEHOUSE_METRICS_BIND",
            format!("127.0.0.1:{metrics_port}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_healthy(&mut child, &base);
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);
    let samples = parse(&metrics.text().await.expect("body"));
    assert!(
        value(
            &samples,
            "gatehouse_http_requests_total",
            &[("endpoint", "/health"), ("status", "200")]
        ) >= 1.0,
        "the health checks made while starting"
    );
    let other = reqwest::get(format!("http://127.0.0.1:{metrics_port}/health"))
        .await
        .expect("get");
    assert_eq!(other.status(), 404);
    let public = reqwest::get(format!("{base}/metrics")).await.expect("get");
    assert_eq!(public.status(), 404);
    let output = stop(child);
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains(&format!(
            "Prometheus metrics at http://127.0.0.1:{metrics_port}/metrics"
        )),
        "{log}"
    );

    let refused = gatehouse(cwd.path())
        .arg("serve")
        .env("GATEHOUSE_METRICS_TOKEN", "short")
        .output()
        .expect("serve");
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("metrics_token must be at least 32 characters"),
        "{why}"
    );
}
