//! Secrets Gatehouse hands out (client secrets now; codes and refresh tokens later): generated
//! from the OS CSPRNG, shown once, stored only as a SHA-256 hash, compared in constant time.
//!
//! They carry at least 256 bits of entropy, so a fast hash is the right tool (a slow password
//! hash protects low-entropy secrets; it adds nothing here but CPU cost per request).

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

    /// Wraps a secret a client presented.
    pub fn presented(value: &str) -> Self {
        Self(value.to_owned())
    }

    /// The secret, to show once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its stored form.
    pub fn hash(&self) -> SecretHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        SecretHash(URL_SAFE_NO_PAD.encode(digest.as_ref()))
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
}
