//! Sign-in through an identity provider (OpenID Connect), against a real provider nobody here
//! wrote: panva's `oidc-provider` on loopback, with its own sign-in form. The MCP client's side
//! is the `oauth2` crate's authorization request and Gatehouse's token endpoint.

use axum::http::StatusCode;
use serde_json::json;

use crate::support::github::Github;
use crate::support::oauth::{authorization, exchange};
use crate::support::oidc::{OidcProvider, config_for};
use crate::support::{
    Agent, CALLBACK, ISSUER, TestApp, TestResponse, jwt_part, query_of, sqlite_url,
};

const PROVIDER: &str = "corp";

/// Gatehouse with the provider at `issuer` configured (and `local_login` as given), and a
/// registered MCP client.
async fn app_with(issuer: &str, local_login: bool) -> (TestApp, String) {
    let dir = tempfile::TempDir::new().expect("dir");
    let url = sqlite_url(&dir);
    let config = config_for(PROVIDER, issuer);
    let app = TestApp::with(dir, &url, move |c| {
        c.identity_providers = vec![config];
        c.local_login = local_login;
    })
    .await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    (app, client_id)
}

/// `https://mcp.example.com/path?query` as the in-process router's path.
fn local(url: &str) -> String {
    url.strip_prefix(ISSUER).unwrap_or(url).to_owned()
}

/// From the MCP client's authorization request to the sign-in page's provider button, through
/// the provider as `login`, back to Gatehouse: Gatehouse's answer to the callback.
async fn through_provider(
    agent: &mut Agent<'_>,
    provider: &OidcProvider,
    client_id: &str,
    login: &str,
) -> (TestResponse, String) {
    let (path, verifier) = authorization(client_id);
    let login_page = agent.get(&path).await.location();
    let page = agent.get(&login_page).await;
    assert_eq!(page.status, 200);
    let href = button(&page.text());
    let to_provider = agent.get(&href).await;
    assert_eq!(
        to_provider.status,
        StatusCode::SEE_OTHER,
        "{}",
        to_provider.text()
    );
    let back = provider.sign_in(&to_provider.location(), login).await;
    assert!(
        back.starts_with(&format!("{ISSUER}/login/provider/{PROVIDER}/callback?")),
        "{back}"
    );
    (agent.get(&local(&back)).await, verifier)
}

/// The "Continue with ..." link of the sign-in page.
fn button(html: &str) -> String {
    let at = html
        .find("class=\"provider\" href=\"")
        .expect("a provider button");
    let rest = &html[at + "class=\"provider\" href=\"".len()..];
    rest[..rest.find('"').expect("end")].replace("&amp;", "&")
}

async fn audit_kinds(app: &TestApp) -> Vec<(String, serde_json::Value)> {
    app.state
        .store
        .audit_events(&Default::default(), None, 500)
        .await
        .expect("audit")
        .into_iter()
        .map(|r| (r.event.kind, r.event.detail))
        .collect()
}

/// A person the rules admit signs in at the provider, consents at Gatehouse, and the MCP client
/// gets tokens for a new account keyed by the provider's subject (not by email), with the
/// provider's default role; a second sign-in finds the same account.
#[tokio::test]
async fn an_admitted_person_signs_in_through_the_provider() {
    let provider = OidcProvider::start(ISSUER, PROVIDER).await;
    let (app, client_id) = app_with(&provider.issuer, true).await;
    let mut agent = Agent::new(&app);
    let (res, verifier) = through_provider(&mut agent, &provider, &client_id, "alice").await;
    // First time: Gatehouse's own consent for the MCP client, after the person is known.
    let consent = res.location();
    assert!(consent.starts_with("/consent"), "{consent}");
    let back = agent.decide(&consent, "allow").await.location();
    assert!(back.starts_with(CALLBACK), "{back}");
    let code = query_of(&back)["code"].clone();
    let tokens = exchange(&app, &client_id, &code, &verifier).await;
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    let access = tokens.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let sub = jwt_part(&access, 1)["sub"]
        .as_str()
        .expect("sub")
        .to_owned();
    let user = app
        .state
        .store
        .user(&sub)
        .await
        .expect("read")
        .expect("user");
    assert_eq!(user.username.as_str(), "alice@example.test");
    assert_eq!(user.roles, ["user"]);
    assert!(user.password_hash.is_empty(), "no password");
    let linked = app.state.store.identities_of(&sub).await.expect("read");
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0].identity.subject, "alice");
    assert_eq!(linked[0].identity.issuer, provider.issuer);
    assert!(linked[0].identity.email_verified);

    // No password sign-in for that account: it fails like a wrong password.
    let mut other = Agent::new(&app);
    let (path, _) = authorization(&client_id);
    let login = other.get(&path).await.location();
    let refused = other.sign_in(&login, "alice@example.test", "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    // Again, in a new browser: the same account, and consent is remembered.
    let mut again = Agent::new(&app);
    let (res, _) = through_provider(&mut again, &provider, &client_id, "alice").await;
    assert!(res.location().starts_with(CALLBACK), "{}", res.location());
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 1);
    let events = audit_kinds(&app).await;
    assert!(
        events
            .iter()
            .any(|(k, d)| k == "login.success" && d["provider"] == PROVIDER)
    );
}

/// The rules decide who may sign in: an address outside the admitted domain, or one the
/// provider does not say is verified, gets a page that says so, the refusal is audited, and no
/// account is created.
#[tokio::test]
async fn people_the_rules_do_not_admit_are_refused_with_a_page() {
    let provider = OidcProvider::start(ISSUER, PROVIDER).await;
    let (app, client_id) = app_with(&provider.issuer, true).await;
    for login in ["mallory", "eve"] {
        let mut agent = Agent::new(&app);
        let (res, _) = through_provider(&mut agent, &provider, &client_id, login).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{login}");
        assert!(
            res.text().contains("You may not sign in here"),
            "{}",
            res.text()
        );
        assert!(res.header("location").is_none());
    }
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 0);
    let refused = audit_kinds(&app)
        .await
        .into_iter()
        .filter(|(k, _)| k == "login.refused")
        .count();
    assert_eq!(refused, 2);
}

/// Roles granted by the provider follow its claims at every sign-in: the admin group's role is
/// given, then taken away when the group is gone.
#[tokio::test]
async fn provider_roles_are_granted_and_removed_at_each_sign_in() {
    let provider = OidcProvider::start(ISSUER, PROVIDER).await;
    let (app, client_id) = app_with(&provider.issuer, true).await;
    let mut agent = Agent::new(&app);
    let (res, _) = through_provider(&mut agent, &provider, &client_id, "root").await;
    assert!(res.location().starts_with("/consent"));
    let user = app
        .state
        .store
        .user_by_name("root@example.test")
        .await
        .expect("read")
        .expect("user");
    assert_eq!(user.roles, ["user", "admin"]);

    provider
        .set_person(
            "root",
            json!({"email": "root@example.test", "email_verified": true, "groups": ["staff"]}),
        )
        .await;
    let mut later = Agent::new(&app);
    through_provider(&mut later, &provider, &client_id, "root").await;
    let user = app
        .state
        .store
        .user(&user.id)
        .await
        .expect("read")
        .expect("user");
    assert_eq!(user.roles, ["user"], "the admin role went with the group");
}

/// The provider rotates its signing key between two sign-ins: Gatehouse fetches its keys again
/// when an ID token names one it does not know.
#[tokio::test]
async fn a_new_provider_key_is_fetched_when_an_id_token_names_it() {
    let provider = OidcProvider::start(ISSUER, PROVIDER).await;
    let (app, client_id) = app_with(&provider.issuer, true).await;
    let mut agent = Agent::new(&app);
    let (res, _) = through_provider(&mut agent, &provider, &client_id, "alice").await;
    assert!(res.location().starts_with("/consent"));
    provider.rotate_keys().await;
    let mut later = Agent::new(&app);
    let (res, _) = through_provider(&mut later, &provider, &client_id, "alice").await;
    assert!(res.location().starts_with("/consent"), "{}", res.text());
}

/// A callback that does not belong to the sign-in this browser started (another `state`, no
/// sign-in at all, a second use) signs nobody in.
#[tokio::test]
async fn a_callback_with_another_state_signs_nobody_in() {
    let provider = OidcProvider::start(ISSUER, PROVIDER).await;
    let (app, client_id) = app_with(&provider.issuer, true).await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorization(&client_id);
    let login_page = agent.get(&path).await.location();
    let href = button(&agent.get(&login_page).await.text());
    let to_provider = agent.get(&href).await.location();
    let back = provider.sign_in(&to_provider, "alice").await;
    let tampered = back.replace("state=", "state=x");
    let res = agent.get(&local(&tampered)).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    // The sign-in was spent by the tampered answer: the real one no longer works either.
    let res = agent.get(&local(&back)).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    // Another browser cannot use it at all.
    let mut stranger = Agent::new(&app);
    assert_eq!(
        stranger.get(&local(&back)).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 0);
    let reasons: Vec<String> = audit_kinds(&app)
        .await
        .into_iter()
        .filter(|(k, _)| k == "login.failure")
        .map(|(_, d)| d["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        reasons.contains(&"state_mismatch".to_owned()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"no_sign_in_in_progress".to_owned()),
        "{reasons:?}"
    );
}

/// A provider that cannot be reached ends on a clear page (502), not a 500, and is audited.
#[tokio::test]
async fn an_unreachable_provider_ends_on_a_page() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let (app, client_id) = app_with(&format!("http://127.0.0.1:{port}"), true).await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorization(&client_id);
    let login_page = agent.get(&path).await.location();
    let href = button(&agent.get(&login_page).await.text());
    let res = agent.get(&href).await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert!(res.text().contains("Sign-in provider unavailable"));
}

/// With `local_login = false` the sign-in page offers the provider only, and a password form
/// posted anyway is refused.
#[tokio::test]
async fn without_local_login_only_the_provider_is_offered() {
    let (app, client_id) = app_with("http://127.0.0.1:1", false).await;
    app.add_user("alice", crate::support::PASSWORD, &["user"])
        .await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorization(&client_id);
    let login_page = agent.get(&path).await.location();
    let page = agent.get(&login_page).await;
    assert!(page.text().contains("Continue with Example SSO"));
    assert!(!page.text().contains("type=\"password\""));
    let res = agent
        .post_form(
            "/login",
            &[
                ("username", "alice"),
                ("password", crate::support::PASSWORD),
            ],
        )
        .await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    // (A form without its CSRF token is also 403: the page says which refusal this is.)
    assert!(
        res.text().contains("Password sign-in is turned off"),
        "{}",
        res.text()
    );
}

/// `gatehouse users link|unlink|list` against the real binary: an admin links a provider account
/// to a user, it cannot be linked twice, `users list` shows it, and it is unlinked again.
#[test]
fn an_admin_links_and_unlinks_a_provider_account_from_the_command_line() {
    let cwd = tempfile::TempDir::new().expect("tempdir");
    std::fs::write(
        cwd.path().join("gatehouse.toml"),
        "[[identity_providers]]\nid = \"corp\"\nname = \"Corp\"\nkind = \"oidc\"\n\
         issuer = \"https://idp.example.com\"\nclient_id = \"g\"\n\
         client_secret_env = \"CORP_SECRET\"\n[identity_providers.admit]\n\
         email_domains = [\"example.com\"]\n",
    )
    .expect("config");
    let run = |args: &[&str]| {
        let mut cmd = crate::support::process::gatehouse(cwd.path());
        cmd.env("CORP_SECRET", "s3cret").args(args);
        cmd.output().expect("run")
    };
    let mut add = crate::support::process::gatehouse(cwd.path());
    add.env("CORP_SECRET", "s3cret");
    crate::support::process::add_user(add, "bob", crate::support::PASSWORD);

    let link = [
        "users",
        "link",
        "bob",
        "--provider",
        "corp",
        "--subject",
        "s-bob",
    ];
    let out = run(&link);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&link);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already linked"));
    let out = run(&["users", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("password corp:s-bob"), "{listed}");
    let unlink = [
        "users",
        "unlink",
        "bob",
        "--provider",
        "corp",
        "--subject",
        "s-bob",
    ];
    assert!(run(&unlink).status.success());
    let out = run(&unlink);
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no linked corp account"));
    let out = run(&[
        "users",
        "link",
        "bob",
        "--provider",
        "nope",
        "--subject",
        "x",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no identity provider \"nope\""));
}

/// RFC 9207: the provider says it sends `iss` in every answer; an answer without it, or naming
/// another issuer, signs nobody in (a mix-up between providers looks like that).
#[tokio::test]
async fn an_answer_without_the_providers_iss_or_with_another_signs_nobody_in() {
    let provider = OidcProvider::start(ISSUER, PROVIDER).await;
    let (app, client_id) = app_with(&provider.issuer, true).await;
    let iss = format!(
        "iss={}",
        url::form_urlencoded::byte_serialize(provider.issuer.as_bytes()).collect::<String>()
    );
    for (change, reason) in [
        ("", "issuer_missing"),
        ("iss=https%3A%2F%2Fother.example.com", "issuer_mismatch"),
    ] {
        let mut agent = Agent::new(&app);
        let (path, _) = authorization(&client_id);
        let login_page = agent.get(&path).await.location();
        let href = button(&agent.get(&login_page).await.text());
        let to_provider = agent.get(&href).await.location();
        let back = provider.sign_in(&to_provider, "alice").await;
        assert!(back.contains(&iss), "{back}");
        let changed = back.replace(&format!("&{iss}"), "").replace(&iss, "");
        let changed = if change.is_empty() {
            changed
        } else {
            format!("{changed}&{change}")
        };
        let res = agent.get(&local(&changed)).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{reason}");
        let reasons: Vec<String> = audit_kinds(&app)
            .await
            .into_iter()
            .filter(|(k, _)| k == "login.failure")
            .map(|(_, d)| d["reason"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert!(reasons.contains(&reason.to_owned()), "{reasons:?}");
    }
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 0);
}

const GITHUB: &str = "github";

/// Gatehouse with the GitHub fixture as its one provider, and a registered MCP client.
async fn app_with_github(github: &Github) -> (TestApp, String) {
    let dir = tempfile::TempDir::new().expect("dir");
    let url = sqlite_url(&dir);
    let config = crate::support::github::config_for(GITHUB, &github.url);
    let app = TestApp::with(dir, &url, move |c| {
        c.identity_providers = vec![config];
    })
    .await;
    let client_id = app.register_client("Claude", &[CALLBACK]).await;
    (app, client_id)
}

/// The MCP client's authorization request, the sign-in page's "Continue with GitHub", GitHub's
/// sign-in as `login`, and Gatehouse's answer to the callback.
async fn through_github(
    agent: &mut Agent<'_>,
    github: &Github,
    client_id: &str,
    login: &str,
) -> (TestResponse, String) {
    let (path, verifier) = authorization(client_id);
    let login_page = agent.get(&path).await.location();
    let page = agent.get(&login_page).await;
    assert!(
        page.text().contains("Continue with GitHub"),
        "{}",
        page.text()
    );
    let to_github = agent.get(&button(&page.text())).await;
    assert_eq!(
        to_github.status,
        StatusCode::SEE_OTHER,
        "{}",
        to_github.text()
    );
    let back = github.sign_in(&to_github.location(), login).await;
    (agent.get(&local(&back)).await, verifier)
}

/// GitHub over plain OAuth 2.0: the account is keyed by GitHub's numeric user id, named after the
/// verified primary address, with the role of an organisation the person is an active member
/// of. A renamed login is the same account; a role whose organisation membership is gone goes.
#[tokio::test]
async fn a_github_member_signs_in_keyed_by_user_id_with_organisation_roles() {
    let github = Github::start(ISSUER, GITHUB).await;
    let (app, client_id) = app_with_github(&github).await;
    let mut agent = Agent::new(&app);
    let (res, verifier) = through_github(&mut agent, &github, &client_id, "octocat").await;
    let asked = github.last_authorize();
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(asked["scope"], "read:user user:email read:org");
    let consent = res.location();
    assert!(consent.starts_with("/consent"), "{consent}: {}", res.text());
    let back = agent.decide(&consent, "allow").await.location();
    let code = query_of(&back)["code"].clone();
    let tokens = exchange(&app, &client_id, &code, &verifier).await;
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    let access = tokens.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let sub = jwt_part(&access, 1)["sub"]
        .as_str()
        .expect("sub")
        .to_owned();
    let user = app
        .state
        .store
        .user(&sub)
        .await
        .expect("read")
        .expect("user");
    assert_eq!(
        user.username.as_str(),
        "octo@example.test",
        "the verified primary address"
    );
    assert_eq!(user.roles, ["user", "admin"]);
    let linked = app.state.store.identities_of(&sub).await.expect("read");
    assert_eq!(linked.len(), 1);
    assert_eq!(
        linked[0].identity.subject, "583231",
        "GitHub's user id, not the login"
    );
    assert_eq!(linked[0].identity.issuer, github.url);
    assert_eq!(
        linked[0].identity.email.as_deref(),
        Some("octo@example.test")
    );
    assert!(linked[0].identity.email_verified);
    // Membership is asked per organisation the rules name, nothing more.
    let calls = github.calls();
    assert!(
        calls.contains(&"/user/memberships/orgs/acme".to_owned()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"/user/memberships/orgs/acme-admins".to_owned()),
        "{calls:?}"
    );

    github.change("octocat", |p| {
        p.login = "octo-renamed".into();
        p.orgs.retain(|(o, _)| o != "acme-admins");
    });
    let mut later = Agent::new(&app);
    let (res, _) = through_github(&mut later, &github, &client_id, "octo-renamed").await;
    assert!(
        res.location().starts_with(CALLBACK),
        "consent remembered: {}",
        res.location()
    );
    assert_eq!(
        app.count_rows("SELECT count(*) FROM users").await,
        1,
        "the same account"
    );
    let user = app
        .state
        .store
        .user(&sub)
        .await
        .expect("read")
        .expect("user");
    assert_eq!(
        user.roles,
        ["user"],
        "the admin role went with the organisation"
    );
}

/// An invitation to the organisation is not membership, and an unverified primary address in
/// the admitted domain admits nobody (a verified secondary address elsewhere does not count
/// either): both get the refusal page, audited, and no account.
#[tokio::test]
async fn github_pending_members_and_unverified_addresses_are_refused() {
    let github = Github::start(ISSUER, GITHUB).await;
    let (app, client_id) = app_with_github(&github).await;
    for login in ["pending", "unverified"] {
        let mut agent = Agent::new(&app);
        let (res, _) = through_github(&mut agent, &github, &client_id, login).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{login}: {}", res.text());
        assert!(
            res.text().contains("You may not sign in here"),
            "{}",
            res.text()
        );
    }
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 0);
    let refused: Vec<serde_json::Value> = audit_kinds(&app)
        .await
        .into_iter()
        .filter(|(k, _)| k == "login.refused")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .any(|d| d["email"] == "unverified@example.test" && d["email_verified"] == false),
        "{refused:?}"
    );
}

/// GitHub answers a code it no longer accepts with status 200 and an error body: the sign-in
/// ends on a page saying so, audited as a refused code, not as an unreachable provider.
#[tokio::test]
async fn a_code_github_no_longer_accepts_ends_on_a_page() {
    let github = Github::start(ISSUER, GITHUB).await;
    let (app, client_id) = app_with_github(&github).await;
    let mut agent = Agent::new(&app);
    let (path, _) = authorization(&client_id);
    let login_page = agent.get(&path).await.location();
    let href = button(&agent.get(&login_page).await.text());
    let to_github = agent.get(&href).await.location();
    let back = github.sign_in(&to_github, "octocat").await;
    github.expire_codes();
    let res = agent.get(&local(&back)).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{}", res.text());
    assert!(
        res.text().contains("did not accept this sign-in"),
        "{}",
        res.text()
    );
    assert_eq!(app.count_rows("SELECT count(*) FROM users").await, 0);
    let failures: Vec<serde_json::Value> = audit_kinds(&app)
        .await
        .into_iter()
        .filter(|(k, _)| k == "login.failure")
        .map(|(_, d)| d)
        .collect();
    assert!(
        failures.iter().any(|d| d["reason"] == "code_refused"
            && d["detail"]
                .as_str()
                .is_some_and(|t| t.contains("bad_verification_code"))),
        "{failures:?}"
    );
}

/// The account page's link form: its CSRF token, and where it posts for provider `id`.
async fn link_from_account(
    agent: &mut Agent<'_>,
    provider: &OidcProvider,
    login: &str,
) -> TestResponse {
    let page = agent.get("/account").await;
    assert_eq!(page.status, 200, "{}", page.text());
    let csrf = page.hidden("csrf");
    let to_provider = agent
        .post_form(&format!("/account/link/{PROVIDER}"), &[("csrf", &csrf)])
        .await;
    assert_eq!(
        to_provider.status,
        StatusCode::SEE_OTHER,
        "{}",
        to_provider.text()
    );
    let back = provider.sign_in(&to_provider.location(), login).await;
    agent.get(&local(&back)).await
}

/// A person signed in with a password links their account at the provider from `/account`; from
/// then on the provider signs them in to the same account. They can unlink it, and link it
/// again; an account at the provider that another user has stays theirs; nobody can unlink
/// their last way to sign in; every form needs the session's CSRF token.
#[tokio::test]
async fn a_signed_in_person_links_and_unlinks_a_provider_account_from_their_page() {
    let provider = OidcProvider::start(ISSUER, PROVIDER).await;
    let (app, client_id) = app_with(&provider.issuer, true).await;
    app.add_user("carol", crate::support::PASSWORD, &["user"])
        .await;
    app.add_user("dave", crate::support::PASSWORD, &["user"])
        .await;

    // Not signed in: the page sends the browser to sign in.
    let mut carol = Agent::new(&app);
    assert_eq!(carol.get("/account").await.location(), "/login");
    let signed = carol
        .sign_in("/login", "carol", crate::support::PASSWORD)
        .await;
    assert!(
        signed.text().contains("href=\"/account\""),
        "{}",
        signed.text()
    );
    let page = carol.get("/account").await.text();
    assert!(
        page.contains("Signed in as <strong>carol</strong>"),
        "{page}"
    );
    assert!(page.contains("<strong>Password</strong>"), "{page}");
    assert!(page.contains("Link Example SSO"), "{page}");

    // A form without the session's token changes nothing.
    let forged = carol
        .post_form(&format!("/account/link/{PROVIDER}"), &[("csrf", "forged")])
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);

    let linked = link_from_account(&mut carol, &provider, "alice").await;
    assert_eq!(
        linked.location(),
        "/account?notice=linked",
        "{}",
        linked.text()
    );
    let page = carol.get(&linked.location()).await.text();
    assert!(page.contains("Linked: that account signs you in"), "{page}");
    assert!(page.contains("alice@example.test"), "{page}");
    assert_eq!(
        app.count_rows("SELECT count(*) FROM users").await,
        2,
        "no new account"
    );

    // The provider now signs carol in: consent, and the token is carol's.
    let mut elsewhere = Agent::new(&app);
    let (res, verifier) = through_provider(&mut elsewhere, &provider, &client_id, "alice").await;
    let back = elsewhere.decide(&res.location(), "allow").await.location();
    let tokens = exchange(&app, &client_id, &query_of(&back)["code"], &verifier).await;
    let access = tokens.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let carol_user = app
        .state
        .store
        .user_by_name("carol")
        .await
        .expect("read")
        .expect("carol");
    assert_eq!(jwt_part(&access, 1)["sub"], carol_user.id.as_str());

    // dave cannot take the same provider account.
    let mut dave = Agent::new(&app);
    dave.sign_in("/login", "dave", crate::support::PASSWORD)
        .await;
    let taken = link_from_account(&mut dave, &provider, "alice").await;
    assert_eq!(taken.location(), "/account?notice=linked-elsewhere");
    assert!(
        dave.get(&taken.location())
            .await
            .text()
            .contains("already signs in another user here")
    );

    // carol unlinks it (with the token), and it no longer signs her in.
    let page = carol.get("/account").await;
    let fields = [
        ("csrf", page.hidden("csrf")),
        ("provider", page.hidden("provider")),
        ("issuer", page.hidden("issuer")),
        ("subject", page.hidden("subject")),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut forged_fields = fields.clone();
    forged_fields[0].1 = "forged";
    assert_eq!(
        carol
            .post_form("/account/unlink", &forged_fields)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let res = carol.post_form("/account/unlink", &fields).await;
    assert_eq!(res.location(), "/account?notice=unlinked");
    assert!(
        app.state
            .store
            .identities_of(&carol_user.id)
            .await
            .expect("read")
            .is_empty()
    );
    let by_self: Vec<(String, serde_json::Value)> = audit_kinds(&app)
        .await
        .into_iter()
        .filter(|(k, d)| k.starts_with("identity.") && d["by"] == "self")
        .collect();
    let kinds: Vec<&str> = by_self.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        kinds.contains(&"identity.linked") && kinds.contains(&"identity.unlinked"),
        "{by_self:?}"
    );

    // A provider-only account cannot unlink its one way to sign in.
    let mut root = Agent::new(&app);
    through_provider(&mut root, &provider, &client_id, "root").await;
    let page = root.get("/account").await;
    assert!(!page.text().contains("<strong>Password</strong>"));
    let fields = [
        ("csrf", page.hidden("csrf")),
        ("provider", page.hidden("provider")),
        ("issuer", page.hidden("issuer")),
        ("subject", page.hidden("subject")),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let res = root.post_form("/account/unlink", &fields).await;
    assert_eq!(res.location(), "/account?notice=last-way");
    let page = root.get(&res.location()).await.text();
    assert!(page.contains("That is your only way to sign in"), "{page}");
    assert!(page.contains("root@example.test"), "still linked: {page}");
}

/// `link_existing_by_email` is off by default: a provider account whose verified address is an
/// existing user's name gets an account of its own. Turned on, its first sign-in links it to
/// that user (audited `by: verified_email`), and later ones sign that user in.
#[tokio::test]
async fn a_verified_address_signs_in_an_existing_user_only_when_configured() {
    let provider = OidcProvider::start(ISSUER, PROVIDER).await;
    for on in [false, true] {
        let dir = tempfile::TempDir::new().expect("dir");
        let url = sqlite_url(&dir);
        let mut config = config_for(PROVIDER, &provider.issuer);
        config.link_existing_by_email = on;
        let app = TestApp::with(dir, &url, move |c| {
            c.identity_providers = vec![config];
        })
        .await;
        let client_id = app.register_client("Claude", &[CALLBACK]).await;
        app.add_user("alice@example.test", crate::support::PASSWORD, &["user"])
            .await;
        let existing = app
            .state
            .store
            .user_by_name("alice@example.test")
            .await
            .expect("read")
            .expect("user");
        for _ in 0..2 {
            let mut agent = Agent::new(&app);
            let (res, _) = through_provider(&mut agent, &provider, &client_id, "alice").await;
            assert!(res.location().starts_with("/consent"), "{}", res.text());
        }
        let linked = app
            .state
            .store
            .identities_of(&existing.id)
            .await
            .expect("read");
        let users = app.count_rows("SELECT count(*) FROM users").await;
        let by_email = audit_kinds(&app)
            .await
            .into_iter()
            .filter(|(k, d)| k == "identity.linked" && d["by"] == "verified_email")
            .count();
        if on {
            assert_eq!(linked.len(), 1, "linked to the existing user");
            assert_eq!((users, by_email), (1, 1));
        } else {
            assert!(
                linked.is_empty(),
                "never linked by address unless configured"
            );
            assert_eq!((users, by_email), (2, 0));
        }
    }
}
