//! OAuth request parameters (query or form body) with the RFC 6749 §3.1 / §3.2 rule that no
//! parameter appears more than once.

use std::collections::HashMap;

/// A parameter that appears more than once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {0} is repeated")]
pub struct Repeated(pub String);

/// Parsed `application/x-www-form-urlencoded` parameters.
#[derive(Debug, Clone, Default)]
pub struct Params(HashMap<String, Vec<String>>);

impl Params {
    /// Parses a query string or form body.
    pub fn parse(encoded: &str) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(encoded.as_bytes()) {
            map.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Self(map)
    }

    /// The value of `name` (an empty value counts as absent); an error when it is repeated.
    pub fn get(&self, name: &str) -> Result<Option<&str>, Repeated> {
        match self.0.get(name).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([one]) => Ok(Some(one.as_str()).filter(|v| !v.is_empty())),
            Some(_) => Err(Repeated(name.to_owned())),
        }
    }

    /// The first parameter that appears more than once.
    pub fn repeated(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, v)| v.len() > 1)
            .map(|(k, _)| k.as_str())
    }
}
