//! HTTP plumbing shared by every module: JSON error bodies, the 404/405 fallbacks, CORS for
//! public documents, and headers every response carries.

use axum::Json;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower_http::cors::{AllowHeaders, Any, CorsLayer};

use crate::routes::PUBLIC_DOCUMENT_MAX_AGE;

/// A JSON error body `{"error": code, "error_description": description}` that is never cached.
pub fn json_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

/// A public JSON document, cacheable for [`PUBLIC_DOCUMENT_MAX_AGE`].
pub fn public_json<T: serde::Serialize>(body: &T) -> Response {
    let cache = format!("public, max-age={PUBLIC_DOCUMENT_MAX_AGE}");
    let mut response = Json(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&cache) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// Unknown paths: 404 JSON, never HTML and never 5xx.
pub async fn not_found(uri: Uri) -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("No endpoint at {}", uri.path()),
    )
}

/// A known path with an unsupported method: 405 JSON.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("{method} is not supported at {}", uri.path()),
    )
}

/// CORS for the public OAuth surface (discovery, JWK set, registration) that browser-based
/// clients such as MCP Inspector call: any origin, never credentials, preflights answered (the TS
/// SDK sends `MCP-Protocol-Version`, which forces one).
pub fn public_cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .max_age(std::time::Duration::from_secs(86_400))
}

/// A panic inside a handler becomes a generic JSON 500 (the cause goes to the log only).
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    tracing::error!(panic = detail, "handler panicked");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "The server hit an unexpected condition",
    )
}

/// Whether `peer` is one of the reverse proxies in `trusted` (`trusted_proxies`).
pub fn is_trusted_proxy(peer: Option<std::net::IpAddr>, trusted: &[ipnet::IpNet]) -> bool {
    peer.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip)))
}

/// The client's address: the connection's peer, unless that peer is a trusted reverse proxy;
/// then the nearest address in `X-Forwarded-For` (or `Forwarded: for=`) that is not itself a
/// trusted proxy. Headers from an untrusted peer are ignored, so they cannot be spoofed.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &std::net::IpAddr| is_trusted_proxy(Some(*ip), trusted);
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut chain: Vec<std::net::IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for part in value.to_str().unwrap_or("").split(',') {
            if let Ok(ip) = part.trim().parse() {
                chain.push(ip);
            }
        }
    }
    if chain.is_empty() {
        // RFC 7239: Forwarded: for=192.0.2.60;proto=https, for="[2001:db8::1]:4711"
        for value in headers.get_all("forwarded") {
            for element in value.to_str().unwrap_or("").split(',') {
                for pair in element.split(';') {
                    let Some(v) = pair
                        .trim()
                        .strip_prefix("for=")
                        .or_else(|| pair.trim().strip_prefix("For="))
                    else {
                        continue;
                    };
                    let v = v.trim_matches('"');
                    let host = if let Some(rest) = v.strip_prefix('[') {
                        rest.split(']').next().unwrap_or("")
                    } else {
                        v.split(':').next().unwrap_or("")
                    };
                    if let Ok(ip) = host.parse() {
                        chain.push(ip);
                    }
                }
            }
        }
    }
    // The rightmost entry was added by the proxy nearest to us; skip our own proxies.
    Some(
        chain
            .iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .copied()
            .unwrap_or(peer),
    )
}

/// The connection's peer address, as axum's own `ConnectInfo` extractor finds it: the real one
/// (`gatehouse serve`), or the mock that in-process tests install.
pub fn peer_ip(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    use axum::extract::ConnectInfo;
    use axum::extract::connect_info::MockConnectInfo;
    extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| {
            extensions
                .get::<MockConnectInfo<std::net::SocketAddr>>()
                .map(|m| m.0.ip())
        })
}

/// The client's address (see [`client_ip`]). Never rejects: a request without connection info
/// is simply not attributed.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl axum::extract::FromRequestParts<crate::state::AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &crate::state::AppState,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::ConnectInfo;
        let info = ConnectInfo::<std::net::SocketAddr>::from_request_parts(parts, state).await;
        let peer = info.ok().map(|ConnectInfo(addr)| addr.ip());
        Ok(Self(client_ip(
            peer,
            &parts.headers,
            &state.config.trusted_proxies,
        )))
    }
}

/// Middleware: one request from the client address's budget for `endpoints`; 429 when spent.
pub async fn budget(
    axum::extract::State((state, endpoints)): axum::extract::State<(
        crate::state::AppState,
        crate::limits::Endpoints,
    )>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer = peer_ip(request.extensions());
    if let Some(ip) = client_ip(peer, request.headers(), &state.config.trusted_proxies) {
        if let Err(wait) = state.limits.endpoints(endpoints, ip) {
            let budget = match endpoints {
                crate::limits::Endpoints::Public => crate::limits::Exhausted::Public,
                crate::limits::Endpoints::OAuth => crate::limits::Exhausted::OAuth,
            };
            // Audited with the address, once a minute per address and budget: a flood does not
            // flood the log.
            if state
                .limits
                .audit_refusal(&format!("{ip}|{}", budget.as_str()))
            {
                let mut event = crate::audit::AuditEvent::new(
                    "rate_limited",
                    state.clock.now(),
                    json!({ "budget": budget.as_str(), "path": request.uri().path() }),
                )
                .failed();
                event.ip = Some(ip.to_string());
                crate::audit::record_after_commit(&state.store, event).await;
            }
            return rate_limited(budget, wait);
        }
    }
    next.run(request).await
}

/// A wait in whole seconds, rounded up (a client that waits exactly this long fits), at least 1.
pub fn seconds_to_wait(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// `response` with `Retry-After: seconds` (at least 1): every 429 and 503 says when to come back
/// (RFC 9110 §10.2.3).
pub fn with_retry_after(mut response: Response, seconds: u64) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// 429 with `Retry-After` and a body that says "rate limited", never an auth error.
pub fn rate_limited(
    budget: crate::limits::Exhausted,
    retry_after: std::time::Duration,
) -> Response {
    let description = format!(
        "Too many requests ({} budget); retry in {} s",
        budget.as_str(),
        seconds_to_wait(retry_after)
    );
    too_many("rate_limited", &description, budget, retry_after)
}

/// Every 429: JSON with `error` and `error_description` that names the budget that ran out
/// (`"budget": "oauth"`), so whoever reads a client's error knows which setting it is; not
/// cached; `Retry-After` in whole seconds, rounded up.
pub fn too_many(
    code: &str,
    description: &str,
    budget: crate::limits::Exhausted,
    retry_after: std::time::Duration,
) -> Response {
    let body = json!({
        "error": code,
        "error_description": description,
        "budget": budget.as_str(),
    });
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response();
    // The metrics count the refusal by its budget.
    response.extensions_mut().insert(budget);
    with_retry_after(response, seconds_to_wait(retry_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "198.51.100.7, 10.1.2.3".parse().expect("header"),
        );
        let proxy = Some("10.0.0.5".parse().expect("ip"));
        let stranger = Some("203.0.113.9".parse().expect("ip"));
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "198.51.100.7".parse().ok()
        );
        assert_eq!(
            client_ip(stranger, &headers, &trusted),
            stranger,
            "spoofed header ignored"
        );
        let mut fwd = axum::http::HeaderMap::new();
        fwd.insert(
            "forwarded",
            "for=\"[2001:db8::1]:4711\";proto=https"
                .parse()
                .expect("header"),
        );
        assert_eq!(client_ip(proxy, &fwd, &trusted), "2001:db8::1".parse().ok());
    }
}
