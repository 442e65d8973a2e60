//! JWS algorithms Gatehouse signs access tokens with.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A JWS signing algorithm (RFC 7518). ES256 is the default: small keys, fast signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum SigningAlgorithm {
    /// ECDSA with P-256 and SHA-256.
    #[default]
    ES256,
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    RS256,
}

impl SigningAlgorithm {
    /// The `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
            Self::RS256 => "RS256",
        }
    }

    /// Parses an `alg` value; only the algorithms above are accepted.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "ES256" => Some(Self::ES256),
            "EdDSA" => Some(Self::EdDSA),
            "RS256" => Some(Self::RS256),
            _ => None,
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
