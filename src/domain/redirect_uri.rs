//! Redirect URIs: what may be registered (RFC 7591 §2, RFC 8252, RFC 9700 §4.1) and how a
//! requested one is matched against a registered one: exactly, except that a loopback URI
//! matches on any port (RFC 8252 §7.3; VS Code and Claude Code use an ephemeral port).

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

/// Schemes that can run code or read local data in a browser: never a redirect target.
const FORBIDDEN_SCHEMES: [&str; 8] = [
    "javascript",
    "data",
    "file",
    "vbscript",
    "blob",
    "about",
    "filesystem",
    "view-source",
];
/// Longest accepted redirect URI.
const MAX_LEN: usize = 2000;

/// The three kinds of redirect URI Gatehouse accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectKind {
    /// `https://` on any host (subject to the operator's host allow-list).
    Https,
    /// `http://` on `127.0.0.1` (any 127/8 address), `[::1]` or `localhost`: a native app's
    /// loopback listener; the port is ignored when matching.
    Loopback,
    /// A native app's private-use scheme such as `cursor://...` (RFC 8252 §7.1).
    PrivateUse,
}

/// What the operator allows at registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedirectPolicy {
    /// Accept private-use schemes at all.
    pub allow_private_use_schemes: bool,
    /// Private-use schemes accepted by name although they are not reverse domain names (Cursor's
    /// `cursor`). Reverse-domain schemes (`com.example.app`, RFC 8252 §7.1) need no listing.
    /// Anything else is refused, so an OS handler such as `ms-msdt:` or `search-ms:` can never
    /// be a redirect target.
    pub private_use_schemes: Vec<String>,
    /// When not empty, https redirect URIs must be on one of these hosts.
    pub allowed_hosts: Vec<String>,
    /// Accept every private-use scheme (only for re-reading URIs accepted when registered).
    pub any_private_use_scheme: bool,
}

impl RedirectPolicy {
    /// Everything the protocol allows: used to re-read URIs that were accepted when registered,
    /// and for operator-registered clients.
    pub fn permissive() -> Self {
        Self {
            allow_private_use_schemes: true,
            private_use_schemes: Vec::new(),
            allowed_hosts: Vec::new(),
            any_private_use_scheme: true,
        }
    }

    fn accepts_scheme(&self, scheme: &str) -> bool {
        self.allow_private_use_schemes
            && (self.any_private_use_scheme
                || scheme.contains('.')
                || self
                    .private_use_schemes
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(scheme)))
    }
}

/// Why a redirect URI is refused. Each message names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    #[error("redirect URI {0:?} is not an absolute URI")]
    NotAbsolute(String),
    #[error("redirect URI {0:?} must not contain a fragment (RFC 6749 §3.1.2)")]
    Fragment(String),
    #[error("redirect URI {0:?} must not contain a user name or password")]
    Userinfo(String),
    #[error("redirect URI {0:?} uses the forbidden scheme {1:?}")]
    ForbiddenScheme(String, String),
    #[error(
        "redirect URI {0:?} uses plain http on a non-loopback host: use https, or http on 127.0.0.1, [::1] or localhost"
    )]
    InsecureHttp(String),
    #[error(
        "redirect URI {0:?} uses a private-use scheme this server does not accept (reverse-domain schemes such as com.example.app:/cb, or those the operator lists)"
    )]
    PrivateUseDisabled(String),
    #[error("redirect URI {0:?} is on a host this server does not allow")]
    HostNotAllowed(String),
    #[error(
        "redirect URI {0:?} is longer than {MAX_LEN} characters or contains whitespace or control characters"
    )]
    Malformed(String),
}

/// A registered redirect URI, kept exactly as registered.
#[derive(Clone, PartialEq, Eq)]
pub struct RedirectUri {
    raw: String,
    kind: RedirectKind,
    url: Url,
}

/// True for `localhost`, 127.0.0.0/8 and `::1`: the loopback hosts of RFC 8252 §7.3.
pub fn is_loopback_host(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

impl RedirectUri {
    /// Checks a URI offered for registration against the protocol and `policy`.
    pub fn parse(raw: &str, policy: &RedirectPolicy) -> Result<Self, RedirectUriError> {
        if raw.len() > MAX_LEN || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RedirectUriError::Malformed(raw.chars().take(200).collect()));
        }
        let url = Url::parse(raw).map_err(|_| RedirectUriError::NotAbsolute(raw.to_owned()))?;
        let scheme = url.scheme().to_ascii_lowercase();
        if FORBIDDEN_SCHEMES.contains(&scheme.as_str()) {
            return Err(RedirectUriError::ForbiddenScheme(raw.to_owned(), scheme));
        }
        if raw.contains('#') {
            return Err(RedirectUriError::Fragment(raw.to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RedirectUriError::Userinfo(raw.to_owned()));
        }
        let kind = match scheme.as_str() {
            "https" => {
                let host = url
                    .host_str()
                    .ok_or_else(|| RedirectUriError::NotAbsolute(raw.to_owned()))?;
                if !policy.allowed_hosts.is_empty()
                    && !policy
                        .allowed_hosts
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case(host))
                {
                    return Err(RedirectUriError::HostNotAllowed(raw.to_owned()));
                }
                RedirectKind::Https
            }
            "http" => match url.host() {
                Some(host) if is_loopback_host(&host) => RedirectKind::Loopback,
                _ => return Err(RedirectUriError::InsecureHttp(raw.to_owned())),
            },
            // A native app's scheme (RFC 8252 §7.1), as the operator allows.
            other if policy.accepts_scheme(other) => RedirectKind::PrivateUse,
            _ => return Err(RedirectUriError::PrivateUseDisabled(raw.to_owned())),
        };
        Ok(Self {
            raw: raw.to_owned(),
            kind,
            url,
        })
    }

    /// The URI exactly as registered.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Its kind.
    pub fn kind(&self) -> RedirectKind {
        self.kind
    }

    /// The host, shown prominently on the consent page.
    pub fn host(&self) -> Option<&str> {
        self.url.host_str()
    }

    /// True when `requested` may be used with this registration: byte-for-byte equal
    /// (RFC 9700 §4.1.1), or, for a loopback URI, equal in everything but the port
    /// (RFC 8252 §7.3).
    pub fn matches(&self, requested: &str) -> bool {
        if requested == self.raw {
            return true;
        }
        if self.kind != RedirectKind::Loopback || requested.contains('#') {
            return false;
        }
        let Ok(other) = Url::parse(requested) else {
            return false;
        };
        let same_host = matches!((self.url.host(), other.host()), (Some(a), Some(b)) if a == b);
        other.scheme() == "http"
            && same_host
            && other.username().is_empty()
            && other.password().is_none()
            && other.path() == self.url.path()
            && other.query() == self.url.query()
    }
}

impl fmt::Debug for RedirectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedirectUri({:?}, {:?})", self.raw, self.kind)
    }
}

impl fmt::Display for RedirectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> RedirectPolicy {
        RedirectPolicy::permissive()
    }

    #[test]
    fn real_clients_redirect_uris_are_accepted() {
        for (raw, kind) in [
            (
                "https://claude.ai/api/mcp/auth_callback",
                RedirectKind::Https,
            ),
            (
                "https://chatgpt.com/connector_platform_oauth_redirect",
                RedirectKind::Https,
            ),
            ("https://vscode.dev/redirect", RedirectKind::Https),
            ("http://127.0.0.1/", RedirectKind::Loopback),
            ("http://127.0.0.1:33418/", RedirectKind::Loopback),
            ("http://[::1]:8080/cb", RedirectKind::Loopback),
            (
                "http://localhost:6274/oauth/callback",
                RedirectKind::Loopback,
            ),
            (
                "cursor://anysphere.cursor-mcp/oauth/callback",
                RedirectKind::PrivateUse,
            ),
        ] {
            assert_eq!(
                RedirectUri::parse(raw, &open()).map(|u| u.kind()),
                Ok(kind),
                "{raw}"
            );
        }
    }

    #[test]
    fn dangerous_forms_are_refused_with_the_value_named() {
        for raw in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "file:///etc/passwd",
            "vbscript:x",
            "https://a.example/cb#frag",
            "https://user:pw@a.example/cb",
            "http://a.example/cb",
            "http://10.0.0.1/cb",
            "/relative/cb",
            "https://a.example/c b",
            " https://a.example/cb",
        ] {
            let err = RedirectUri::parse(raw, &open()).expect_err(raw);
            assert!(
                err.to_string().contains(raw.trim()) || raw.contains(' '),
                "{raw}: {err}"
            );
        }
    }

    #[test]
    fn only_reverse_domain_or_listed_private_use_schemes() {
        let policy = RedirectPolicy {
            allow_private_use_schemes: true,
            private_use_schemes: vec!["cursor".into()],
            ..RedirectPolicy::default()
        };
        for ok in [
            "cursor://anysphere.cursor-mcp/oauth/callback",
            "com.example.app:/oauth2redirect",
        ] {
            assert!(RedirectUri::parse(ok, &policy).is_ok(), "{ok}");
        }
        for bad in [
            "ms-msdt:/id PCWDiagnostic",
            "search-ms:query=x",
            "vscode://cb",
            "mailto:a@b.example",
        ] {
            assert!(RedirectUri::parse(bad, &policy).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_use_schemes_can_be_turned_off() {
        let policy = RedirectPolicy::default();
        assert!(matches!(
            RedirectUri::parse("cursor://anysphere.cursor-mcp/oauth/callback", &policy),
            Err(RedirectUriError::PrivateUseDisabled(_))
        ));
    }

    #[test]
    fn host_allow_list_applies_to_https() {
        let policy = RedirectPolicy {
            allowed_hosts: vec!["claude.ai".into()],
            ..open()
        };
        assert!(RedirectUri::parse("https://claude.ai/api/mcp/auth_callback", &policy).is_ok());
        assert!(RedirectUri::parse("https://evil.example/cb", &policy).is_err());
    }

    #[test]
    fn matching_is_exact_except_the_loopback_port() {
        let https =
            RedirectUri::parse("https://claude.ai/api/mcp/auth_callback", &open()).expect("valid");
        assert!(https.matches("https://claude.ai/api/mcp/auth_callback"));
        for other in [
            "https://claude.ai/api/mcp/auth_callback/",
            "https://claude.ai/api/mcp/auth_callback?x=1",
            "https://CLAUDE.ai/api/mcp/auth_callback",
            "https://claude.ai:443/api/mcp/auth_callback",
            "https://claude.ai.evil.example/api/mcp/auth_callback",
        ] {
            assert!(!https.matches(other), "{other}");
        }
        let loopback = RedirectUri::parse("http://127.0.0.1/callback", &open()).expect("valid");
        assert!(loopback.matches("http://127.0.0.1:53124/callback"));
        assert!(loopback.matches("http://127.0.0.1/callback"));
        for other in [
            "http://127.0.0.1:53124/other",
            "http://localhost:53124/callback",
            "https://127.0.0.1:53124/callback",
            "http://127.0.0.1:53124/callback?x=1",
            "http://127.0.0.1:53124/callback#x",
            "http://evil@127.0.0.1:53124/callback",
        ] {
            assert!(!loopback.matches(other), "{other}");
        }
        let cursor = RedirectUri::parse("cursor://anysphere.cursor-mcp/oauth/callback", &open())
            .expect("valid");
        assert!(cursor.matches("cursor://anysphere.cursor-mcp/oauth/callback"));
        assert!(!cursor.matches("cursor://anysphere.cursor-mcp/oauth/callback2"));
    }
}
