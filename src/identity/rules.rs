//! Who an identity provider may sign in, and which roles it grants them, decided from what the
//! provider said (the ID token's claims, completed from userinfo).

use serde_json::{Map, Value};

use crate::config::{ClaimRule, IdentityProvider, ORGS_CLAIM};

/// What a provider said about the person who signed in, checked (signature, issuer, audience,
/// expiry, nonce) before anything here reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    /// A string claim.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    /// The email, if the provider says it is verified (`email_verified` true, or the string
    /// `"true"` some providers send). Never an unverified one.
    pub fn verified_email(&self) -> Option<&str> {
        let verified = match self.0.get("email_verified") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        };
        verified.then(|| self.str("email")).flatten()
    }

    /// Whether claim `name` is `value`, or is a list holding it (`groups`).
    pub fn has(&self, name: &str, value: &str) -> bool {
        match self.0.get(name) {
            Some(Value::String(s)) => s == value,
            Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(value)),
            Some(Value::Bool(b)) => value == if *b { "true" } else { "false" },
            Some(Value::Number(n)) => n.to_string() == value,
            _ => false,
        }
    }

    /// Whether a rule about claim `name` could be decided from these claims.
    pub fn knows(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Why a person was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No rule of the provider admits them.
    NoRuleAdmits,
}

/// Whether `provider` admits the person `claims` describe: any rule admits.
pub fn admit(provider: &IdentityProvider, claims: &Claims) -> Result<(), Refusal> {
    let admit = &provider.admit;
    if admit.everyone {
        return Ok(());
    }
    let by_domain = claims.verified_email().is_some_and(|email| {
        email.rsplit_once('@').is_some_and(|(_, domain)| {
            admit
                .email_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
        })
    });
    let by_claim = admit
        .claims
        .iter()
        .any(|ClaimRule { claim, value }| claims.has(claim, value));
    // GitHub: the organisations the person is an active member of (lowercase, as configured).
    let by_org = admit
        .github_orgs
        .iter()
        .any(|org| claims.has(ORGS_CLAIM, org));
    if by_domain || by_claim || by_org {
        Ok(())
    } else {
        Err(Refusal::NoRuleAdmits)
    }
}

/// The roles `provider` grants the person `claims` describe: its default roles, then every
/// rule's role whose claim has the value, each once.
pub fn roles(provider: &IdentityProvider, claims: &Claims) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    let matched = provider
        .roles
        .iter()
        .filter(|r| claims.has(&r.claim, &r.value))
        .map(|r| &r.role);
    for role in provider.default_roles.iter().chain(matched) {
        if !roles.contains(role) {
            roles.push(role.clone());
        }
    }
    roles
}

/// The claims the rules of `provider` read: when the ID token lacks one, userinfo is asked.
pub fn claims_needed(provider: &IdentityProvider) -> Vec<&str> {
    let mut needed = vec!["email", "email_verified"];
    for rule in &provider.admit.claims {
        needed.push(&rule.claim);
    }
    for rule in &provider.roles {
        needed.push(&rule.claim);
    }
    needed.sort_unstable();
    needed.dedup();
    needed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{AdmitConfig, IdentityProviderConfig, ProviderKind, RoleRuleConfig};

    fn provider(admit: AdmitConfig) -> IdentityProvider {
        let raw = IdentityProviderConfig {
            id: "corp".into(),
            name: "Corp".into(),
            kind: ProviderKind::Oidc,
            issuer: "https://idp.example.com".into(),
            api_url: None,
            client_id: "g".into(),
            client_secret_env: "S".into(),
            scopes: vec!["openid".into()],
            admit,
            default_roles: vec!["user".into()],
            roles: vec![RoleRuleConfig {
                claim: "groups".into(),
                value: "admins".into(),
                role: "admin".into(),
            }],
            link_existing_by_email: false,
        };
        IdentityProvider::check(&raw, &|_| Some("s".into()), &|_| true).unwrap()
    }

    fn claims(v: Value) -> Claims {
        let Value::Object(map) = v else { panic!() };
        Claims(map)
    }

    #[test]
    fn only_a_verified_email_in_a_listed_domain_admits() {
        let p = provider(AdmitConfig {
            email_domains: vec!["example.com".into()],
            ..AdmitConfig::default()
        });
        let ok = claims(serde_json::json!({"email": "a@Example.com", "email_verified": true}));
        assert_eq!(admit(&p, &ok), Ok(()));
        let unverified =
            claims(serde_json::json!({"email": "a@example.com", "email_verified": false}));
        assert_eq!(admit(&p, &unverified), Err(Refusal::NoRuleAdmits));
        let silent = claims(serde_json::json!({"email": "a@example.com"}));
        assert_eq!(admit(&p, &silent), Err(Refusal::NoRuleAdmits));
        let lookalike =
            claims(serde_json::json!({"email": "a@evil-example.com", "email_verified": true}));
        assert_eq!(admit(&p, &lookalike), Err(Refusal::NoRuleAdmits));
        let sub = claims(serde_json::json!({"email": "a@x.example.com", "email_verified": true}));
        assert_eq!(
            admit(&p, &sub),
            Err(Refusal::NoRuleAdmits),
            "a subdomain is another domain"
        );
    }

    #[test]
    fn a_claim_value_admits_and_maps_roles() {
        let p = provider(AdmitConfig {
            claims: vec![ClaimRule {
                claim: "hd".into(),
                value: "example.com".into(),
            }],
            ..AdmitConfig::default()
        });
        let c = claims(serde_json::json!({"hd": "example.com", "groups": ["staff", "admins"]}));
        assert_eq!(admit(&p, &c), Ok(()));
        assert_eq!(roles(&p, &c), ["user", "admin"]);
        let c = claims(serde_json::json!({"hd": "other.com", "groups": "admins"}));
        assert_eq!(admit(&p, &c), Err(Refusal::NoRuleAdmits));
        assert_eq!(roles(&p, &c), ["user", "admin"]);
        assert_eq!(roles(&p, &claims(serde_json::json!({}))), ["user"]);
    }
}
