//! Who is calling, as an upstream learns it: a token minted for the upstream on every request
//! (RFC 9068 claims, `aud` the upstream, signed with the keys this server publishes, so the
//! upstream verifies it with the JWK set), trusted-network headers, a fixed secret, or nothing.
//! Never the client's own token (MCP authorization: no token passthrough).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use josekit::jwt::JwtPayload;
use serde_json::json;

use crate::clock::Clock;
use crate::config::HttpIdentity;
use crate::domain::random_token;
use crate::keys::KeyStore;

/// The caller of an upstream tool: the person (or service client) and the application.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The user id, or the client id of a service client.
    pub subject: String,
    /// The user's name, when a person is calling.
    pub username: Option<String>,
    /// The user's roles.
    pub roles: Vec<String>,
    /// The application.
    pub client_id: String,
    /// The scopes of the token presented, space-separated.
    pub scope: String,
}

impl Caller {
    /// The operator's own checks (`gatehouse upstreams check`, the check at start): no person,
    /// no scopes.
    pub fn operator() -> Self {
        Self {
            subject: "gatehouse".to_owned(),
            username: None,
            roles: Vec::new(),
            client_id: "gatehouse".to_owned(),
            scope: String::new(),
        }
    }
}

/// Signs upstream tokens.
#[derive(Debug, Clone)]
pub struct Minter {
    /// This server's issuer (`iss`).
    pub issuer: String,
    /// The signing keys (the current one signs).
    pub keys: Arc<KeyStore>,
    /// Time.
    pub clock: Arc<dyn Clock>,
}

/// What one upstream session sends about its caller, on every request.
#[derive(Debug)]
pub struct Identity {
    mode: HttpIdentity,
    caller: Caller,
    minter: Minter,
}

impl Identity {
    /// `caller` as `mode` presents it.
    pub fn new(mode: HttpIdentity, caller: Caller, minter: Minter) -> Self {
        Self {
            mode,
            caller,
            minter,
        }
    }

    /// The headers of one request.
    pub fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        let value = |v: &str| HeaderValue::try_from(v).map_err(|e| e.to_string());
        match &self.mode {
            HttpIdentity::SignedJwt { audience, ttl } => {
                let jwt = self.mint(audience, *ttl)?;
                let mut v = value(&format!("Bearer {jwt}"))?;
                v.set_sensitive(true);
                Ok(vec![(http::header::AUTHORIZATION, v)])
            }
            HttpIdentity::Headers => {
                let c = &self.caller;
                let mut out = vec![
                    (
                        HeaderName::from_static("x-gatehouse-subject"),
                        value(&c.subject)?,
                    ),
                    (
                        HeaderName::from_static("x-gatehouse-client"),
                        value(&c.client_id)?,
                    ),
                    (
                        HeaderName::from_static("x-gatehouse-scope"),
                        value(&c.scope)?,
                    ),
                    (
                        HeaderName::from_static("x-gatehouse-roles"),
                        value(&c.roles.join(","))?,
                    ),
                ];
                if let Some(name) = &c.username {
                    out.push((HeaderName::from_static("x-gatehouse-user"), value(name)?));
                }
                Ok(out)
            }
            HttpIdentity::Static { header, secret } => Ok(vec![(header.clone(), secret.clone())]),
            HttpIdentity::None => Ok(Vec::new()),
        }
    }

    /// A token for `audience`, valid for `ttl` (`iat` a few seconds back for clock skew).
    fn mint(&self, audience: &str, ttl: Duration) -> Result<String, String> {
        let now = self.minter.clock.now().unix_timestamp();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(120);
        let jti = random_token(16).map_err(|_| "no randomness".to_owned())?;
        let c = &self.caller;
        let claims = json!({
            "iss": self.minter.issuer,
            "sub": c.subject,
            "aud": audience,
            "iat": now - 5,
            "nbf": now - 5,
            "exp": now + ttl,
            "jti": jti,
            "client_id": c.client_id,
            "scope": c.scope,
            "roles": c.roles,
            "preferred_username": c.username,
        });
        let serde_json::Value::Object(map) = claims else {
            return Err("claims are not an object".to_owned());
        };
        let payload = JwtPayload::from_map(map).map_err(|e| e.to_string())?;
        self.minter
            .keys
            .snapshot()
            .sign_jwt("at+jwt", &payload)
            .map_err(|e| e.to_string())
    }
}

/// The environment a per-user process gets about its person.
pub fn process_env(caller: &Caller) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("GATEHOUSE_USER_ID", caller.subject.clone()),
        ("GATEHOUSE_ROLES", caller.roles.join(",")),
    ];
    if let Some(name) = &caller.username {
        env.push(("GATEHOUSE_USERNAME", name.clone()));
    }
    env
}
