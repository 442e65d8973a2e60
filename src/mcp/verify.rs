//! Access-token verification for the resource side (RFC 9068 §4, RFC 6750, RFC 8707): the
//! signature with the published key the `kid` names (`alg` pinned to that key, so `none` and
//! HMAC-with-the-public-key fail), `typ: at+jwt`, `iss`, `aud` equal to this resource, `exp` and
//! `nbf` with a small leeway, and the revocation view on every call.
//!
//! Verified tokens are cached by their SHA-256 until they expire, so a busy client does not pay
//! for a signature check per call. A cache hit still checks revocation, expiry and that the
//! signing key is still published, so revocation and key retirement take effect at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::domain::ScopeSet;
use crate::keys::{JwtRejection, KeyStore};
use crate::tokens::{NotAnAccessToken, RevocationView, read_access_claims};

/// Most verified tokens kept.
const CACHE_CAPACITY: usize = 10_000;

/// The authenticated caller of an MCP request, put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user id (`sub`), or the client id for client_credentials tokens.
    pub subject: String,
    /// Whether a person is behind the token, or only a service client.
    pub kind: CallerKind,
    /// The client the token was issued to.
    pub client_id: String,
    /// The token's scopes, with the narrower scopes they imply.
    pub scopes: Vec<String>,
    /// The grant the token belongs to.
    pub grant_id: String,
    /// The token's id.
    pub jti: String,
    /// Its expiry, unix seconds.
    pub expires_at: i64,
    /// A person named by a trusted proxy (`mcp.credentials` `forwarded`): their name and the
    /// roles their groups map to, which stand in for a user of this server.
    pub forwarded: Option<super::users::Known>,
}

/// Who is behind an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// A user, through an application they authorized.
    User,
    /// A service client on its own (client credentials): no user, no roles, only its scopes.
    Service,
}

impl CallerKind {
    /// As tools show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Service => "service",
        }
    }
}

impl Principal {
    /// True when the caller holds `scope` (directly or through a broader scope).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Why a presented token is refused. Shown to the client as the `error_description`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the access token is malformed or its signature is not valid")]
    BadSignature,
    #[error("the token is not an access token (typ must be at+jwt)")]
    WrongType,
    #[error("the access token was issued by another server")]
    WrongIssuer,
    #[error("the access token is for another resource")]
    WrongAudience,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the access token has been revoked")]
    Revoked,
    /// An API token (`gh_pat_...`) that is malformed, fails its checksum, or is not one this
    /// server issued.
    #[error("the API token is not valid")]
    BadApiToken,
    /// A bearer token of a kind `mcp.credentials` does not accept.
    #[error("this kind of token is not accepted here")]
    NotAccepted,
    /// A trusted proxy's forwarded-user header that names nobody usable (empty, repeated, too
    /// long, control characters).
    #[error("the forwarded user is not valid")]
    BadForwardedUser,
    /// Signed by a key this instance does not know (yet): the caller may reload the key set
    /// (another instance may have just activated a key) and verify again.
    #[error("the access token was signed by a key this server does not know")]
    UnknownKey,
    /// The token could not be checked now (the database did not answer): not the client's
    /// fault, so no `invalid_token` that would make it throw the token away.
    #[error("the token cannot be checked right now; try again shortly")]
    Unavailable,
}

impl TokenRejection {
    /// A short fixed name, for the metrics' `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::WrongType => "wrong_type",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Revoked => "revoked",
            Self::BadApiToken => "bad_api_token",
            Self::NotAccepted => "not_accepted",
            Self::BadForwardedUser => "bad_forwarded_user",
            Self::UnknownKey => "unknown_key",
            Self::Unavailable => "unavailable",
        }
    }

    /// What the client is told: a credential that is not valid at all is described as a bad
    /// access token whatever its kind, so the answer does not say which kind came closest
    /// (the audit log keeps the real reason). Expiry and revocation are the same words for
    /// every kind.
    pub fn shown(self) -> Self {
        match self {
            Self::BadApiToken | Self::NotAccepted | Self::BadForwardedUser => Self::BadSignature,
            other => other,
        }
    }
}

#[derive(Debug, Clone)]
struct Cached {
    principal: Principal,
    kid: String,
    nbf: i64,
}

/// Verifies access tokens for this resource.
#[derive(Debug)]
pub struct TokenVerifier {
    keys: Arc<KeyStore>,
    revocations: Arc<RevocationView>,
    clock: Arc<dyn Clock>,
    issuer: String,
    audience: String,
    leeway: i64,
    implies: HashMap<String, Vec<String>>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl TokenVerifier {
    /// A verifier for tokens of `issuer` for `audience`, with the scope implications of the
    /// catalog (scope -> narrower scopes it includes).
    pub fn new(
        keys: Arc<KeyStore>,
        revocations: Arc<RevocationView>,
        clock: Arc<dyn Clock>,
        issuer: String,
        audience: String,
        leeway_seconds: i64,
        implies: HashMap<String, Vec<String>>,
    ) -> Self {
        Self {
            keys,
            revocations,
            clock,
            issuer,
            audience,
            leeway: leeway_seconds,
            implies,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The scopes a token's scopes amount to, with everything they imply (transitively).
    pub fn effective_scopes(&self, scope: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut todo: Vec<String> = ScopeSet::parse_lenient(scope)
            .names()
            .map(str::to_owned)
            .collect();
        while let Some(s) = todo.pop() {
            if out.contains(&s) {
                continue;
            }
            if let Some(narrower) = self.implies.get(&s) {
                todo.extend(narrower.iter().cloned());
            }
            out.push(s);
        }
        out
    }

    /// Checks a bearer token and returns who is calling.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenRejection> {
        let now = self.clock.now().unix_timestamp();
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        let hit = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let cached = match hit {
            Some(c) => c,
            None => {
                let c = self.verify_signed(token)?;
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_CAPACITY {
                    cache.retain(|_, v| v.principal.expires_at + self.leeway > now);
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                }
                cache.insert(key, c.clone());
                c
            }
        };
        // Checked on every call, cached or not.
        if now >= cached.principal.expires_at + self.leeway {
            return Err(TokenRejection::Expired);
        }
        if cached.nbf > now + self.leeway {
            return Err(TokenRejection::NotYetValid);
        }
        if self.keys.snapshot().key(&cached.kid).is_none() {
            return Err(TokenRejection::BadSignature);
        }
        if self
            .revocations
            .is_revoked(&cached.principal.grant_id, &cached.principal.jti)
        {
            return Err(TokenRejection::Revoked);
        }
        Ok(cached.principal)
    }

    fn verify_signed(&self, token: &str) -> Result<Cached, TokenRejection> {
        let keys = self.keys.snapshot();
        let (payload, header) = keys.verify_jwt(token).map_err(|e| match e {
            JwtRejection::UnknownKey => TokenRejection::UnknownKey,
            JwtRejection::Invalid(_) => TokenRejection::BadSignature,
        })?;
        let (claims, aud_ok) =
            read_access_claims(&payload, &header, &self.audience).map_err(|e| match e {
                NotAnAccessToken::WrongType => TokenRejection::WrongType,
                NotAnAccessToken::Malformed => TokenRejection::BadSignature,
            })?;
        if claims.iss != self.issuer {
            return Err(TokenRejection::WrongIssuer);
        }
        if !aud_ok {
            return Err(TokenRejection::WrongAudience);
        }
        let kid = header.key_id().unwrap_or_default().to_owned();
        Ok(Cached {
            principal: Principal {
                // RFC 9068 §2.2: with no resource owner, `sub` is the client's identifier. User
                // ids and client ids never coincide (`u_` and `gh_`/https prefixes).
                kind: if claims.sub == claims.client_id {
                    CallerKind::Service
                } else {
                    CallerKind::User
                },
                subject: claims.sub,
                client_id: claims.client_id,
                scopes: self.effective_scopes(&claims.scope),
                grant_id: claims.grant_id,
                jti: claims.jti,
                expires_at: claims.exp,
                forwarded: None,
            },
            kid,
            nbf: claims.nbf,
        })
    }
}
