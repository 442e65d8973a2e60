//! RFC 9068 access tokens: JWTs with `typ: at+jwt`, signed by the current key.

use josekit::jwt::JwtPayload;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::random_token;
use crate::keys::{KeyError, KeySet};
use crate::store::GrantRecord;

/// The claims of an access token (RFC 9068 §2.2).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The issuer.
    pub iss: String,
    /// The user id, or the client id for client_credentials.
    pub sub: String,
    /// The resource (RFC 8707): exactly `{issuer}/mcp`.
    pub aud: String,
    /// Expiry, unix seconds.
    pub exp: i64,
    /// Issue time.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Unique id (for revocation of this one token).
    pub jti: String,
    /// The client it was issued to.
    pub client_id: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The grant it belongs to: revoking the grant revokes the token.
    pub grant_id: String,
}

/// A minted access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The JWT.
    pub jwt: String,
    /// Its claims.
    pub claims: AccessClaims,
}

/// The token endpoint's success response (RFC 6749 §5.1). `expires_in` and `scope` are always
/// present: Python SDK clients refresh ahead of expiry only when they know `expires_in`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
    /// The new refresh token, when one is issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The granted scopes.
    pub scope: String,
}

/// Mints an access token for `grant` with `scope` (the grant's, or fewer), valid for `ttl`.
pub fn mint(
    keys: &KeySet,
    issuer: &str,
    grant: &GrantRecord,
    scope: &str,
    now: OffsetDateTime,
    ttl: time::Duration,
) -> Result<AccessToken, KeyError> {
    let jti = random_token(16)
        .map_err(|_| KeyError::Invalid("-".into(), "random number generator failed".into()))?;
    let claims = AccessClaims {
        iss: issuer.to_owned(),
        sub: grant
            .user_id
            .clone()
            .unwrap_or_else(|| grant.client_id.clone()),
        aud: grant.resource.clone(),
        exp: (now + ttl).unix_timestamp(),
        iat: now.unix_timestamp(),
        nbf: now.unix_timestamp(),
        jti,
        client_id: grant.client_id.clone(),
        scope: scope.to_owned(),
        grant_id: grant.grant_id.clone(),
    };
    let value =
        serde_json::to_value(&claims).map_err(|e| KeyError::Invalid("-".into(), e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(KeyError::Invalid(
            "-".into(),
            "claims are not an object".into(),
        ));
    };
    let payload =
        JwtPayload::from_map(map).map_err(|e| KeyError::Invalid("-".into(), e.to_string()))?;
    let jwt = keys.sign_jwt("at+jwt", &payload)?;
    Ok(AccessToken { jwt, claims })
}
