//! `[[identity_providers]]` and `local_login`: signing in through an identity provider people
//! already have (OpenID Connect, or GitHub over plain OAuth 2.0), instead of or beside a
//! Gatehouse password. What the operator writes ([`IdentityProviderConfig`]) and the checked
//! form ([`IdentityProvider`]).

use serde::{Deserialize, Serialize};
use url::Url;

/// Longest provider id: it is part of a callback path.
const MAX_PROVIDER_ID: usize = 32;
/// Most GitHub organisations the rules of one provider may name: each is one call to GitHub at
/// every sign-in.
const MAX_GITHUB_ORGS: usize = 20;
/// GitHub itself (not GitHub Enterprise Server).
const GITHUB: &str = "https://github.com";

/// One `[[identity_providers]]` entry, as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityProviderConfig {
    /// Short name in paths and in the accounts it signs in: lowercase letters, digits and `-`,
    /// at most 32. Its callback is `{issuer}/login/provider/{id}/callback`.
    pub id: String,
    /// Shown on the sign-in page: "Continue with {name}".
    pub name: String,
    /// `oidc`: an OpenID Connect provider, found through discovery at `issuer`. `github`:
    /// GitHub (or GitHub Enterprise Server) over plain OAuth 2.0 and its REST API.
    pub kind: ProviderKind,
    /// `oidc`: the provider's issuer (its discovery document is at
    /// `{issuer}/.well-known/openid-configuration`). `github`: GitHub's address, default
    /// `https://github.com` (a GitHub Enterprise Server's own otherwise). https, or http on
    /// loopback.
    #[serde(default)]
    pub issuer: String,
    /// `github` only: its REST API. Default `https://api.github.com` for GitHub,
    /// `{issuer}/api/v3` for GitHub Enterprise Server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The client id Gatehouse was given at the provider.
    pub client_id: String,
    /// The environment variable that holds the client secret (never the secret itself).
    pub client_secret_env: String,
    /// Scopes asked for. Default `openid email profile` (`oidc`, which always asks for
    /// `openid`), `read:user user:email` (`github`, which adds `read:org` when a rule names an
    /// organisation).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Who may sign in: anyone one rule admits.
    #[serde(default)]
    pub admit: AdmitConfig,
    /// Roles every person it admits gets. Default `["user"]`.
    #[serde(default = "default_roles")]
    pub default_roles: Vec<String>,
    /// More roles: every rule that matches adds its role. These and `default_roles` are
    /// re-evaluated at every sign-in, and kept apart from the roles an admin grants by hand.
    #[serde(default)]
    pub roles: Vec<RoleRuleConfig>,
    /// At a provider account's first sign-in, link it to the existing user whose name is the
    /// address the provider says is verified, instead of creating an account. Off by default:
    /// it trusts the provider to verify addresses it did not issue.
    #[serde(default)]
    pub link_existing_by_email: bool,
}

fn default_roles() -> Vec<String> {
    vec!["user".to_owned()]
}

/// The kinds of identity provider.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenID Connect: discovery, an ID token, userinfo.
    Oidc,
    /// GitHub: plain OAuth 2.0 (no ID token), then its user, email and membership APIs.
    Github,
}

/// `[identity_providers.admit]`: at least one rule, or `everyone = true`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdmitConfig {
    /// Admit every person the provider signs in (a provider of your own organisation only).
    #[serde(default)]
    pub everyone: bool,
    /// Admit people whose email the provider says is verified and ends in `@` one of these.
    #[serde(default)]
    pub email_domains: Vec<String>,
    /// Admit people with one of these claim values (a string claim equal to it, or a list
    /// claim holding it), e.g. `{ claim = "groups", value = "staff" }` or Google's `hd`.
    #[serde(default)]
    pub claims: Vec<ClaimRule>,
    /// `github` only: admit active members of one of these organisations.
    #[serde(default)]
    pub github_orgs: Vec<String>,
}

/// A claim value to look for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClaimRule {
    /// The claim's name, in the ID token or userinfo.
    pub claim: String,
    /// The value it must be, or hold.
    pub value: String,
}

/// A role granted when a claim has a value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleRuleConfig {
    /// The claim's name.
    pub claim: String,
    /// The value it must be, or hold.
    pub value: String,
    /// The Gatehouse role (a key of `[roles]`).
    pub role: String,
}

/// A client secret from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSecret(pub String);

impl std::fmt::Debug for ProviderSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderSecret(..)")
    }
}

/// A checked identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityProvider {
    /// Its id (see [`IdentityProviderConfig::id`]).
    pub id: String,
    /// Its display name.
    pub name: String,
    /// OpenID Connect or GitHub.
    pub kind: ProviderKind,
    /// Its issuer, exactly as written: the `iss` its discovery document and ID tokens carry,
    /// compared as a string (OpenID Connect Discovery §4.3), so not normalised by a URL parser
    /// (which would add a `/` to a bare origin). For GitHub, its address, which also names
    /// the accounts it signs in.
    pub issuer: String,
    /// `github`: its REST API, without a trailing `/`.
    pub api_url: Option<String>,
    /// Gatehouse's client id there.
    pub client_id: String,
    /// And secret.
    pub client_secret: ProviderSecret,
    /// Scopes asked for (`oidc`: always with `openid`).
    pub scopes: Vec<String>,
    /// Who may sign in.
    pub admit: AdmitConfig,
    /// Roles every person it admits gets.
    pub default_roles: Vec<String>,
    /// Roles it grants by claim.
    pub roles: Vec<RoleRuleConfig>,
    /// Links a first sign-in to the user named by its verified address.
    pub link_existing_by_email: bool,
}

impl IdentityProvider {
    /// Checks one entry; `env` reads the environment, `roles` are the configured role names.
    pub fn check(
        raw: &IdentityProviderConfig,
        env: &dyn Fn(&str) -> Option<String>,
        roles: &dyn Fn(&str) -> bool,
    ) -> Result<Self, Vec<String>> {
        let at = format!("identity provider {:?}", raw.id);
        let mut problems = Vec::new();
        let id_ok = !raw.id.is_empty()
            && raw.id.len() <= MAX_PROVIDER_ID
            && raw
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            problems.push(format!(
                "{at}: id must be 1 to {MAX_PROVIDER_ID} lowercase letters, digits or '-'"
            ));
        }
        if raw.name.trim().is_empty() {
            problems.push(format!("{at}: name must not be empty"));
        }
        let github = raw.kind == ProviderKind::Github;
        let written = if github && raw.issuer.is_empty() {
            GITHUB.to_owned()
        } else {
            raw.issuer.clone()
        };
        let issuer = web_url(&at, "issuer", &written, &mut problems);
        let api_url = match (&raw.api_url, github) {
            (Some(_), false) => {
                problems.push(format!("{at}: api_url is for kind = \"github\" only"));
                None
            }
            (Some(api), true) => web_url(&at, "api_url", api, &mut problems)
                .map(|_| api.trim_end_matches('/').to_owned()),
            (None, true) if written.trim_end_matches('/') == GITHUB => {
                Some("https://api.github.com".to_owned())
            }
            (None, true) => Some(format!("{}/api/v3", written.trim_end_matches('/'))),
            (None, false) => None,
        };
        if raw.client_id.is_empty() {
            problems.push(format!("{at}: client_id must not be empty"));
        }
        let secret = env(&raw.client_secret_env).filter(|s| !s.is_empty());
        if secret.is_none() {
            problems.push(format!(
                "{at}: client_secret_env names {:?}, which is not set in the environment",
                raw.client_secret_env
            ));
        }
        let admit = &raw.admit;
        if !admit.everyone
            && admit.email_domains.is_empty()
            && admit.claims.is_empty()
            && admit.github_orgs.is_empty()
        {
            problems.push(format!(
                "{at}: [admit] has no rule, so nobody could sign in with it: list email_domains, claims or github_orgs, or set everyone = true for a provider of your own organisation only"
            ));
        }
        if !github && !admit.github_orgs.is_empty() {
            problems.push(format!(
                "{at}: admit.github_orgs is for kind = \"github\" only"
            ));
        }
        let orgs = if github {
            orgs_named(&raw.admit, &raw.roles)
        } else {
            Vec::new()
        };
        if orgs.iter().any(|o| !valid_org(o)) {
            problems.push(format!(
                "{at}: GitHub organisations are names of letters, digits and '-' (at most 39)"
            ));
        }
        if orgs.len() > MAX_GITHUB_ORGS {
            problems.push(format!(
                "{at}: the rules name {} GitHub organisations; at most {MAX_GITHUB_ORGS} (each is a call to GitHub at every sign-in)",
                orgs.len()
            ));
        }
        if admit
            .email_domains
            .iter()
            .any(|d| d.is_empty() || d.contains('@'))
        {
            problems.push(format!(
                "{at}: admit.email_domains are domains such as \"example.com\", without '@'"
            ));
        }
        for role in raw
            .default_roles
            .iter()
            .chain(raw.roles.iter().map(|r| &r.role))
        {
            if !roles(role) {
                problems.push(format!(
                    "{at}: grants the role {role:?}, which is not a role of [roles]"
                ));
            }
        }
        let mut scopes = raw.scopes.clone();
        if github {
            if scopes.is_empty() {
                scopes = ["read:user", "user:email"].map(str::to_owned).to_vec();
            }
            // Membership of a private organisation is only visible with `read:org`.
            if !orgs.is_empty() && !scopes.iter().any(|s| s == "read:org") {
                scopes.push("read:org".to_owned());
            }
        } else {
            if scopes.is_empty() {
                scopes = ["openid", "email", "profile"].map(str::to_owned).to_vec();
            }
            if !scopes.iter().any(|s| s == "openid") {
                scopes.insert(0, "openid".to_owned());
            }
        }
        match (problems.is_empty(), issuer, secret) {
            (true, Some(_), Some(secret)) => Ok(Self {
                id: raw.id.clone(),
                name: raw.name.trim().to_owned(),
                kind: raw.kind,
                issuer: written,
                api_url,
                client_id: raw.client_id.clone(),
                client_secret: ProviderSecret(secret),
                scopes,
                admit: AdmitConfig {
                    everyone: admit.everyone,
                    email_domains: admit
                        .email_domains
                        .iter()
                        .map(|d| d.to_ascii_lowercase())
                        .collect(),
                    claims: admit
                        .claims
                        .iter()
                        .map(|r| org_lowercase(r, github))
                        .collect(),
                    github_orgs: admit
                        .github_orgs
                        .iter()
                        .map(|o| o.to_ascii_lowercase())
                        .collect(),
                },
                default_roles: raw.default_roles.clone(),
                roles: raw
                    .roles
                    .iter()
                    .map(|r| RoleRuleConfig {
                        value: org_lowercase(
                            &ClaimRule {
                                claim: r.claim.clone(),
                                value: r.value.clone(),
                            },
                            github,
                        )
                        .value,
                        ..r.clone()
                    })
                    .collect(),
                link_existing_by_email: raw.link_existing_by_email,
            }),
            _ => Err(problems),
        }
    }
}

impl IdentityProvider {
    /// The GitHub organisations its rules name (lowercase, each once): the ones whose
    /// membership is asked at a sign-in.
    pub fn github_orgs(&self) -> Vec<String> {
        orgs_named(&self.admit, &self.roles)
    }
}

/// The organisations `admit` and `roles` name, lowercase, each once.
fn orgs_named(admit: &AdmitConfig, roles: &[RoleRuleConfig]) -> Vec<String> {
    let by_claim = admit.claims.iter().filter(|r| r.claim == ORGS_CLAIM);
    let by_role = roles.iter().filter(|r| r.claim == ORGS_CLAIM);
    let mut orgs: Vec<String> = admit
        .github_orgs
        .iter()
        .chain(by_claim.map(|r| &r.value))
        .chain(by_role.map(|r| &r.value))
        .map(|o| o.to_ascii_lowercase())
        .collect();
    orgs.sort_unstable();
    orgs.dedup();
    orgs
}

/// The claim a GitHub sign-in puts the person's organisations under (those the rules name and
/// the person is an active member of), for `claims` and `roles` rules.
pub const ORGS_CLAIM: &str = "orgs";

/// A rule on GitHub organisations compares lowercase names (GitHub's are case-insensitive).
fn org_lowercase(rule: &ClaimRule, github: bool) -> ClaimRule {
    let mut rule = rule.clone();
    if github && rule.claim == ORGS_CLAIM {
        rule.value = rule.value.to_ascii_lowercase();
    }
    rule
}

/// A GitHub organisation's name: letters, digits and single `-`, at most 39.
fn valid_org(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 39
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A provider address: https, or http on loopback; no query or fragment.
fn web_url(at: &str, key: &str, written: &str, problems: &mut Vec<String>) -> Option<Url> {
    match Url::parse(written) {
        Ok(url) if url.query().is_none() && url.fragment().is_none() => {
            let loopback = url.host().is_some_and(|h| match h {
                url::Host::Ipv4(ip) => ip.is_loopback(),
                url::Host::Ipv6(ip) => ip.is_loopback(),
                url::Host::Domain(d) => d == "localhost",
            });
            if url.scheme() == "https" || (url.scheme() == "http" && loopback) {
                Some(url)
            } else {
                problems.push(format!(
                    "{at}: {key} must be an https URL (http only on loopback), not {written}"
                ));
                None
            }
        }
        _ => {
            problems.push(format!(
                "{at}: {key} must be a URL without query or fragment, not {written:?}"
            ));
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw() -> IdentityProviderConfig {
        IdentityProviderConfig {
            id: "corp".into(),
            name: "Corp SSO".into(),
            kind: ProviderKind::Oidc,
            issuer: "https://idp.example.com".into(),
            api_url: None,
            client_id: "gatehouse".into(),
            client_secret_env: "CORP_SECRET".into(),
            scopes: Vec::new(),
            admit: AdmitConfig {
                email_domains: vec!["Example.com".into()],
                ..AdmitConfig::default()
            },
            default_roles: default_roles(),
            roles: vec![RoleRuleConfig {
                claim: "groups".into(),
                value: "admins".into(),
                role: "admin".into(),
            }],
            link_existing_by_email: false,
        }
    }

    fn env(k: &str) -> Option<String> {
        (k == "CORP_SECRET").then(|| "s3cret".to_owned())
    }

    #[test]
    fn a_provider_is_checked_whole() {
        let known = |r: &str| r == "admin" || r == "user";
        let ok = IdentityProvider::check(&raw(), &env, &known).unwrap();
        assert_eq!(ok.admit.email_domains, ["example.com"]);
        assert_eq!(ok.client_secret.0, "s3cret");
        assert!(
            !format!("{ok:?}").contains("s3cret"),
            "the secret is never printed"
        );

        let mut bad = raw();
        bad.id = "Corp".into();
        bad.issuer = "http://idp.example.com".into();
        bad.client_secret_env = "UNSET".into();
        bad.admit = AdmitConfig::default();
        bad.roles[0].role = "nobody".into();
        let problems = IdentityProvider::check(&bad, &env, &known).unwrap_err();
        assert_eq!(problems.len(), 5, "{problems:#?}");

        let mut loopback = raw();
        loopback.issuer = "http://127.0.0.1:4000/tenant".into();
        assert!(IdentityProvider::check(&loopback, &env, &|_| true).is_ok());
        assert_eq!(ok.scopes, ["openid", "email", "profile"]);
    }

    #[test]
    fn github_defaults_to_github_com_and_asks_for_what_its_rules_read() {
        let mut gh = raw();
        gh.kind = ProviderKind::Github;
        gh.issuer = String::new();
        gh.admit = AdmitConfig {
            github_orgs: vec!["Acme".into()],
            ..AdmitConfig::default()
        };
        gh.roles[0].claim = ORGS_CLAIM.into();
        gh.roles[0].value = "acme-admins".into();
        let ok = IdentityProvider::check(&gh, &env, &|_| true).unwrap();
        assert_eq!(ok.issuer, "https://github.com");
        assert_eq!(ok.api_url.as_deref(), Some("https://api.github.com"));
        assert_eq!(ok.scopes, ["read:user", "user:email", "read:org"]);
        assert_eq!(ok.github_orgs(), ["acme", "acme-admins"]);

        gh.issuer = "https://git.example.com/".into();
        let ghes = IdentityProvider::check(&gh, &env, &|_| true).unwrap();
        assert_eq!(
            ghes.api_url.as_deref(),
            Some("https://git.example.com/api/v3")
        );

        let mut bad = raw();
        bad.api_url = Some("https://api.github.com".into());
        bad.admit.github_orgs = vec!["acme".into()];
        let problems = IdentityProvider::check(&bad, &env, &|_| true).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        gh.admit.github_orgs = vec!["not an org".into()];
        assert!(IdentityProvider::check(&gh, &env, &|_| true).is_err());
    }
}
