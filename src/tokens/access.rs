//! RFC 9068 access tokens: JWTs with `typ: at+jwt`, signed by the current key.

use josekit::jws::JwsHeader;
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

/// Why a signature-valid JWT is not one of our access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAnAccessToken {
    /// Its `typ` is not `at+jwt` (RFC 9068 §4).
    WrongType,
    /// Its claims are not an access token's.
    Malformed,
}

/// The claims of a JWT whose signature was verified, the one place an access token is read
/// (the resource side and revocation alike): `typ` must be `at+jwt` or `application/at+jwt`
/// (RFC 9068 §4); `aud` may be a string or an array (RFC 7519 §4.1.3). The claims come back with
/// `aud` set to `audience`, and whether the token named it.
pub fn read_access_claims(
    payload: &JwtPayload,
    header: &JwsHeader,
    audience: &str,
) -> Result<(AccessClaims, bool), NotAnAccessToken> {
    let typ = header.token_type().map(str::to_ascii_lowercase);
    if !matches!(typ.as_deref(), Some("at+jwt" | "application/at+jwt")) {
        return Err(NotAnAccessToken::WrongType);
    }
    let mut claims = payload.claims_set().clone();
    let names_audience = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == audience,
        Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    claims.insert(
        "aud".to_owned(),
        serde_json::Value::String(audience.to_owned()),
    );
    let claims = serde_json::from_value(serde_json::Value::Object(claims))
        .map_err(|_| NotAnAccessToken::Malformed)?;
    Ok((claims, names_audience))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parts(typ: &str, aud: serde_json::Value) -> (JwtPayload, JwsHeader) {
        let mut header = JwsHeader::new();
        header.set_token_type(typ);
        let claims = json!({
            "iss": "https://as.example", "sub": "u_1", "aud": aud, "exp": 2, "iat": 1, "nbf": 1,
            "jti": "j", "client_id": "c", "scope": "mcp", "grant_id": "g"
        });
        let serde_json::Value::Object(map) = claims else {
            unreachable!("an object literal")
        };
        (JwtPayload::from_map(map).expect("claims"), header)
    }

    #[test]
    fn an_access_token_is_read_by_its_type_and_audience() {
        let resource = "https://as.example/mcp";
        let (p, h) = parts("at+jwt", json!(resource));
        assert_eq!(
            read_access_claims(&p, &h, resource).map(|(c, ok)| (c.sub, ok)),
            Ok(("u_1".to_owned(), true))
        );
        let (p, h) = parts("application/AT+JWT", json!(["https://other", resource]));
        assert_eq!(
            read_access_claims(&p, &h, resource).map(|(_, ok)| ok),
            Ok(true)
        );
        let (p, h) = parts("at+jwt", json!("https://other"));
        assert_eq!(
            read_access_claims(&p, &h, resource).map(|(_, ok)| ok),
            Ok(false)
        );
        let (p, h) = parts("JWT", json!(resource));
        assert_eq!(
            read_access_claims(&p, &h, resource).map(|_| ()),
            Err(NotAnAccessToken::WrongType)
        );
    }
}
