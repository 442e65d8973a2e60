//! Where a signing key is in its life (the `state` column of `signing_keys`).

/// Where a key is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyState {
    /// Published in the JWK set, not yet signing.
    Next,
    /// Signing new tokens.
    Current,
    /// Published so tokens it signed still verify; no longer signing.
    Previous,
    /// Withdrawn: tokens it signed no longer verify.
    Retired,
}

impl KeyState {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Current => "current",
            Self::Previous => "previous",
            Self::Retired => "retired",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "next" => Some(Self::Next),
            "current" => Some(Self::Current),
            "previous" => Some(Self::Previous),
            "retired" => Some(Self::Retired),
            _ => None,
        }
    }

    /// True for the states whose public key is in the JWK set.
    pub fn is_published(self) -> bool {
        !matches!(self, Self::Retired)
    }
}
