//! Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document; MCP 2025-11-25
//! and later): a `client_id` that is an https URL names a JSON document describing the client.
//!
//! Per the draft: only a 200 counts, redirects are not followed, the body is capped at 5 KB, the
//! document's `client_id` must equal the URL byte for byte, `redirect_uris` is required,
//! secret-based authentication is refused, and `none` is negotiated when the document prefers
//! `private_key_jwt` but also supports `none` (ChatGPT). SSRF (RFC 6890): the host is resolved
//! once by our own resolver, which refuses special-use addresses, and the connection goes only to
//! the addresses it returned. Documents are cached within bounds; failures never are.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::Deserialize;
use time::OffsetDateTime;
use url::{Host, Url};

use crate::config::Config;
use crate::domain::{Client, ClientKind, RedirectPolicy, RedirectUri, TokenEndpointAuthMethod};

/// Largest accepted document (the draft recommends 5 KB).
pub const MAX_DOCUMENT_BYTES: usize = 5 * 1024;
/// Whole-fetch time limit: the fetch blocks a person's authorization page.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Cache lifetime bounds and default.
const MIN_CACHE: Duration = Duration::from_secs(30);
const MAX_CACHE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_CACHE: Duration = Duration::from_secs(300);
/// Most fetches in flight at once (each may hold a blocking DNS thread until it times out).
const MAX_CONCURRENT_FETCHES: usize = 8;
/// Most documents kept in memory.
const MAX_CACHED: usize = 1000;

/// Why a metadata document was not accepted. Each message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientMetadataError {
    #[error(
        "client_id {0:?} is not a valid metadata document URL (https, with a path, no fragment, user info or dot segments)"
    )]
    InvalidUrl(String),
    #[error(
        "client_id {0:?} points at a private, loopback or other special-use address; it is not fetched"
    )]
    ForbiddenAddress(String),
    #[error("the metadata document at {0:?} could not be fetched: {1}")]
    Fetch(String, String),
    #[error(
        "the metadata document at {0:?} answered HTTP {1}; only 200 is accepted (redirects are not followed)"
    )]
    Status(String, u16),
    #[error("the metadata document at {0:?} is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge(String),
    #[error("the metadata document at {0:?} is not valid: {1}")]
    Invalid(String, String),
    #[error("too many metadata documents are being fetched right now; {0:?} was not fetched")]
    Busy(String),
}

impl ClientMetadataError {
    /// What a person may be shown: the document's own problems, but no network detail (which
    /// would tell an outsider about hosts and ports the server can reach).
    pub fn public_message(&self) -> String {
        match self {
            Self::InvalidUrl(_) | Self::Invalid(..) | Self::TooLarge(_) => self.to_string(),
            Self::Busy(_) => {
                "The server is busy verifying applications; try again in a moment.".to_owned()
            }
            Self::ForbiddenAddress(id) | Self::Fetch(id, _) | Self::Status(id, _) => {
                format!("The application's metadata document at {id:?} could not be fetched.")
            }
        }
    }
}

/// The document's fields Gatehouse uses; others are ignored.
#[derive(Debug, Deserialize)]
struct Document {
    client_id: Option<String>,
    client_name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    client_secret: Option<serde_json::Value>,
    grant_types: Option<Vec<String>>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    application_type: Option<String>,
}

/// True for addresses that are not on the public internet (RFC 6890 and successors): a metadata
/// fetch must never reach the server's own network.
pub fn is_special_use(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_special_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_special_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation 2001:db8::/32
                || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments 2001::/23
                || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard 100::/64
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 and /48 (may embed private IPv4)
                || s[0] == 0x2002 // 6to4 (embeds IPv4)
                || (s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d
        }
    }
}

fn is_special_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0 // "this network" 0/8
        || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments 192.0.0/24
        || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking 198.18/15
        || o[0] >= 240 // reserved 240/4
}

/// The resolver's refusal of a name, found again by type in the connect error it causes.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves to a special-use address")]
struct SpecialUseRefused(String);

/// The DNS resolver of the metadata fetcher: it resolves once and hands reqwest only addresses
/// that passed [`is_special_use`], so the checked address is the connected one.
#[derive(Debug, Clone, Copy)]
struct CheckedResolver {
    allow_loopback: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = |a: &SocketAddr| {
                !is_special_use(a.ip()) || (allow_loopback && a.ip().is_loopback())
            };
            // One special-use answer spoils the name: a rebinding attacker mixes both kinds.
            if addrs.is_empty() || !addrs.iter().all(allowed) {
                return Err(
                    Box::new(SpecialUseRefused(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// A document accepted into the cache.
#[derive(Debug, Clone)]
struct Cached {
    client: Client,
    expires: Instant,
}

/// Fetches, checks and caches metadata documents.
#[derive(Debug)]
pub struct ClientMetadataFetcher {
    http: reqwest::Client,
    allow_loopback: bool,
    redirect_policy: RedirectPolicy,
    cache: Mutex<HashMap<String, Cached>>,
    in_flight: tokio::sync::Semaphore,
}

impl ClientMetadataFetcher {
    /// A fetcher configured from `config`.
    pub fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let allow_loopback = config.client_metadata.insecure_allow_loopback;
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver { allow_loopback }))
            // A proxy would resolve the name itself, past our check.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!(
                "Gatehouse/",
                env!("CARGO_PKG_VERSION"),
                " (client metadata fetcher)"
            ))
            .build()?;
        Ok(Self {
            http,
            allow_loopback,
            redirect_policy: config.registration.redirect.clone(),
            cache: Mutex::new(HashMap::new()),
            in_flight: tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES),
        })
    }

    /// True when `client_id` has the form of a metadata document URL (so it is never looked up
    /// among registered clients).
    pub fn is_metadata_url(&self, client_id: &str) -> bool {
        self.check_url(client_id).is_ok()
    }

    /// True when a valid document for `client_id` is cached (no fetch would happen).
    pub fn is_cached(&self, client_id: &str) -> bool {
        self.cached(client_id).is_some()
    }

    fn check_url(&self, client_id: &str) -> Result<Url, ClientMetadataError> {
        let invalid = || ClientMetadataError::InvalidUrl(client_id.to_owned());
        let url = Url::parse(client_id).map_err(|_| invalid())?;
        let loopback_http = self.allow_loopback
            && url.scheme() == "http"
            && matches!(url.host(), Some(Host::Ipv4(ip)) if ip.is_loopback());
        // The URL must already be in its canonical form: `Url` resolves dot segments (also
        // percent-encoded ones and backslashes), so any difference means the id names another
        // document than the one that would be fetched.
        let ok = url.as_str() == client_id
            && (url.scheme() == "https" || loopback_http)
            && url.host().is_some()
            && url.path() != "/"
            && !client_id.contains('#')
            && url.username().is_empty()
            && url.password().is_none()
            && client_id.len() <= 2000;
        if ok { Ok(url) } else { Err(invalid()) }
    }

    /// The client a metadata-document `client_id` names: from the cache, or fetched and checked.
    pub async fn resolve(
        &self,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<Client, ClientMetadataError> {
        if let Some(hit) = self.cached(client_id) {
            return Ok(hit);
        }
        let url = self.check_url(client_id)?;
        // IP-literal hosts never reach the resolver: check them here.
        let literal = match url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            if is_special_use(ip) && !(self.allow_loopback && ip.is_loopback()) {
                return Err(ClientMetadataError::ForbiddenAddress(client_id.to_owned()));
            }
        }
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| ClientMetadataError::Busy(client_id.to_owned()))?;
        let (body, max_age) = self.fetch(client_id, url).await?;
        let client = self.check_document(client_id, &body, now)?;
        self.store(client_id, &client, max_age);
        Ok(client)
    }

    async fn fetch(
        &self,
        client_id: &str,
        url: Url,
    ) -> Result<(Vec<u8>, Duration), ClientMetadataError> {
        let fetch_error = |e: reqwest::Error| {
            // The resolver's refusal surfaces deep in a connect error's causes.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(inner) = cause {
                if inner.downcast_ref::<SpecialUseRefused>().is_some() {
                    return ClientMetadataError::ForbiddenAddress(client_id.to_owned());
                }
                text.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            ClientMetadataError::Fetch(client_id.to_owned(), text)
        };
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(fetch_error)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ClientMetadataError::Status(client_id.to_owned(), status));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(ClientMetadataError::TooLarge(client_id.to_owned()));
        }
        let max_age = cache_lifetime(response.headers().get(reqwest::header::CACHE_CONTROL));
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(ClientMetadataError::TooLarge(client_id.to_owned()));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    fn check_document(
        &self,
        client_id: &str,
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<Client, ClientMetadataError> {
        let invalid = |why: String| ClientMetadataError::Invalid(client_id.to_owned(), why);
        let doc: Document = serde_json::from_slice(body)
            .map_err(|e| invalid(format!("not a JSON client metadata object ({e})")))?;
        match doc.client_id.as_deref() {
            Some(id) if id == client_id => {}
            Some(id) => {
                return Err(invalid(format!(
                    "its client_id {id:?} differs from the URL it was fetched from"
                )));
            }
            None => return Err(invalid("it has no client_id".to_owned())),
        }
        if doc.client_secret.is_some() {
            return Err(invalid("it contains a client_secret".to_owned()));
        }
        let supported = doc
            .token_endpoint_auth_methods_supported
            .unwrap_or_default();
        let auth_method = match doc.token_endpoint_auth_method.as_deref() {
            None | Some("none") => TokenEndpointAuthMethod::None,
            // A public document can hold no shared secret (CIMD draft), whatever else it lists:
            // this arm must come before the negotiation below.
            Some(m @ ("client_secret_basic" | "client_secret_post" | "client_secret_jwt")) => {
                return Err(invalid(format!(
                    "token_endpoint_auth_method {m:?} uses a shared secret, which a public document cannot hold"
                )));
            }
            // ChatGPT prefers private_key_jwt and also lists none: negotiate none.
            Some(_) if supported.iter().any(|m| m == "none") => TokenEndpointAuthMethod::None,
            Some(m) => {
                return Err(invalid(format!(
                    "token_endpoint_auth_method {m:?} is not supported here and the document does not offer \"none\""
                )));
            }
        };
        let raw_uris = doc
            .redirect_uris
            .filter(|u| !u.is_empty())
            .ok_or_else(|| invalid("it has no redirect_uris".to_owned()))?;
        let redirect_uris = raw_uris
            .iter()
            .map(|u| RedirectUri::parse(u, &self.redirect_policy))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        // A name that could mislead is dropped: the verified host is what the pages lead with.
        let name = doc
            .client_name
            .filter(|n| crate::domain::acceptable_client_name(n));
        Ok(Client {
            id: client_id.to_owned(),
            kind: ClientKind::MetadataDocument,
            name,
            redirect_uris,
            auth_method,
            grant_types: doc
                .grant_types
                .unwrap_or_else(|| {
                    vec!["authorization_code".to_owned(), "refresh_token".to_owned()]
                })
                .into_iter()
                .filter(|g| g == "authorization_code" || g == "refresh_token")
                .collect(),
            response_types: vec!["code".to_owned()],
            scope: None,
            client_uri: optional_https_url(doc.client_uri),
            logo_uri: optional_https_url(doc.logo_uri),
            application_type: doc.application_type.filter(|t| t == "web" || t == "native"),
            secret_hash: None,
            created_at: now,
            last_used_at: None,
        })
    }

    fn cached(&self, client_id: &str) -> Option<Client> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(client_id)
            .filter(|c| c.expires > Instant::now())
            .map(|c| c.client.clone())
    }

    fn store(&self, client_id: &str, client: &Client, max_age: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.expires > now);
        }
        if cache.len() >= MAX_CACHED {
            if let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, c)| c.expires)
                .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            client_id.to_owned(),
            Cached {
                client: client.clone(),
                expires: now + max_age,
            },
        );
    }
}

/// The cache lifetime a `Cache-Control` header asks for, within [`MIN_CACHE`, `MAX_CACHE`].
fn cache_lifetime(header: Option<&reqwest::header::HeaderValue>) -> Duration {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return DEFAULT_CACHE;
    };
    let mut lifetime = DEFAULT_CACHE;
    for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            lifetime = MIN_CACHE;
        } else if let Some(secs) = directive
            .strip_prefix("max-age=")
            .and_then(|s| s.parse::<u64>().ok())
        {
            lifetime = Duration::from_secs(secs);
        }
    }
    lifetime.clamp(MIN_CACHE, MAX_CACHE)
}

/// An optional informational URL (`client_uri`, `logo_uri`): kept when it is an https URL,
/// otherwise dropped (RFC 7591 §2 lets the server ignore a value; refusing a whole registration
/// over a homepage link helps nobody).
pub fn optional_https_url(value: Option<String>) -> Option<String> {
    let value = value?;
    match url::Url::parse(&value) {
        Ok(u) if u.scheme() == "https" && value.len() <= 2000 => Some(value),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_use_addresses() {
        for ip in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
        ] {
            assert!(
                is_special_use(ip.parse().expect(ip)),
                "{ip} must be refused"
            );
        }
        for ip in [
            "160.79.104.10",
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
        ] {
            assert!(!is_special_use(ip.parse().expect(ip)), "{ip} is public");
        }
    }

    #[test]
    fn cache_lifetimes_are_bounded() {
        let h = |v: &'static str| reqwest::header::HeaderValue::from_static(v);
        assert_eq!(cache_lifetime(None), DEFAULT_CACHE);
        assert_eq!(
            cache_lifetime(Some(&h("max-age=3600"))),
            Duration::from_secs(3600)
        );
        assert_eq!(cache_lifetime(Some(&h("public, max-age=5"))), MIN_CACHE);
        assert_eq!(cache_lifetime(Some(&h("max-age=999999999"))), MAX_CACHE);
        assert_eq!(cache_lifetime(Some(&h("no-store"))), MIN_CACHE);
    }
}
