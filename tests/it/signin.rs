//! The browser leg (RFC 6749 §4.1.1-4.1.2, RFC 7636, RFC 8707, RFC 9207, RFC 9700): sign-in,
//! consent and the redirect back, driven with a cookie jar against the real router, with the
//! authorization request built by the independent `oauth2` crate.

use crate::support::{Agent, ISSUER, TestApp, query_of, sqlite_url};
use gatehouse::clock::Clock;
use gatehouse::domain::Secret;
use sqlx::Connection;
use tempfile::TempDir;

use crate::support::PASSWORD;
use crate::support::oauth::authorize_request;
const CLAUDE_CALLBACK: &str = "https://claude.ai/api/mcp/auth_callback";

async fn claude_app() -> (TestApp, String) {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app.register_client("Claude", &[CLAUDE_CALLBACK]).await;
    (app, client_id)
}

#[tokio::test]
async fn full_browser_leg_login_consent_redirect_with_code_state_iss() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, state) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp", "claudeai"]);

    let res = agent.get(&path).await;
    assert_eq!(res.status, 303);
    let login = res.location();
    assert!(login.starts_with("/login?request="), "{login}");

    let res = agent.sign_in(&login, "alice", PASSWORD).await;
    assert_eq!(res.status, 303, "{}", res.text());
    let consent = res.location();
    assert!(consent.starts_with("/consent?request="), "{consent}");

    let page = agent.get(&consent).await;
    let html = page.text();
    assert!(
        html.contains("<span class=\"app-name\">Claude</span>"),
        "{html}"
    );
    assert!(
        html.contains("<span class=\"host\">claude.ai</span>"),
        "redirect host shown: {html}"
    );
    assert!(
        html.contains("Unverified application"),
        "DCR clients are flagged"
    );
    assert!(
        html.contains("Use this server&#39;s MCP tools on your behalf"),
        "scope described"
    );
    assert!(
        html.contains("name=\"decision\" value=\"allow\"")
            && html.contains("name=\"decision\" value=\"deny\"")
    );

    let res = agent.decide(&consent, "allow").await;
    assert_eq!(
        res.status, 303,
        "302/303, never 307: a 307 would re-POST the consent form to the client's callback"
    );
    let back = res.location();
    assert!(back.starts_with(&format!("{CLAUDE_CALLBACK}?")), "{back}");
    let q = query_of(&back);
    assert_eq!(q["state"], state);
    assert_eq!(q["iss"], ISSUER, "RFC 9207 iss");
    let code = &q["code"];
    assert!(code.len() >= 43, "at least 128 bits: {code}");

    // Stored by hash only, with everything the exchange needs.
    let Some(gatehouse::store::CodeState::Fresh(record)) = app
        .state
        .store
        .code_for_exchange(Secret::presented(code).hash().as_str())
        .await
        .expect("store")
    else {
        panic!("code not stored by hash, or not fresh");
    };
    assert_eq!(record.client_id, client_id);
    assert_eq!(record.user_id, "u_alice");
    assert_eq!(record.redirect_uri, CLAUDE_CALLBACK);
    assert_eq!(record.resource, format!("{ISSUER}/mcp"));
    assert_eq!(record.scopes, "mcp", "claudeai dropped, mcp kept");
    assert_eq!(
        record.expires_at - record.created_at,
        time::Duration::seconds(60)
    );
    for file in ["gatehouse.db", "gatehouse.db-wal"] {
        let bytes = std::fs::read(app.dir.path().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(code.len()).any(|w| w == code.as_bytes()),
            "code in clear in {file}"
        );
    }
    // The client completed a sign-in: it is in use now.
    let client = app
        .state
        .store
        .client(&client_id)
        .await
        .expect("store")
        .expect("client");
    assert!(client.last_used_at.is_some());
}

/// Client or redirect URI not trustworthy: an error page, never a redirect (RFC 6749 §4.1.2.1).
#[tokio::test]
async fn untrusted_client_or_redirect_gets_an_error_page_and_no_redirect() {
    let (app, client_id) = claude_app().await;
    let ok = |extra: &str| {
        format!(
            "/authorize?response_type=code&code_challenge_method=S256&code_challenge={}{extra}",
            "a".repeat(43)
        )
    };
    let cases = [
        ok("&redirect_uri=https%3A%2F%2Fclaude.ai%2Fapi%2Fmcp%2Fauth_callback"),
        ok(&format!(
            "&client_id=gh_unknown&redirect_uri={CLAUDE_CALLBACK}"
        )),
        ok(&format!(
            "&client_id={client_id}&redirect_uri=https%3A%2F%2Fevil.example%2Fcb"
        )),
        ok(&format!(
            "&client_id={client_id}&redirect_uri=https%3A%2F%2Fclaude.ai%2Fapi%2Fmcp%2Fauth_callback%2Fx"
        )),
        ok(&format!(
            "&client_id={client_id}&redirect_uri=https%3A%2F%2Fclaude.ai%3A444%2Fapi%2Fmcp%2Fauth_callback"
        )),
        ok(&format!(
            "&client_id={client_id}&client_id={client_id}&redirect_uri={CLAUDE_CALLBACK}"
        )),
        ok(&format!(
            "&client_id={client_id}&redirect_uri={CLAUDE_CALLBACK}&redirect_uri={CLAUDE_CALLBACK}"
        )),
        ok(
            "&client_id=https%3A%2F%2F10.0.0.1%2Fclient.json&redirect_uri=https%3A%2F%2Fa.example%2Fcb",
        ),
    ];
    for path in cases {
        let res = app.get(&path).await;
        assert_eq!(res.status, 400, "{path}");
        assert!(res.header("location").is_none(), "{path} must not redirect");
        assert!(
            res.header("content-type")
                .unwrap_or_default()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(res.text().contains("<h1>"), "{path}");
    }
}

/// Every request error, `client_id` and `redirect_uri` aside, for `client_id` redirecting to
/// `callback` with `state=s1`: the request and the error it must give.
fn request_error_cases(client_id: &str, callback: &str) -> Vec<(String, &'static str)> {
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let base = format!("/authorize?client_id={client_id}&redirect_uri={callback}&state=s1");
    vec![
        (
            format!("{base}&code_challenge={challenge}&code_challenge_method=S256"),
            "invalid_request",
        ),
        (
            format!(
                "{base}&response_type=token&code_challenge={challenge}&code_challenge_method=S256"
            ),
            "unsupported_response_type",
        ),
        (format!("{base}&response_type=code"), "invalid_request"),
        (
            format!(
                "{base}&response_type=code&code_challenge={challenge}&code_challenge_method=plain"
            ),
            "invalid_request",
        ),
        (
            format!("{base}&response_type=code&code_challenge={challenge}"),
            "invalid_request",
        ),
        (
            format!("{base}&response_type=code&code_challenge=short&code_challenge_method=S256"),
            "invalid_request",
        ),
        (
            format!(
                "{base}&response_type=code&code_challenge={challenge}&code_challenge_method=S256&resource=https%3A%2F%2Fother.example%2Fmcp"
            ),
            "invalid_target",
        ),
        (
            format!(
                "{base}&response_type=code&code_challenge={challenge}&code_challenge_method=S256&scope=mcp&scope=mcp"
            ),
            "invalid_request",
        ),
        (
            format!(
                "{base}&response_type=code&code_challenge={challenge}&code_challenge_method=S256&prompt=none%20consent"
            ),
            "invalid_request",
        ),
    ]
}

/// Every other error goes back to the client with error, state and iss, when the server trusts
/// its redirect URI: here an operator's client.
#[tokio::test]
async fn request_errors_are_redirected_with_error_state_and_iss() {
    let app = TestApp::sqlite().await;
    let (client_id, _) = app
        .operator_client_with(
            "none",
            &["authorization_code", "refresh_token"],
            "mcp",
            CLAUDE_CALLBACK,
        )
        .await;
    for (path, error) in request_error_cases(&client_id, CLAUDE_CALLBACK) {
        let res = app.get(&path).await;
        assert_eq!(res.status, 303, "{path}");
        let location = res.location();
        assert!(location.starts_with(CLAUDE_CALLBACK), "{location}");
        let q = query_of(&location);
        assert_eq!(q["error"], error, "{path}");
        assert!(!q["error_description"].is_empty());
        assert_eq!(q["state"], "s1");
        assert_eq!(q["iss"], ISSUER);
    }
    let refused = gatehouse::audit::read(&app.state.store, &Default::default(), None, 50)
        .await
        .expect("audit");
    let refused: Vec<_> = refused
        .iter()
        .filter(|e| e.event.kind == "authorize.refused")
        .collect();
    assert_eq!(refused.len(), 9);
    for event in refused {
        assert_eq!(event.event.client_id.as_deref(), Some(client_id.as_str()));
        assert_eq!(event.event.ip.as_deref(), Some("192.0.2.10"));
    }
}

/// Security review: anyone may register a client whose redirect URI is a phishing page, and any
/// error sent the browser there with no one's consent (an open redirector). RFC 9700 §4.11.2:
/// for a self-registered client nobody here has connected, every error is the error page, with
/// no `Location`; once the person signed in here has connected it, errors go back to it.
#[tokio::test]
async fn errors_of_a_client_nobody_connected_stay_on_the_error_page() {
    let (app, client_id) = claude_app().await;
    for (path, error) in request_error_cases(&client_id, CLAUDE_CALLBACK) {
        let res = app.get(&path).await;
        assert_eq!(res.status, 400, "{path}");
        assert!(res.header("location").is_none(), "{path}");
        let text = res.text();
        assert!(text.contains(&format!("({error})")), "{path}: {text}");
        assert!(text.contains("you were not sent back"), "{text}");
    }
    // prompt=none with nobody signed in: the page too.
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let res = app.get(&format!("{path}&prompt=none")).await;
    assert_eq!(res.status, 400);
    assert!(res.header("location").is_none());

    // Connected by alice in this browser: the same errors go back to the client.
    let mut agent = Agent::new(&app);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    agent.decide(&consent, "allow").await;
    for (path, error) in request_error_cases(&client_id, CLAUDE_CALLBACK) {
        let res = agent.get(&path).await;
        assert_eq!(res.status, 303, "{path}");
        assert_eq!(query_of(&res.location())["error"], error, "{path}");
    }
}

/// Trailing-slash and case variants of the resource are accepted (MCP authorization spec,
/// canonical server URI).
#[tokio::test]
async fn resource_variants_and_absence_are_accepted() {
    let (app, client_id) = claude_app().await;
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    for resource in [
        "",
        "&resource=https%3A%2F%2Fmcp.example.com%2Fmcp%2F",
        "&resource=HTTPS%3A%2F%2FMCP.EXAMPLE.COM%2Fmcp",
    ] {
        let path = format!(
            "/authorize?response_type=code&client_id={client_id}&redirect_uri={CLAUDE_CALLBACK}&code_challenge={challenge}&code_challenge_method=S256{resource}"
        );
        let res = app.get(&path).await;
        assert_eq!(res.status, 303, "{resource}");
        assert!(
            res.location().starts_with("/login?request="),
            "{resource}: {}",
            res.location()
        );
    }
}

/// Loopback redirects match on any port (RFC 8252 §7.3); the browser goes back to the port
/// the client asked for.
#[tokio::test]
async fn loopback_redirect_matches_any_port() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app
        .register_client(
            "Claude Code",
            &["http://localhost/callback", "http://127.0.0.1/callback"],
        )
        .await;
    let mut agent = Agent::new(&app);
    let (path, state) = authorize_request(&client_id, "http://localhost:53124/callback", &["mcp"]);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    let page = agent.get(&consent).await.text();
    assert!(
        page.contains("Runs on your computer"),
        "loopback-only clients are flagged"
    );
    let back = agent.decide(&consent, "allow").await.location();
    assert!(
        back.starts_with("http://localhost:53124/callback?"),
        "{back}"
    );
    assert_eq!(query_of(&back)["state"], state);
}

/// Security review: once consented, a public client got a code at once at any loopback port,
/// with whatever PKCE challenge the caller made; anyone on the machine could start that flow.
/// RFC 8252 §8.6, RFC 6749 §10.2: a public client cannot be authenticated, so its remembered
/// consent stands only at the redirect URI it was given for; another port asks again. A client
/// with a fixed https redirect (Claude.ai) is not asked again.
#[tokio::test]
async fn a_public_client_at_another_loopback_port_is_asked_again() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let client_id = app
        .register_client("Claude Code", &["http://127.0.0.1/callback"])
        .await;
    let mut agent = Agent::new(&app);
    let first = "http://127.0.0.1:50001/callback";
    let (path, _) = authorize_request(&client_id, first, &["mcp"]);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    agent.decide(&consent, "allow").await;
    // The same port: straight back with a code.
    let (path, _) = authorize_request(&client_id, first, &["mcp"]);
    let back = agent.get(&path).await.location();
    assert!(
        back.starts_with(first) && query_of(&back).contains_key("code"),
        "{back}"
    );
    // Another port: the consent page, asking for everything again.
    let (path, _) = authorize_request(&client_id, "http://127.0.0.1:50002/callback", &["mcp"]);
    let consent = agent.get(&path).await.location();
    assert!(consent.starts_with("/consent?"), "{consent}");
    let page = agent.get(&consent).await.text();
    assert!(!page.contains("Already allowed earlier"), "{page}");
    let back = agent.decide(&consent, "allow").await.location();
    assert!(
        back.starts_with("http://127.0.0.1:50002/callback?"),
        "{back}"
    );

    // Claude.ai's fixed https callback: remembered as before.
    let claude = app.register_client("Claude", &[CLAUDE_CALLBACK]).await;
    let (path, _) = authorize_request(&claude, CLAUDE_CALLBACK, &["mcp"]);
    let consent = agent.get(&path).await.location();
    agent.decide(&consent, "allow").await;
    let (path, _) = authorize_request(&claude, CLAUDE_CALLBACK, &["mcp"]);
    assert!(
        agent
            .get(&path)
            .await
            .location()
            .starts_with(CLAUDE_CALLBACK)
    );
}

#[tokio::test]
async fn omitted_redirect_uri_uses_the_only_registered_one() {
    let (app, client_id) = claude_app().await;
    let path = format!(
        "/authorize?response_type=code&client_id={client_id}&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
    );
    assert!(
        app.get(&path)
            .await
            .location()
            .starts_with("/login?request=")
    );
}

/// Granted = requested ∩ what the user's roles allow; nothing grantable is access_denied.
#[tokio::test]
async fn scopes_are_limited_by_roles() {
    let dir = TempDir::new().expect("tempdir");
    let url = sqlite_url(&dir);
    let app = TestApp::with(dir, &url, |c| {
        c.roles.insert(
            "reader".into(),
            vec![gatehouse::domain::ScopeToken::parse("activity:read").expect("scope")],
        );
    })
    .await;
    app.add_user("bob", PASSWORD, &["reader"]).await;
    let client_id = app.register_client("Claude", &[CLAUDE_CALLBACK]).await;

    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp", "activity:read"]);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "bob", PASSWORD).await.location();
    let page = agent.get(&consent).await.text();
    assert!(
        page.contains("<code>activity:read</code>") && !page.contains("<code>mcp</code>"),
        "{page}"
    );
    agent.decide(&consent, "allow").await;

    // Bob has connected the client, so its redirect URI is trusted with the error.
    let (path, state) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let q = query_of(&agent.get(&path).await.location());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], state);
}

#[tokio::test]
async fn deny_answers_access_denied() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, state) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    let q = query_of(&agent.decide(&consent, "deny").await.location());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], state);
    assert_eq!(q["iss"], ISSUER);
    assert!(!q.contains_key("code"));
}

/// Consent is remembered per (user, client, resource, scopes): the same or fewer scopes skip the
/// page; more shows only what is new; prompt=consent forces the page.
#[tokio::test]
async fn remembered_consent_skips_the_page_and_prompt_consent_forces_it() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    agent.decide(&consent, "allow").await;

    // Same scope again: straight back with a code.
    let (path, state) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let back = agent.get(&path).await.location();
    let q = query_of(&back);
    assert!(q.contains_key("code"), "{back}");
    assert_eq!(q["state"], state);

    // More scopes: the page shows only the new one, and the old one as already allowed.
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp", "activity:read"]);
    let consent = agent.get(&path).await.location();
    assert!(consent.starts_with("/consent?"), "{consent}");
    let html = agent.get(&consent).await.text();
    let list =
        &html[html.find("<ul class=\"scopes\">").expect("list")..html.find("</ul>").expect("end")];
    assert!(
        list.contains("activity:read") && !list.contains("<code>mcp</code>"),
        "{list}"
    );
    assert!(
        html.contains("Already allowed earlier: <code>mcp</code>"),
        "{html}"
    );
    agent.decide(&consent, "allow").await;

    // prompt=consent: the page again, with everything.
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let consent = agent
        .get(&format!("{path}&prompt=consent"))
        .await
        .location();
    assert!(consent.starts_with("/consent?"), "{consent}");
}

/// An operator's client is trusted with errors, so `prompt=none` answers by redirect.
#[tokio::test]
async fn prompt_none_answers_without_a_page() {
    let app = TestApp::sqlite().await;
    app.add_user("alice", PASSWORD, &["user"]).await;
    let (client_id, _) = app
        .operator_client_with(
            "none",
            &["authorization_code", "refresh_token"],
            "mcp",
            CLAUDE_CALLBACK,
        )
        .await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let q = query_of(&agent.get(&format!("{path}&prompt=none")).await.location());
    assert_eq!(q["error"], "login_required");

    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    assert!(consent.starts_with("/consent"));
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let q = query_of(&agent.get(&format!("{path}&prompt=none")).await.location());
    assert_eq!(q["error"], "consent_required");

    // prompt=login asks for the password again even when signed in.
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let res = agent.get(&format!("{path}&prompt=login")).await;
    assert!(res.location().starts_with("/login?"), "{}", res.location());
}

/// CSRF: a login without the session's token, or with another session's, is refused before any
/// password check; a consent token works only for its own request, once.
#[tokio::test]
async fn csrf_missing_or_foreign_is_refused() {
    let (app, client_id) = claude_app().await;
    let mut victim = Agent::new(&app);
    let mut attacker = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = victim.get(&path).await.location();
    let request = login.trim_start_matches("/login?request=").to_owned();
    victim.get(&login).await;
    let foreign = attacker.get("/login").await.hidden("csrf");
    for csrf in ["", foreign.as_str()] {
        let res = victim
            .post_form(
                "/login",
                &[
                    ("csrf", csrf),
                    ("request", &request),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(res.status, 403, "csrf {csrf:?}");
        assert!(res.text().contains("Your sign-in form expired"));
    }
    // Not signed in by those attempts.
    assert!(
        victim
            .get(&format!("/consent?request={request}"))
            .await
            .location()
            .starts_with("/login")
    );

    let consent = victim.sign_in(&login, "alice", PASSWORD).await.location();
    let page = victim.get(&consent).await;
    let (good, request) = (page.hidden("csrf"), page.hidden("request"));
    // A second pending request of the same session has its own token.
    let (other_path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp", "activity:read"]);
    let other = victim.get(&other_path).await.location();
    let other_token = victim.get(&other).await.hidden("csrf");
    for csrf in ["", "forged", other_token.as_str()] {
        let res = victim
            .post_form(
                "/consent",
                &[("csrf", csrf), ("request", &request), ("decision", "allow")],
            )
            .await;
        assert_eq!(res.status, 403, "consent csrf {csrf:?}");
        assert!(res.header("location").is_none());
    }
    let res = victim
        .post_form(
            "/consent",
            &[
                ("csrf", &good),
                ("request", &request),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(res.status, 303);
    // The same form again: the request is used up.
    let res = victim
        .post_form(
            "/consent",
            &[
                ("csrf", &good),
                ("request", &request),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(res.status, 400);
    assert!(res.text().contains("This sign-in has expired"));
}

/// Failed sign-ins: a growing delay, then a lockout; the message never tells whether the
/// account exists.
#[tokio::test]
async fn repeated_failures_are_delayed_then_locked_out() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let wrong = agent.sign_in(&login, "alice", "wrong password").await;
    let unknown = agent.sign_in(&login, "nobody", "wrong password").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(unknown.status, 401);
    assert!(
        wrong.text().contains("Incorrect user name or password.")
            && unknown.text().contains("Incorrect user name or password.")
    );

    // Second and third failures of alice, then an immediate retry must wait.
    agent.sign_in(&login, "alice", "wrong password").await;
    agent.sign_in(&login, "alice", "wrong password").await;
    let res = agent.sign_in(&login, "alice", "wrong password").await;
    assert_eq!(res.status, 429, "{}", res.text());
    assert!(res.text().contains("Wait 2 seconds"), "{}", res.text());
    assert_eq!(res.header("retry-after"), Some("2"), "every 429 says when");

    // Waiting out each delay, the 10th failure locks the account for 15 minutes.
    for _ in 0..7 {
        app.clock.advance(time::Duration::seconds(61));
        let res = agent.sign_in(&login, "alice", "wrong password").await;
        assert_eq!(res.status, 401, "{}", res.text());
    }
    app.clock.advance(time::Duration::seconds(61));
    let res = agent.sign_in(&login, "alice", PASSWORD).await;
    assert_eq!(
        res.status, 429,
        "even the right password is refused while locked"
    );
    assert!(res.text().contains("locked"), "{}", res.text());
    // Locked for 15 minutes from the 10th failure, 61 s ago.
    assert_eq!(res.header("retry-after"), Some("839"));

    // After the lockout (the old request expired meanwhile): a new sign-in works.
    app.clock.advance(time::Duration::minutes(15));
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let res = agent.sign_in(&login, "alice", PASSWORD).await;
    assert_eq!(res.status, 303, "{}", res.text());
    assert!(res.location().starts_with("/consent?"));

    let events = gatehouse::audit::read(&app.state.store, &Default::default(), None, 100)
        .await
        .expect("audit");
    let failures = events
        .iter()
        .filter(|e| e.event.kind == "login.failure")
        .count();
    assert!(failures >= 11, "{failures}");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.kind == "login.success")
            .count(),
        1
    );
    assert!(
        !events
            .iter()
            .any(|e| e.event.detail.to_string().contains(PASSWORD)),
        "no password in the audit log"
    );
}

/// A failed sign-in leaves a row per account name and per address, whatever name was tried; once
/// older than the window (15 minutes) it counts for nothing, and the clean-up deletes it.
#[tokio::test]
async fn forgotten_sign_in_failures_are_deleted() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let res = agent.sign_in(&login, "nobody", "wrong password").await;
    assert_eq!(res.status, 401);
    let rows = "SELECT count(*) FROM login_throttle";
    assert_eq!(
        app.count_rows(rows).await,
        2,
        "the name's and the address's"
    );
    // Within the window, and the margin for other instances' clocks: kept.
    app.clock.advance(time::Duration::minutes(19));
    assert_eq!(app.state.prune().await.expect("prune").sign_in_failures, 0);
    app.clock.advance(time::Duration::minutes(2));
    assert_eq!(app.state.prune().await.expect("prune").sign_in_failures, 2);
    assert_eq!(app.count_rows(rows).await, 0);
}

/// The session cookie: HttpOnly, SameSite=Lax, Secure with the __Host- prefix on an https issuer;
/// a new session id at sign-in; sign-out ends the session.
#[tokio::test]
async fn session_cookie_is_hardened_rotated_at_login_and_ended_by_logout() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let cookie = agent
        .set_cookie_headers
        .last()
        .expect("session cookie")
        .clone();
    assert!(cookie.starts_with("__Host-gatehouse="), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    assert!(!cookie.contains("Domain="), "{cookie}");
    let before = agent.cookies["__Host-gatehouse"].clone();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    assert_ne!(
        agent.cookies["__Host-gatehouse"], before,
        "session id rotated at sign-in"
    );

    let page = agent.get("/logout").await;
    assert!(page.text().contains("Signed in as alice"));
    let csrf = page.hidden("csrf");
    // A copy of the cookie, used just before sign-out (the server has just read its session).
    let mut copy = Agent::new(&app);
    copy.cookies = agent.cookies.clone();
    assert!(
        copy.get("/logout")
            .await
            .text()
            .contains("Signed in as alice")
    );
    assert_eq!(
        agent
            .post_form("/logout", &[("csrf", "wrong")])
            .await
            .status,
        403
    );
    let res = agent.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(res.status, 200);
    assert!(res.text().contains("You are signed out"));
    let res = agent.get(&consent).await;
    assert_eq!(res.status, 400, "the pending request went with the session");
    let page = copy.get("/logout").await.text();
    assert!(
        page.contains("You are signed out"),
        "the copied cookie signs nobody in after sign-out: {page}"
    );
}

/// Security review: the database held the cookie-signing key and every session id in clear, so
/// reading the file was enough to forge a signed-in admin's cookie. The key is no longer in the
/// database (without a passphrase it is a 0600 file in `keys_dir`), and session ids are stored
/// only as hashes: even with the key file too, a cookie made from what the database holds finds
/// no session.
#[tokio::test]
async fn a_cookie_forged_from_the_database_signs_nobody_in() {
    use tower_sessions::cookie::{Cookie, CookieJar, Key};
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    agent.sign_in(&login, "alice", PASSWORD).await;
    assert!(
        agent
            .get("/logout")
            .await
            .text()
            .contains("Signed in as alice")
    );

    assert_eq!(
        app.state
            .store
            .existing_server_secret("session_cookie_key")
            .await
            .expect("read"),
        None,
        "the cookie key is not in the database"
    );
    let file = app.dir.path().join("keys").join("session_cookie_key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let key = std::fs::read_to_string(&file).expect("key file");
    let key = {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(key.trim())
            .expect("base64");
        Key::try_from(bytes.as_slice()).expect("key")
    };
    let mut db = sqlx::AnyConnection::connect(&app.database_url)
        .await
        .expect("connect");
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_all(&mut db)
        .await
        .expect("sessions");
    assert!(!stored.is_empty());
    for id in stored {
        let mut jar = CookieJar::new();
        jar.signed_mut(&key)
            .add(Cookie::new("__Host-gatehouse", id));
        let forged = jar
            .get("__Host-gatehouse")
            .expect("cookie")
            .value()
            .to_owned();
        let mut thief = Agent::new(&app);
        thief.cookies.insert("__Host-gatehouse".into(), forged);
        let page = thief.get("/logout").await.text();
        assert!(page.contains("You are signed out"), "{page}");
    }
}

/// Every page of the flow, and its redirects: no script, no framing, no referrer, no caching.
#[tokio::test]
async fn pages_and_redirects_carry_the_hardening_headers() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let redirect = agent.get(&path).await;
    let login_page = agent.get(&redirect.location()).await;
    let error_page = agent.get("/authorize?client_id=nope").await;
    for res in [&redirect, &login_page, &error_page] {
        let csp = res.header("content-security-policy").expect("CSP");
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("frame-ancestors 'none'")
                && !csp.contains("script-src"),
            "{csp}"
        );
        assert_eq!(res.header("x-frame-options"), Some("DENY"));
        assert_eq!(res.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(res.header("cache-control"), Some("no-store"));
    }
    assert!(!login_page.text().contains("<script"), "no inline script");
    let css = app.get("/static/gatehouse.css").await;
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
}

/// A password change signs out existing sessions; removing a user removes their consents.
#[tokio::test]
async fn password_change_and_removal_end_what_the_user_had() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    agent.decide(&consent, "allow").await;
    assert_eq!(consents_of_alice(&app, &client_id).await, 1);

    app.clock.advance(time::Duration::seconds(5));
    let hash = gatehouse::password::hash("a brand new password".into())
        .await
        .expect("hash");
    app.state
        .store
        .set_password("alice", &hash, app.clock.now())
        .await
        .expect("passwd");
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    assert!(
        agent.get(&path).await.location().starts_with("/login?"),
        "signed out by the password change"
    );

    assert!(
        app.state
            .store
            .remove_user("u_alice", "test", app.clock.now())
            .await
            .expect("remove")
            .is_some()
    );
    assert_eq!(consents_of_alice(&app, &client_id).await, 0);
}

/// An operator-registered client is not flagged as unverified.
#[tokio::test]
async fn operator_clients_are_not_flagged_unverified() {
    let (app, _) = claude_app().await;
    let mut agent = Agent::new(&app);
    let now = app.clock.now();
    let client = gatehouse::oauth::register::validate(
        gatehouse::oauth::register::RegistrationRequest {
            redirect_uris: Some(vec!["https://agent.example.com/cb".into()]),
            token_endpoint_auth_method: Some("none".into()),
            client_name: Some("Internal agent".into()),
            ..Default::default()
        },
        &app.state.config,
        &gatehouse::domain::RedirectPolicy::permissive(),
        gatehouse::domain::ClientKind::Operator,
        "gh_operator".into(),
        now,
    )
    .expect("valid");
    app.state
        .store
        .insert_client(&client)
        .await
        .expect("insert");
    let (path, _) = authorize_request("gh_operator", "https://agent.example.com/cb", &["mcp"]);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    let html = agent.get(&consent).await.text();
    assert!(
        html.contains("Internal agent") && !html.contains("Unverified application"),
        "{html}"
    );
}

/// A client registered only for client_credentials gets no code (RFC 6749 §4.1.2.1); an
/// operator's client, so its redirect URI is trusted with the error.
#[tokio::test]
async fn clients_not_registered_for_codes_are_unauthorized() {
    let app = TestApp::sqlite().await;
    let (client_id, _) = app
        .operator_client("client_secret_basic", &["client_credentials"], "mcp")
        .await;
    let (path, state) = authorize_request(&client_id, "https://service.example.com/cb", &["mcp"]);
    let q = query_of(&app.get(&path).await.location());
    assert_eq!(q["error"], "unauthorized_client");
    assert_eq!(q["state"], state);
}

/// Alice's remembered consents to `client_id` for the MCP resource, as rows of the table.
async fn consents_of_alice(app: &TestApp, client_id: &str) -> i64 {
    app.count_rows(&format!(
        "SELECT count(*) FROM consents WHERE user_id = 'u_alice' AND client_id = '{client_id}' \
         AND resource = '{ISSUER}/mcp'"
    ))
    .await
}

/// Removes a client as the CLI does (this instance's client cache is not told).
async fn remove_client(app: &TestApp, client_id: &str) {
    let removed = app
        .state
        .store
        .remove_client(client_id, "test", app.clock.now())
        .await
        .expect("remove");
    assert!(removed.is_some());
}

/// A client removed by another process (the CLI) is still in this one's client cache for a
/// while: `/authorize` may read it from there, but no code is issued for it, and the person is
/// not sent to its redirect URI.
#[tokio::test]
async fn a_client_removed_elsewhere_gets_no_code_from_a_cached_copy() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    let back = agent.decide(&consent, "allow").await.location();
    assert!(back.starts_with(CLAUDE_CALLBACK), "{back}");
    // Consent stands: the next authorization answers with a code at once.
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    assert!(query_of(&agent.get(&path).await.location()).contains_key("code"));
    remove_client(&app, &client_id).await;
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let res = agent.get(&path).await;
    let next = res.location();
    assert!(!next.starts_with(CLAUDE_CALLBACK), "{next}");
    let page = agent.get(&next).await;
    assert_eq!(page.status, axum::http::StatusCode::BAD_REQUEST);
    assert!(page.header("location").is_none());
}

/// Removing a client takes its consents and unredeemed codes with it.
#[tokio::test]
async fn removing_a_client_removes_its_consents_and_codes() {
    let (app, client_id) = claude_app().await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorize_request(&client_id, CLAUDE_CALLBACK, &["mcp"]);
    let login = agent.get(&path).await.location();
    let consent = agent.sign_in(&login, "alice", PASSWORD).await.location();
    let code = query_of(&agent.decide(&consent, "allow").await.location())["code"].clone();
    let hash = Secret::presented(&code).hash();
    assert!(
        app.state
            .store
            .code_for_exchange(hash.as_str())
            .await
            .expect("store")
            .is_some()
    );
    remove_client(&app, &client_id).await;
    assert!(
        app.state
            .store
            .code_for_exchange(hash.as_str())
            .await
            .expect("store")
            .is_none()
    );
    assert_eq!(consents_of_alice(&app, &client_id).await, 0);
}
