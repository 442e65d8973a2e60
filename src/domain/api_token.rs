//! API tokens: `gh_pat_<id>_<secret><check>`, for clients that cannot run an OAuth flow.
//!
//! The fixed prefix lets secret scanners find a leaked one and lets `/mcp` tell it from a JWT
//! by its form alone; the id (12 characters) names it in lists and audit events; the secret is
//! 256 random bits (43 base62 characters); the last 6 characters are a checksum of the rest
//! (the first 32 bits of its SHA-256, base62), so a scanner, or `/mcp`, can tell a token that
//! was cut or mistyped without a database lookup. Only the SHA-256 of the whole token is stored.

use ring::rand::{SecureRandom, SystemRandom};

use super::{Secret, SecretHash};

/// What every API token begins with.
pub const API_TOKEN_PREFIX: &str = "gh_pat_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 43;
const CHECK_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new API token: its id, and the whole token to show once.
#[derive(Debug)]
pub struct NewApiToken {
    /// Its id (public: lists, audit events).
    pub id: String,
    /// The token, in clear.
    pub token: Secret,
}

/// A presented token of API-token form whose checksum holds: its id, and the token to compare.
#[derive(Debug)]
pub struct PresentedApiToken {
    /// The id it names.
    pub id: String,
    /// The whole token.
    pub token: Secret,
}

/// `count` random base62 characters (rejection sampling, so each is uniform).
fn base62(count: usize) -> Result<String, ring::error::Unspecified> {
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(count);
    let mut buf = [0u8; 64];
    while out.len() < count {
        rng.fill(&mut buf)?;
        for b in buf {
            // 248 = 4 * 62: bytes above it would favour the first characters.
            if b < 248 && out.len() < count {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// The checksum of `body` (the token before it).
fn checksum(body: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let mut n = u32::from_be_bytes([
        digest.as_ref()[0],
        digest.as_ref()[1],
        digest.as_ref()[2],
        digest.as_ref()[3],
    ]);
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl NewApiToken {
    /// A fresh token from the OS CSPRNG.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let id = base62(ID_LEN)?;
        let body = format!("{API_TOKEN_PREFIX}{id}_{}", base62(SECRET_LEN)?);
        let token = Secret::presented(&format!("{body}{}", checksum(&body)));
        Ok(Self { id, token })
    }

    /// Its stored form.
    pub fn hash(&self) -> SecretHash {
        self.token.hash()
    }
}

/// Whether `token` has the API-token form (and so is never tried as anything else).
pub fn is_api_token(token: &str) -> bool {
    token.starts_with(API_TOKEN_PREFIX)
}

impl PresentedApiToken {
    /// Reads a presented token: `None` when it is not well formed or its checksum fails.
    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix(API_TOKEN_PREFIX)?;
        let (id, tail) = rest.split_once('_')?;
        let well_formed = id.len() == ID_LEN
            && tail.len() == SECRET_LEN + CHECK_LEN
            && id
                .bytes()
                .chain(tail.bytes())
                .all(|b| b.is_ascii_alphanumeric());
        if !well_formed {
            return None;
        }
        let (body, check) = token.split_at(token.len() - CHECK_LEN);
        (checksum(body) == check).then(|| Self {
            id: id.to_owned(),
            token: Secret::presented(token),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_and_any_change_fails_its_checksum() {
        let new = NewApiToken::generate().unwrap();
        let text = new.token.expose().to_owned();
        assert!(text.starts_with("gh_pat_") && is_api_token(&text));
        assert_eq!(text.len(), 7 + ID_LEN + 1 + SECRET_LEN + CHECK_LEN);
        let read = PresentedApiToken::parse(&text).unwrap();
        assert_eq!(read.id, new.id);
        assert!(new.hash().verify(&read.token));
        // One character changed anywhere after the prefix, or the token cut short: refused.
        for at in 7..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != text && changed.as_bytes()[7 + ID_LEN] == b'_' {
                assert!(PresentedApiToken::parse(&changed).is_none(), "{changed}");
            }
        }
        assert!(PresentedApiToken::parse(&text[..text.len() - 1]).is_none());
        assert!(PresentedApiToken::parse("gh_pat_").is_none());
        assert!(!is_api_token("eyJhbGciOiJFUzI1NiJ9.e30.sig"));
        assert_ne!(NewApiToken::generate().unwrap().id, new.id);
    }
}
