//! Typed data of a browser session, kept under one key of the tower-sessions session.
//!
//! A session holds who signed in (and when), the login form's CSRF token, and the authorization
//! requests in progress: each has its own id (carried by the login and consent pages) and its
//! own CSRF token, so a consent form is bound to exactly one authorization request.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::{Duration, OffsetDateTime};
use tower_sessions::Session;

use crate::domain::random_token;

const KEY: &str = "gatehouse";
/// Most authorization requests one session keeps in progress (tabs); the oldest goes first.
const MAX_PENDING: usize = 5;
/// How long a person has to finish signing in and consenting.
pub const PENDING_TTL: Duration = Duration::minutes(10);

/// An authorization request that passed every check and waits for sign-in or consent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingAuthorization {
    /// Random id, in the login and consent pages' URLs and forms.
    pub id: String,
    /// CSRF token of this request's consent form.
    pub csrf: String,
    /// The client.
    pub client_id: String,
    /// Where the answer goes (as the client sent it, or its only registered URI).
    pub redirect_uri: String,
    /// The client's `state`, echoed unchanged.
    pub state: Option<String>,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// The resource the tokens will be for.
    pub resource: String,
    /// Requested scopes this server knows (or the defaults).
    pub scopes: Vec<String>,
    /// `prompt=consent`: show the consent page even if consent is remembered.
    pub force_consent: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// The client was added by the operator, so its redirect URI is trusted with an error
    /// (RFC 9700 §4.11.2).
    #[serde(default)]
    pub operator_client: bool,
    /// The client cannot authenticate (RFC 8252 §8.6): remembered consent stands only at the
    /// redirect URI it was given for.
    #[serde(default)]
    pub public_client: bool,
}

/// Everything Gatehouse keeps in a browser session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionData {
    /// The signed-in user's id.
    pub user_id: Option<String>,
    /// When they signed in (unix seconds).
    pub authenticated_at: Option<i64>,
    /// When the session started (unix seconds), for the absolute timeout.
    pub started_at: i64,
    /// CSRF token of the login and logout forms.
    pub form_csrf: Option<String>,
    /// Authorization requests in progress.
    pub pending: Vec<PendingAuthorization>,
    /// A sign-in sent to an identity provider, until it comes back (one at a time).
    #[serde(default)]
    pub upstream: Option<UpstreamSignIn>,
}

/// A sign-in at an identity provider in progress: what its callback must match.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpstreamSignIn {
    /// The provider's id.
    pub provider: String,
    /// The `state` sent (OAuth 2.0 §10.12: binds the callback to this browser).
    pub state: String,
    /// The `nonce` sent (OpenID Connect Core §3.1.2.1: binds the ID token to this sign-in).
    pub nonce: String,
    /// The PKCE verifier (RFC 7636).
    pub verifier: String,
    /// The authorization request it signs in for (may be empty).
    pub request: String,
    /// Unix seconds; it expires after [`PENDING_TTL`].
    pub created_at: i64,
    /// Not a sign-in: the signed-in user (this id) links the provider account to themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_to: Option<String>,
}

/// A session-store failure; shown as a generic error page.
#[derive(Debug, thiserror::Error)]
#[error("session error: {0}")]
pub struct SessionError(pub String);

/// Compares a submitted token with the expected one in constant time.
pub fn tokens_match(expected: &str, submitted: &str) -> bool {
    !expected.is_empty() && bool::from(expected.as_bytes().ct_eq(submitted.as_bytes()))
}

/// A new random token (CSRF tokens and request ids): 128 bits.
pub fn new_token() -> Result<String, SessionError> {
    random_token(16).map_err(|_| SessionError("random number generator failed".to_owned()))
}

impl SessionData {
    /// Reads the session's data; a session older than `absolute` starts over (and is flushed).
    pub async fn load(
        session: &Session,
        now: OffsetDateTime,
        absolute: Duration,
    ) -> Result<Self, SessionError> {
        let data: Option<Self> = session
            .get(KEY)
            .await
            .map_err(|e| SessionError(e.to_string()))?;
        match data {
            Some(d) if now.unix_timestamp() - d.started_at <= absolute.whole_seconds() => Ok(d),
            Some(_) => {
                session
                    .flush()
                    .await
                    .map_err(|e| SessionError(e.to_string()))?;
                Ok(Self::fresh(now))
            }
            None => Ok(Self::fresh(now)),
        }
    }

    fn fresh(now: OffsetDateTime) -> Self {
        Self {
            started_at: now.unix_timestamp(),
            ..Self::default()
        }
    }

    /// Writes the data back.
    pub async fn save(&self, session: &Session) -> Result<(), SessionError> {
        session
            .insert(KEY, self)
            .await
            .map_err(|e| SessionError(e.to_string()))
    }

    /// The login/logout form token, created on first use.
    pub fn form_csrf(&mut self) -> Result<String, SessionError> {
        if self.form_csrf.is_none() {
            self.form_csrf = Some(new_token()?);
        }
        Ok(self.form_csrf.clone().unwrap_or_default())
    }

    /// Adds a request in progress, dropping expired ones and the oldest beyond the limit.
    pub fn add_pending(&mut self, request: PendingAuthorization, now: OffsetDateTime) {
        self.drop_expired(now);
        self.pending.push(request);
        while self.pending.len() > MAX_PENDING {
            self.pending.remove(0);
        }
    }

    /// The request in progress with this id, if it has not expired.
    pub fn pending(&self, id: &str, now: OffsetDateTime) -> Option<&PendingAuthorization> {
        self.pending.iter().find(|p| {
            p.id == id && now.unix_timestamp() - p.created_at <= PENDING_TTL.whole_seconds()
        })
    }

    /// Removes a finished request (each consent form works once).
    pub fn take_pending(&mut self, id: &str) {
        self.pending.retain(|p| p.id != id);
    }

    fn drop_expired(&mut self, now: OffsetDateTime) {
        self.pending
            .retain(|p| now.unix_timestamp() - p.created_at <= PENDING_TTL.whole_seconds());
    }
}
