//! Secrets Gatehouse hands out (client secrets now; codes and refresh tokens later): generated
//! from the OS CSPRNG, shown once, stored only as a SHA-256 hash, compared in constant time.
//!
//! They carry at least 256 bits of entropy, so a fast hash is the right tool (a slow password
//! hash protects low-entropy secrets; it adds nothing here but CPU cost per request).
//!
//! Codes and refresh tokens, written by the thousand, begin with the time they were issued (see
//! [`Secret::generate_ordered`]), and so do grant ids ([`new_grant_id`]): the index entries of
//! new rows then land at the end of their index, in a few pages shared by every row of a
//! commit, instead of one random page each that the commit must write again. That makes a code
//! exchange write far less (`BENCHMARKS.md`).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// A secret in clear: only ever held long enough to show it once. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// The stored form of a secret: base64url SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHash(String);

/// Hex digits of the issue time that begin an ordered secret or a grant id: milliseconds since
/// 1970, which twelve digits hold until the year 10889.
const ORDER_DIGITS: usize = 12;

/// Length of an ordered secret: the issue time, then 256 random bits.
const ORDERED_LEN: usize = ORDER_DIGITS + 43;

/// The issue-time prefix: lowercase hex milliseconds, fixed width, so that text order is time
/// order.
fn order_prefix() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{millis:0width$x}", width = ORDER_DIGITS)
}

/// A new grant id: `g_`, the issue time, 128 random bits. The id is in every access token of the
/// grant (`gid`) and keys three tables; time-ordered, a new grant's rows land at the end of their
/// indexes.
pub fn new_grant_id() -> Result<String, ring::error::Unspecified> {
    Ok(format!("g_{}{}", order_prefix(), random_token(16)?))
}

/// Random bytes from the OS CSPRNG, base64url-encoded.
pub fn random_token(bytes: usize) -> Result<String, ring::error::Unspecified> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buf)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

impl Secret {
    /// A new 256-bit secret.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        random_token(32).map(Self)
    }

    /// A new 256-bit secret that begins with its issue time (twelve hex digits), for codes and
    /// refresh tokens: its stored form keeps that prefix in clear before the hash of the whole, so
    /// new secrets are stored in time order. The prefix tells only when the secret was issued,
    /// which the access token issued with it says anyway (`iat`).
    pub fn generate_ordered() -> Result<Self, ring::error::Unspecified> {
        Ok(Self(format!("{}{}", order_prefix(), random_token(32)?)))
    }

    /// Wraps a secret a client presented.
    pub fn presented(value: &str) -> Self {
        Self(value.to_owned())
    }

    /// The secret, to show once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its stored form: the SHA-256 of the whole secret, after the issue time of an ordered one
    /// (any other secret, as every secret issued before ordered ones, is stored as its hash
    /// alone).
    pub fn hash(&self) -> SecretHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        let hash = URL_SAFE_NO_PAD.encode(digest.as_ref());
        match self.order() {
            Some(prefix) => SecretHash(format!("{prefix}{hash}")),
            None => SecretHash(hash),
        }
    }

    /// The issue-time prefix, if this has the form of an ordered secret.
    fn order(&self) -> Option<&str> {
        let prefix = self.0.get(..ORDER_DIGITS)?;
        (self.0.len() == ORDERED_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then_some(prefix)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl SecretHash {
    /// Wraps a stored hash.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }

    /// The stored text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `presented` hashes to this value; the comparison is constant-time.
    pub fn verify(&self, presented: &Secret) -> bool {
        presented
            .hash()
            .0
            .as_bytes()
            .ct_eq(self.0.as_bytes())
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_verify_and_others_do_not() {
        let secret = Secret::generate().expect("rng");
        assert_eq!(secret.expose().len(), 43, "256 bits, base64url");
        let hash = secret.hash();
        assert_ne!(hash.as_str(), secret.expose());
        assert!(hash.verify(&Secret::presented(secret.expose())));
        assert!(!hash.verify(&Secret::presented("guess")));
        assert!(!format!("{secret:?}").contains(secret.expose()));
    }

    /// Ordered secrets are stored in the order they were issued, as their issue time and the
    /// hash of the whole; every other secret, as its hash alone.
    #[test]
    fn ordered_secrets_are_stored_in_issue_order() {
        let millis = |prefix: &str| u128::from_str_radix(prefix, 16).expect("hex");
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis()
        };
        let before = now();
        let first = Secret::generate_ordered().expect("rng");
        let issued = millis(&first.expose()[..12]);
        assert!(
            (before..=now()).contains(&issued),
            "begins with its issue time"
        );
        // One issued a millisecond later (no sleep: the time is spelled out).
        let second = Secret::presented(&format!(
            "{:012x}{}",
            issued + 1,
            Secret::generate().expect("rng").expose()
        ));
        assert_eq!(first.expose().len(), 55);
        let (a, b) = (first.hash(), second.hash());
        assert!(a.as_str() < b.as_str(), "{a:?} before {b:?}");
        assert_eq!(a.as_str().len(), 12 + 43);
        assert_eq!(&a.as_str()[..12], &first.expose()[..12]);
        assert!(
            !a.as_str().contains(&first.expose()[12..]),
            "the random part is only hashed"
        );
        assert!(a.verify(&Secret::presented(first.expose())));
        assert!(!a.verify(&second));
        // The same random part under another time is another secret.
        let forged = Secret::presented(&format!("000000000000{}", &first.expose()[12..]));
        assert!(!a.verify(&forged));
        // A plain secret's stored form is unchanged: the hash alone, as before.
        let plain = Secret::presented("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            plain.hash().as_str(),
            URL_SAFE_NO_PAD.encode(
                ring::digest::digest(&ring::digest::SHA256, plain.expose().as_bytes()).as_ref()
            )
        );
        let id = new_grant_id().expect("rng");
        assert!(id.starts_with("g_") && id.len() == 2 + 12 + 22, "{id}");
    }
}
