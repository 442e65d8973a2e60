//! The issuer identifier (RFC 8414 §2, RFC 9207) and the URLs built from it.
//!
//! Clients compare the issuer as a raw string with PRM `authorization_servers[0]`, the metadata
//! `issuer`, the JWT `iss` and the authorization response `iss` (RFC 8414 §3.3, RFC 9207 §2.4).
//! So there is exactly one canonical spelling: `scheme://host[:port]`, lower-case, no default
//! port, no trailing slash, no path, query, fragment or userinfo.

use std::fmt;

use url::Url;

/// A validated issuer: an origin with no trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuer {
    canonical: String,
    loopback: bool,
    https: bool,
}

/// Why a string is not an acceptable issuer. Each message is one line an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuerError {
    #[error("issuer {0:?} is not an absolute URL ({1})")]
    NotAUrl(String, String),
    #[error("issuer {0:?} must use https or http, not {1:?}")]
    Scheme(String, String),
    #[error(
        "issuer {0:?} must use https: plain http is only allowed for a loopback host (127.0.0.1, [::1], localhost)"
    )]
    HttpsRequired(String),
    #[error(
        "issuer {0:?} must not end with a slash: clients compare it byte for byte; write {1:?}"
    )]
    TrailingSlash(String, String),
    #[error(
        "issuer {0:?} must not have a path: Gatehouse serves its endpoints at the root of the issuer's origin"
    )]
    Path(String),
    #[error("issuer {0:?} must not have a query")]
    Query(String),
    #[error("issuer {0:?} must not have a fragment")]
    Fragment(String),
    #[error("issuer {0:?} must not contain a user name or password")]
    Userinfo(String),
}

impl Issuer {
    /// Parses and checks an issuer string.
    pub fn parse(raw: &str) -> Result<Self, IssuerError> {
        let url =
            Url::parse(raw).map_err(|e| IssuerError::NotAUrl(raw.to_owned(), e.to_string()))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(IssuerError::Scheme(raw.to_owned(), other.to_owned())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(IssuerError::Userinfo(raw.to_owned()));
        }
        if url.query().is_some() {
            return Err(IssuerError::Query(raw.to_owned()));
        }
        if url.fragment().is_some() {
            return Err(IssuerError::Fragment(raw.to_owned()));
        }
        let host = url
            .host()
            .ok_or_else(|| IssuerError::NotAUrl(raw.to_owned(), "no host".into()))?;
        let loopback = super::redirect_uri::is_loopback_host(&host);
        let mut canonical = format!("{}://{}", url.scheme(), host);
        if let Some(port) = url.port() {
            canonical.push_str(&format!(":{port}"));
        }
        if url.path() != "/" {
            return Err(IssuerError::Path(raw.to_owned()));
        }
        // `Url` always reports the path `/` for an origin, so the trailing slash is read from
        // the raw string.
        if raw.ends_with('/') {
            return Err(IssuerError::TrailingSlash(raw.to_owned(), canonical));
        }
        if !https && !loopback {
            return Err(IssuerError::HttpsRequired(raw.to_owned()));
        }
        Ok(Self {
            canonical,
            loopback,
            https,
        })
    }

    /// The canonical issuer string, exactly as it appears in every document and token.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// An absolute URL on this issuer's origin; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.canonical, path)
    }

    /// True when the host is 127.0.0.0/8, ::1 or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.loopback
    }

    /// True for an `https` issuer (cookies are then `Secure`).
    pub fn is_https(&self) -> bool {
        self.https
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        let cases = [
            ("https://auth.example.com", "https://auth.example.com"),
            ("HTTPS://Auth.Example.COM", "https://auth.example.com"),
            ("https://auth.example.com:443", "https://auth.example.com"),
            (
                "https://auth.example.com:8443",
                "https://auth.example.com:8443",
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://[::1]:9", "http://[::1]:9"),
        ];
        for (raw, want) in cases {
            let issuer = Issuer::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(issuer.as_str(), want, "{raw}");
            assert_eq!(issuer.url("/mcp"), format!("{want}/mcp"));
        }
    }

    #[test]
    fn rejections_name_the_problem() {
        type Check = fn(&IssuerError) -> bool;
        let cases: [(&str, Check); 9] = [
            ("auth.example.com", |e| {
                matches!(e, IssuerError::NotAUrl(..))
            }),
            ("ftp://auth.example.com", |e| {
                matches!(e, IssuerError::Scheme(..))
            }),
            ("http://auth.example.com", |e| {
                matches!(e, IssuerError::HttpsRequired(..))
            }),
            ("http://10.0.0.1:8080", |e| {
                matches!(e, IssuerError::HttpsRequired(..))
            }),
            ("https://auth.example.com/", |e| {
                matches!(e, IssuerError::TrailingSlash(..))
            }),
            ("https://auth.example.com/tenant", |e| {
                matches!(e, IssuerError::Path(..))
            }),
            ("https://auth.example.com?x=1", |e| {
                matches!(e, IssuerError::Query(..))
            }),
            ("https://auth.example.com#x", |e| {
                matches!(e, IssuerError::Fragment(..))
            }),
            ("https://u:p@auth.example.com", |e| {
                matches!(e, IssuerError::Userinfo(..))
            }),
        ];
        for (raw, check) in cases {
            let err = Issuer::parse(raw).expect_err(raw);
            assert!(check(&err), "{raw}: unexpected {err:?}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn trailing_slash_message_suggests_the_fix() {
        let err = Issuer::parse("https://auth.example.com/").expect_err("slash");
        assert!(
            err.to_string().contains("\"https://auth.example.com\""),
            "{err}"
        );
    }
}
