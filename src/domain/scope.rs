//! Scope tokens and sets of them (RFC 6749 §3.3).

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

/// A `scope` value: scope tokens, each once, in the order first given (RFC 6749 §3.3: a
/// space-delimited list whose order does not matter). Built from what a client sent or what the
/// database holds, written back with [`fmt::Display`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScopeSet(Vec<ScopeToken>);

impl ScopeSet {
    /// The tokens of a space-delimited `scope` value a client sent: every item must be a scope
    /// token (empty items, from repeated spaces, are skipped).
    pub fn parse(raw: &str) -> Result<Self, ScopeError> {
        raw.split(' ')
            .filter(|t| !t.is_empty())
            .map(ScopeToken::parse)
            .collect()
    }

    /// The tokens of a space-delimited `scope` value. Empty items (repeated spaces) are skipped,
    /// as is anything that is not a scope token: callers keep only scopes they know anyway.
    pub fn parse_lenient(raw: &str) -> Self {
        raw.split(' ')
            .filter_map(|t| ScopeToken::parse(t).ok())
            .collect()
    }

    /// True when there is no scope.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when `scope` is in the set.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.iter().any(|t| t.as_str() == scope)
    }

    /// The scopes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &ScopeToken> {
        self.0.iter()
    }

    /// The scopes as strings, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(ScopeToken::as_str)
    }

    /// Adds `scope` unless it is there already.
    pub fn insert(&mut self, scope: ScopeToken) {
        if !self.0.contains(&scope) {
            self.0.push(scope);
        }
    }

    /// Keeps only the scopes `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|t| keep(t.as_str()));
    }

    /// The first scope of `self` that `other` lacks, if any.
    pub fn first_missing_from(&self, other: &ScopeSet) -> Option<&ScopeToken> {
        self.0.iter().find(|t| !other.0.contains(t))
    }
}

impl FromIterator<ScopeToken> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = ScopeToken>>(iter: I) -> Self {
        let mut set = Self::default();
        for token in iter {
            set.insert(token);
        }
        set
    }
}

impl<'a> FromIterator<&'a ScopeToken> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = &'a ScopeToken>>(iter: I) -> Self {
        iter.into_iter().cloned().collect()
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, token) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(token.as_str())?;
        }
        Ok(())
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

    #[test]
    fn a_set_keeps_each_scope_once_in_the_order_given() {
        let set = ScopeSet::parse_lenient("mcp  activity:read mcp \"bad\" ");
        assert_eq!(set.to_string(), "mcp activity:read");
        assert!(set.contains("activity:read"));
        assert!(!set.contains("bad"));
        let mcp_only = ScopeSet::parse_lenient("mcp");
        assert_eq!(mcp_only.first_missing_from(&set), None);
        assert_eq!(
            set.first_missing_from(&mcp_only).map(ScopeToken::as_str),
            Some("activity:read")
        );
        assert!(ScopeSet::parse_lenient(" ").is_empty());
        assert!(ScopeSet::parse("mcp \"bad\"").is_err());
        assert_eq!(
            ScopeSet::parse("mcp  mcp").map(|s| s.to_string()),
            Ok("mcp".to_owned())
        );
        assert_eq!(ScopeSet::default().to_string(), "");
    }
}
