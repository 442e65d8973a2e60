//! Configuration as an operator meets it: each invalid setting stops `gatehouse serve` before it
//! listens, with exit status 2 and one clear line naming the problem.

use std::process::Output;

use crate::support::process::gatehouse;
use tempfile::TempDir;

fn serve_with(env: &[(&str, &str)], file: Option<&str>) -> Output {
    let cwd = TempDir::new().expect("tempdir");
    let mut cmd = gatehouse(cwd.path());
    if let Some(toml) = file {
        std::fs::write(cwd.path().join("gatehouse.toml"), toml).expect("write");
    }
    cmd.arg("serve").envs(env.iter().copied());
    cmd.output().expect("run")
}

fn assert_refused(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line per problem: {stderr}");
    assert!(
        lines[0].starts_with("gatehouse: configuration error: "),
        "{stderr}"
    );
    assert!(lines[0].contains(needle), "expected {needle:?} in {stderr}");
}

#[test]
fn each_invalid_setting_fails_start_with_its_own_message() {
    let cases: &[(&str, &str, &str)] = &[
        ("GATEHOUSE_ISSUER", "not a url", "is not an absolute URL"),
        (
            "GATEHOUSE_ISSUER",
            "http://mcp.example.com",
            "must use https",
        ),
        (
            "GATEHOUSE_ISSUER",
            "https://mcp.example.com/",
            "must not end with a slash",
        ),
        (
            "GATEHOUSE_ISSUER",
            "https://mcp.example.com?a=b",
            "must not have a query",
        ),
        (
            "GATEHOUSE_ISSUER",
            "https://mcp.example.com#top",
            "must not have a fragment",
        ),
        (
            "GATEHOUSE_ISSUER",
            "https://mcp.example.com/auth",
            "must not have a path",
        ),
        (
            "GATEHOUSE_DATABASE_URL",
            "mysql://db/gatehouse",
            "database_url must start with",
        ),
        (
            "GATEHOUSE_DATABASE_URL",
            "postgres://u@db:99999/x",
            "not a valid PostgreSQL URL",
        ),
        (
            "GATEHOUSE_DATABASE_URL",
            "sqlite::memory:",
            "in-memory SQLite",
        ),
        (
            "GATEHOUSE_ACCESS_TOKEN_TTL",
            "0",
            "access_token_ttl must be between",
        ),
        (
            "GATEHOUSE_ACCESS_TOKEN_TTL",
            "soon",
            "`access_token_ttl` (environment variable GATEHOUSE_ACCESS_TOKEN_TTL): invalid type",
        ),
        (
            "GATEHOUSE_AUTHORIZATION_CODE_TTL",
            "3600",
            "authorization_code_ttl must be between",
        ),
        (
            "GATEHOUSE_AUDIT_RETENTION",
            "999999999999999",
            "audit_retention must be at most",
        ),
        ("GATEHOUSE_BIND", "0.0.0.0:8080", "issuer is not set"),
        ("GATEHOUSE_SIGNING_ALGORITHM", "HS256", "signing_algorithm"),
        ("GATEHOUSE_DEFAULT_SCOPES", "[\"admin\"]", "not in `scopes`"),
        (
            "GATEHOUSE_ALLOWED_ORIGINS",
            "[\"https://a.example/x\"]",
            "allowed_origins",
        ),
        (
            "GATEHOUSE_ISUER",
            "https://mcp.example.com",
            "unknown setting `isuer` (environment variable GATEHOUSE_ISUER)",
        ),
    ];
    for (var, value, needle) in cases {
        let output = serve_with(&[(var, value)], None);
        assert_refused(&output, needle);
    }
}

#[test]
fn unknown_key_in_the_file_names_the_file() {
    let output = serve_with(&[], Some("isuer = \"https://mcp.example.com\"\n"));
    assert_refused(&output, "unknown setting `isuer` (in TOML file ");
}

#[test]
fn several_problems_are_all_reported_at_once() {
    let output = serve_with(
        &[("GATEHOUSE_DATABASE_URL", "mysql://db")],
        Some("issuer = \"http://mcp.example.com/\"\nbogus = true\n"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
    assert!(
        stderr
            .lines()
            .all(|l| l.starts_with("gatehouse: configuration error: "))
    );
}

/// An identity provider whose secret is not in the environment, with no rule admitting anyone,
/// and password sign-in off with no provider left: each refused at start, one line each.
#[test]
fn identity_providers_are_checked_at_start() {
    let output = serve_with(
        &[],
        Some(
            "[[identity_providers]]\nid = \"corp\"\nname = \"Corp\"\nkind = \"oidc\"\n\
             issuer = \"https://idp.example.com\"\nclient_id = \"g\"\n\
             client_secret_env = \"GATEHOUSE_TEST_UNSET_SECRET\"\n",
        ),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("GATEHOUSE_TEST_UNSET_SECRET"), "{stderr}");
    assert!(stderr.contains("nobody could sign in with it"), "{stderr}");
    let output = serve_with(&[], Some("local_login = false\n"));
    assert_refused(
        &output,
        "local_login = false needs at least one [[identity_providers]]",
    );
}

/// The credentials of `/mcp`: `forwarded` with no trusted proxy could never be believed, a
/// group mapped to an unknown role, an unknown source and API token lifetimes out of range are
/// each refused at start.
#[test]
fn credential_sources_and_token_lifetimes_are_checked_at_start() {
    let cases = [
        (
            "[mcp]\ncredentials = [\"oauth\", \"forwarded\"]\n",
            "list the proxy's addresses there",
        ),
        (
            "trusted_proxies = [\"10.0.0.1/32\"]\n[mcp]\ncredentials = [\"forwarded\"]\nforwarded_group_roles = { eng = \"nobody\" }\n",
            "which is not a role of [roles]",
        ),
        ("[mcp]\ncredentials = []\n", "must name at least one"),
        ("[mcp]\ncredentials = [\"cookie\"]\n", "cookie"),
        (
            "[api_tokens]\nmax_days = 0\n",
            "api_tokens.max_days must be 1 to 3650",
        ),
    ];
    for (toml, needle) in cases {
        let output = serve_with(&[], Some(toml));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{toml}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{toml}: expected {needle:?} in {stderr}"
        );
    }
}

#[test]
fn a_named_config_file_must_exist() {
    let cwd = TempDir::new().expect("tempdir");
    let output = gatehouse(cwd.path())
        .args(["serve", "--config", "missing.toml"])
        .output()
        .expect("run");
    assert_refused(&output, "missing.toml does not exist");
}

#[test]
fn unusable_keys_dir_stops_start_with_one_line() {
    let cwd = TempDir::new().expect("tempdir");
    std::fs::write(cwd.path().join("keyfile"), "x").expect("write");
    let last = failure_line(&cwd, &["serve"], &[("GATEHOUSE_KEYS_DIR", "keyfile")]);
    assert!(
        last.starts_with(
            "gatehouse: error: keys_dir keyfile is not usable: exists but is not a directory"
        ),
        "{last}"
    );
}

/// Runs `args` in `cwd` (with `env`, and a bind address nothing listens on), which must fail with
/// exit status 1; the last line of its error output.
fn failure_line(cwd: &TempDir, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = gatehouse(cwd.path())
        .args(args)
        .envs(env.iter().copied())
        .env("GATEHOUSE_BIND", "127.0.0.1:1")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr.lines().last().unwrap_or_default().to_owned()
}

/// A database file that is not one stops start with one line that says so once (it said the
/// cause four times, each error of the chain repeating the one below).
#[test]
fn a_file_that_is_not_a_database_stops_start_saying_so_once() {
    let cwd = TempDir::new().expect("tempdir");
    std::fs::write(
        cwd.path().join("gatehouse.db"),
        "not a database ".repeat(40),
    )
    .expect("write");
    for command in [&["serve"][..], &["keys", "list"][..]] {
        let last = failure_line(&cwd, command, &[]);
        assert!(
            last.starts_with("gatehouse: error: cannot open database sqlite://gatehouse.db: "),
            "{last}"
        );
        assert_eq!(
            last.matches("file is not a database").count(),
            1,
            "the cause once: {last}"
        );
    }
}

/// Key commands on a database no server has started yet say what to do, in one line.
#[test]
fn key_commands_before_the_first_start_say_what_to_do() {
    let cwd = TempDir::new().expect("tempdir");
    for (args, says) in [
        (
            vec!["keys", "rotate"],
            "there is no current signing key yet: start `gatehouse serve` once first",
        ),
        (
            vec!["keys", "retire", "some-kid", "--yes"],
            "no signing key has the id some-kid",
        ),
        (vec!["keys", "retire", "some-kid"], "add --yes to confirm"),
    ] {
        let output = gatehouse(cwd.path()).args(&args).output().expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn help_describes_every_command_group() {
    let cwd = TempDir::new().expect("tempdir");
    let output = gatehouse(cwd.path()).arg("--help").output().expect("run");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for group in ["serve", "users", "clients", "keys", "tokens", "--config"] {
        assert!(help.contains(group), "{group} missing from --help:\n{help}");
    }
    let output = gatehouse(cwd.path())
        .args(["tokens", "revoke"])
        .output()
        .expect("run");
    assert_eq!(
        output.status.code(),
        Some(2),
        "revoke needs --user or --client"
    );
}

/// `gatehouse clients add | list | remove`: the operator's own clients, on the same database
/// `serve` uses; the secret is printed once and never listed.
#[test]
fn operator_manages_clients_from_the_command_line() {
    let cwd = TempDir::new().expect("tempdir");
    let run = |args: &[&str]| gatehouse(cwd.path()).args(args).output().expect("run");
    let added = run(&[
        "clients",
        "add",
        "--name",
        "Internal agent",
        "--redirect-uri",
        "https://agent.example.com/cb",
        "--redirect-uri",
        "http://127.0.0.1/cb",
        "--confidential",
    ]);
    let stdout = String::from_utf8_lossy(&added.stdout).to_string();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_id: "))
        .expect("client id printed")
        .to_owned();
    let secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("client_secret: "))
        .expect("secret printed once")
        .to_owned();
    assert!(id.starts_with("gh_"));

    let listed = run(&["clients", "list"]);
    let list = String::from_utf8_lossy(&listed.stdout);
    let row = list
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        row.contains("operator")
            && row.contains("client_secret_basic")
            && row.contains("https://agent.example.com/cb"),
        "{row}"
    );
    assert!(!list.contains(&secret), "the secret is never listed");

    let public = run(&[
        "clients",
        "add",
        "--name",
        "Desktop",
        "--redirect-uri",
        "cursor://x.example/cb",
    ]);
    assert!(public.status.success());
    assert!(!String::from_utf8_lossy(&public.stdout).contains("client_secret"));

    let bad = run(&[
        "clients",
        "add",
        "--name",
        "Bad",
        "--redirect-uri",
        "javascript:alert(1)",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.starts_with("gatehouse: error: redirect URI \"javascript:alert(1)\""),
        "{stderr}"
    );

    assert!(run(&["clients", "remove", &id]).status.success());
    let again = run(&["clients", "remove", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no client with id"));
}

#[test]
fn each_invalid_upstream_stops_start_with_its_own_message() {
    let cases: &[(&str, &str)] = &[
        (
            "[[upstreams]]\nname = \"crm__x\"\ntransport = \"streamable_http\"\nurl = \"http://127.0.0.1:9/mcp\"\n",
            "the name must be 1 to 24 letters, digits or '-'",
        ),
        (
            "[[upstreams]]\nname = \"fs\"\ntransport = \"stdio\"\n",
            "a stdio upstream needs a command",
        ),
        (
            "[[upstreams]]\nname = \"crm\"\ntransport = \"streamable_http\"\nurl = \"http://127.0.0.1:9/mcp\"\naudience = \"http://127.0.0.1:8080/mcp\"\n",
            "may not be this server's own resource",
        ),
        (
            "[[upstreams]]\nname = \"crm\"\ntransport = \"streamable_http\"\nurl = \"http://127.0.0.1:9/mcp\"\nidentity = \"static\"\nstatic_header = \"X-Api-Key\"\nstatic_secret_env = \"NOT_SET_ANYWHERE\"\n",
            "needs static_header (a header name) and static_secret_env",
        ),
        (
            "[[upstreams]]\nname = \"crm\"\ntransport = \"smtp\"\n",
            "`upstreams.0.transport`: unknown variant: found `smtp`",
        ),
        (
            "[[upstreams]]\nname = \"a\"\ntransport = \"streamable_http\"\nurl = \"http://127.0.0.1:9/mcp\"\n[[upstreams]]\nname = \"b\"\ntransport = \"streamable_http\"\nurl = \"http://127.0.0.1:10/mcp\"\naudience = \"http://127.0.0.1:9/mcp\"\n",
            "have the same audience",
        ),
        (
            "[[upstreams]]\nname = \"fs\"\ntransport = \"stdio\"\ncommand = \"node\"\nisolation = \"shared\"\nidentity = \"env\"\n",
            "identity = \"env\" needs isolation = \"per_user\"",
        ),
        (
            "[mcp.tool_access.nobody]\nallow = [\"*\"]\n",
            "mcp.tool_access names the role \"nobody\", which is not in `roles`",
        ),
        (
            "[mcp.tool_scopes]\n\"crm__find\" = \"mcp\"\n",
            "mcp.tool_scopes names \"crm__find\"",
        ),
    ];
    for (toml, needle) in cases {
        let output = serve_with(&[], Some(toml));
        assert_refused(&output, needle);
    }
}
