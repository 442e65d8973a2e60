//! Scope tokens (RFC 6749 §3.3).

use std::fmt;

/// One scope token: `1*( %x21 / %x23-5B / %x5D-7E )` (RFC 6749 §3.3).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeToken(String);

/// Why a string is not a scope token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "scope {0:?} is empty or has a character RFC 6749 §3.3 forbids (space, quote, backslash, control)"
    )]
    Invalid(String),
}

impl ScopeToken {
    /// Parses one scope token.
    pub fn parse(raw: &str) -> Result<Self, ScopeError> {
        let ok = !raw.is_empty()
            && raw
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ScopeError::Invalid(raw.to_owned()))
        }
    }

    /// The token as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ScopeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc_6749_characters() {
        for ok in ["mcp", "activity:read", "a.b/c-d_e~!#$%&'()*+,;<=>?@[]^`{|}"] {
            assert!(ScopeToken::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_forbidden_characters() {
        for bad in ["", "a b", "a\"b", "a\\b", "a\tb", "é"] {
            assert!(ScopeToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
