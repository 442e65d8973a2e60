//! The real binary on a real loopback socket: start with development defaults, fetch every
//! discovery document, stop with SIGTERM, and see it exit cleanly; `keys list` reads the same
//! state.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::process::{Running, free_port, gatehouse, raw_http, stop, wait_healthy};

#[test]
fn serve_on_development_defaults_then_sigterm() {
    let cwd = TempDir::new().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = gatehouse(cwd.path())
        .arg("serve")
        .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_healthy(&mut child, &base);

    let (status, head, body) =
        raw_http::get(&format!("{base}/.well-known/oauth-authorization-server")).expect("get");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let metadata: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(metadata["issuer"], base.as_str());

    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let (status, _, body) = raw_http::get(&format!("{base}{path}")).expect("get");
        assert_eq!(status, 200, "{path}");
        let prm: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(prm["resource"], format!("{base}/mcp"));
        assert_eq!(prm["authorization_servers"][0], metadata["issuer"]);
    }
    let (status, _, body) = raw_http::get(&format!("{base}/jwks.json")).expect("get");
    assert_eq!(status, 200);
    let jwks: serde_json::Value = serde_json::from_str(&body).expect("json");
    let kid = jwks["keys"][0]["kid"].as_str().expect("kid").to_owned();
    let (status, _, _) =
        raw_http::get(&format!("{base}/.well-known/openid-configuration")).expect("get");
    assert_eq!(status, 404);
    let (status, head, _) = raw_http::get(&format!("{base}/mcp")).expect("get");
    assert_eq!(status, 401);
    assert!(
        head.contains(&format!(
            "www-authenticate: bearer resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\""
        )),
        "{head}"
    );

    let output = stop(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert!(
        stderr.contains("DEVELOPMENT DEFAULT in force: issuer"),
        "{stderr}"
    );
    assert!(
        stderr.contains("DEVELOPMENT DEFAULT in force: database"),
        "{stderr}"
    );
    assert!(
        stderr.contains("DEVELOPMENT DEFAULT in force: signing keys"),
        "{stderr}"
    );
    assert!(
        stderr.contains("SIGTERM received") && stderr.contains("Gatehouse stopped"),
        "{stderr}"
    );

    // The defaults put the database and keys in the working directory.
    assert!(cwd.path().join("gatehouse.db").is_file());
    assert!(
        cwd.path()
            .join("keys")
            .join(format!("{kid}.json"))
            .is_file()
    );

    // `keys list` reads the same configuration and database.
    let list = gatehouse(cwd.path())
        .args(["keys", "list"])
        .output()
        .expect("keys list");
    assert!(list.status.success());
    let stdout = String::from_utf8_lossy(&list.stdout);
    let row = stdout
        .lines()
        .find(|l| l.starts_with(&kid))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        row.contains("ES256") && row.contains("current") && row.ends_with("present"),
        "{row}"
    );

    // A restart keeps the key.
    let mut child = gatehouse(cwd.path())
        .arg("serve")
        .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_healthy(&mut child, &base);
    let (_, _, body) = raw_http::get(&format!("{base}/jwks.json")).expect("get");
    assert!(body.contains(&kid), "{body}");
    assert!(stop(child).status.success());
}

/// The file is read, and the environment overrides it.
#[test]
fn environment_overrides_the_configuration_file() {
    let cwd = TempDir::new().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    std::fs::write(
        cwd.path().join("custom.toml"),
        format!("bind = \"127.0.0.1:{port}\"\nproduct_name = \"From the file\"\n"),
    )
    .expect("write");
    let mut child = gatehouse(cwd.path())
        .args(["serve", "--config", "custom.toml"])
        .env("GATEHOUSE_PRODUCT_NAME", "From the environment")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_healthy(&mut child, &base);
    let (_, _, body) =
        raw_http::get(&format!("{base}/.well-known/oauth-protected-resource")).expect("get");
    let prm: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(prm["resource_name"], "From the environment");
    assert!(stop(child).status.success());
}

/// The JWK set's kids, read over the socket.
fn jwks_kids(base: &str) -> Vec<String> {
    let (status, _, body) = raw_http::get(&format!("{base}/jwks.json")).expect("get");
    assert_eq!(status, 200);
    let jwks: serde_json::Value = serde_json::from_str(&body).expect("json");
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// Polls the JWK set until `wanted` holds; the bound is a few check intervals.
fn wait_for_jwks(base: &str, what: &str, wanted: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let kids = jwks_kids(base);
        if wanted(&kids) {
            return kids;
        }
        assert!(Instant::now() < deadline, "{what}: JWK set still {kids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `gatehouse keys rotate` and `keys retire` against a running server: it notices each change
/// within `key_rotation.check_interval` without a restart; a retire needs confirmation.
#[test]
fn key_commands_act_on_a_running_server() {
    let cwd = TempDir::new().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let with_env = |cmd: &mut Command| {
        cmd.env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
            .env("GATEHOUSE_KEY_ROTATION__CHECK_INTERVAL", "1");
    };
    let mut serve = gatehouse(cwd.path());
    serve.arg("serve");
    with_env(&mut serve);
    let mut server = Running(Some(
        serve
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    ));
    wait_healthy(server.0.as_mut().expect("child"), &base);
    let first = jwks_kids(&base);
    assert_eq!(first.len(), 1);
    let a = first[0].clone();

    let run = |args: &[&str]| {
        let mut cmd = gatehouse(cwd.path());
        cmd.args(args).stdin(Stdio::null());
        with_env(&mut cmd);
        cmd.output().expect("run")
    };

    let rotate = run(&["keys", "rotate"]);
    let stdout = String::from_utf8_lossy(&rotate.stdout);
    assert!(
        rotate.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    assert!(stdout.contains("as next"), "{stdout}");
    let kids = wait_for_jwks(&base, "next key published", |k| k.len() == 2);
    let b = kids.iter().find(|k| **k != a).expect("new kid").clone();
    assert!(stdout.contains(&b), "{stdout}");

    // A second rotation while one waits is a clear one-line error.
    let again = run(&["keys", "rotate"]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already published as next"), "{stderr}");

    // Retire needs confirmation; with no terminal, --yes.
    let unconfirmed = run(&["keys", "retire", &a]);
    assert_eq!(unconfirmed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unconfirmed.stderr);
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(jwks_kids(&base).len(), 2, "nothing changed");
    // The JWK set alone could not tell (the server reads the key states once a second): the
    // database says the key is still current.
    let list = run(&["keys", "list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    let row_a = listed.lines().find(|l| l.starts_with(a.as_str()));
    assert!(
        row_a.is_some_and(|l| l.contains("current") && !l.contains("retired")),
        "{listed}"
    );

    let retire = run(&["keys", "retire", &a, "--yes"]);
    assert!(
        retire.status.success(),
        "{}",
        String::from_utf8_lossy(&retire.stderr)
    );
    let kids = wait_for_jwks(&base, "retired key withdrawn", |k| !k.contains(&a));
    assert_eq!(kids, vec![b.clone()]);

    let list = run(&["keys", "list"]);
    let stdout = String::from_utf8_lossy(&list.stdout);
    let row = |kid: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(kid))
            .unwrap_or_else(|| panic!("{stdout}"))
            .to_owned()
    };
    assert!(
        row(&a).contains("retired") && row(&a).ends_with("destroyed"),
        "{stdout}"
    );
    assert!(row(&b).contains("current"), "{stdout}");

    let unknown = run(&["keys", "retire", "no-such-kid", "--yes"]);
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no signing key has the id no-such-kid"),
        "{stderr}"
    );

    let output = stop(server.take());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("signing keys reloaded"), "{stderr}");
}

/// `log_format = "json"`: every line `serve` writes is one JSON object, and a line written while
/// a request is served carries that request's id, the one its response names in `x-request-id`
/// (an id sent by a client that is not a trusted proxy is replaced, so it cannot write into the
/// log); its span has the path, never the query.
#[tokio::test]
async fn json_logs_carry_each_requests_id() {
    let cwd = TempDir::new().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = gatehouse(cwd.path())
        .arg("serve")
        .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
        .env("GATEHOUSE_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_healthy(&mut child, &base);
    let res = reqwest::Client::new()
        .get(format!("{base}/mcp?code=secret-in-query"))
        .header("x-request-id", "forged-by-client")
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), 401);
    let id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a request id")
        .to_owned();
    assert_ne!(id, "forged-by-client");
    assert!(id.len() >= 12, "a process prefix and a counter: {id}");
    let other = reqwest::get(format!("{base}/health")).await.expect("get");
    assert_ne!(
        other
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(id.as_str()),
        "one id per request"
    );

    let output = stop(child);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| {
        l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("listening"))
    }));
    let refusal = lines
        .iter()
        .find(|l| l["fields"]["kind"] == "mcp.refused")
        .unwrap_or_else(|| panic!("the refusal's audit line: {stderr}"));
    assert_eq!(refusal["span"]["request_id"], id.as_str(), "{refusal}");
    assert_eq!(refusal["span"]["path"], "/mcp");
    assert!(!stderr.contains("secret-in-query"), "no query in the log");
}
