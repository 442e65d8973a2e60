//! A real OpenID provider on loopback for the sign-in tests: panva's `oidc-provider` from npm
//! (pinned in `tests/fixtures/upstream`, installed by `tests/run`), started by
//! `tests/fixtures/upstream/oidc-provider.mjs`, and a person's browser at its own pages.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatehouse::config::{
    AdmitConfig, ClaimRule, IdentityProvider, IdentityProviderConfig, ProviderKind, RoleRuleConfig,
};

/// The client Gatehouse is at the provider.
pub const CLIENT_ID: &str = "gatehouse-test";
const CLIENT_SECRET: &str = "gatehouse-test-secret";

/// The provider, stopped when dropped.
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
}

fn script() -> String {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/upstream"]
        .iter()
        .collect();
    let module = dir.join("node_modules/oidc-provider/package.json");
    assert!(
        module.exists(),
        "{} is missing: run tests/run (it installs the pinned npm fixtures), or `npm ci` in tests/fixtures/upstream",
        module.display()
    );
    dir.join("oidc-provider.mjs").display().to_string()
}

impl OidcProvider {
    /// Starts it with Gatehouse (`issuer`) as its one client, provider id `id`.
    pub async fn start(gatehouse_issuer: &str, id: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let redirect = format!("{gatehouse_issuer}/login/provider/{id}/callback");
        let provider = Self {
            child: Command::new("node")
                .arg(script())
                .arg(port.to_string())
                .arg(CLIENT_ID)
                .arg(CLIENT_SECRET)
                .arg(redirect)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("node (installed by tests/run)"),
            issuer: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..200 {
            if reqwest::get(format!(
                "{}/.well-known/openid-configuration",
                provider.issuer
            ))
            .await
            .is_ok_and(|r| r.status().is_success())
            {
                return provider;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("oidc-provider did not answer on {port}");
    }

    /// Replaces the claims of person `id`.
    pub async fn set_person(&self, id: &str, claims: serde_json::Value) {
        let res = reqwest::Client::new()
            .post(format!("{}/_control/person/{id}", self.issuer))
            .body(claims.to_string())
            .send()
            .await
            .expect("control");
        assert_eq!(res.status(), 204);
    }

    /// Signs with a new key from now on (the old one is no longer published).
    pub async fn rotate_keys(&self) {
        let res = reqwest::Client::new()
            .post(format!("{}/_control/rotate", self.issuer))
            .send()
            .await
            .expect("control");
        assert_eq!(res.status(), 204);
    }

    /// A person's browser at the provider: from `authorize_url` (where Gatehouse sent it),
    /// through the provider's own sign-in form as `login`, to the redirect back to Gatehouse;
    /// that redirect's `Location`.
    pub async fn sign_in(&self, authorize_url: &str, login: &str) -> String {
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let mut cookies: BTreeMap<String, String> = BTreeMap::new();
        let mut url = authorize_url.to_owned();
        let mut form: Option<Vec<(&str, &str)>> = None;
        for _ in 0..10 {
            let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let request = match form.take() {
                Some(fields) => browser.post(&url).form(&fields),
                None => browser.get(&url),
            };
            let res = request
                .header("cookie", jar.join("; "))
                .send()
                .await
                .expect("provider");
            for value in res.headers().get_all("set-cookie") {
                let text = value.to_str().unwrap_or_default();
                if let Some((name, value)) = text.split(';').next().and_then(|p| p.split_once('='))
                {
                    cookies.insert(name.to_owned(), value.to_owned());
                }
            }
            let status = res.status();
            let location = res
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let body = res.text().await.unwrap_or_default();
            match location {
                Some(next) if next.starts_with("http") && !next.starts_with(&self.issuer) => {
                    return next;
                }
                Some(next) => {
                    url = if next.starts_with('/') {
                        format!("{}{next}", self.issuer)
                    } else {
                        next
                    };
                }
                None if status == 200 && body.contains("name=\"login\"") => {
                    // The provider's sign-in form: any password for the fixture's people.
                    form = Some(vec![
                        ("prompt", "login"),
                        ("login", login),
                        ("password", "any"),
                    ]);
                }
                None => panic!("the provider answered {status}: {body}"),
            }
        }
        panic!("the provider did not send the browser back");
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gatehouse's configuration of a provider at `issuer` (which need not be running).
pub fn config_for(id: &str, issuer: &str) -> IdentityProvider {
    let raw = IdentityProviderConfig {
        id: id.to_owned(),
        name: "Example SSO".to_owned(),
        kind: ProviderKind::Oidc,
        issuer: issuer.to_owned(),
        api_url: None,
        client_id: CLIENT_ID.to_owned(),
        client_secret_env: "unused-in-tests".to_owned(),
        scopes: ["openid", "email", "profile", "groups"]
            .map(str::to_owned)
            .to_vec(),
        admit: AdmitConfig {
            email_domains: vec!["example.test".to_owned()],
            claims: vec![ClaimRule {
                claim: "groups".to_owned(),
                value: "contractors".to_owned(),
            }],
            ..AdmitConfig::default()
        },
        default_roles: vec!["user".to_owned()],
        roles: vec![RoleRuleConfig {
            claim: "groups".to_owned(),
            value: "gatehouse-admins".to_owned(),
            role: "admin".to_owned(),
        }],
        link_existing_by_email: false,
    };
    IdentityProvider::check(&raw, &|_| Some(CLIENT_SECRET.to_owned()), &|_| true)
        .unwrap_or_else(|e| panic!("{e:?}"))
}
