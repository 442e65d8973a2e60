//! HTTP plumbing shared by every module: JSON error bodies, the 404/405 fallbacks, CORS for
//! public documents, and headers every response carries.

use axum::Json;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower_http::cors::{AllowHeaders, Any, CorsLayer};

/// `Cache-Control` of the public discovery documents and the JWK set (seconds). Claude caches
/// discovery for about five minutes anyway (interop checklist item 13).
pub const PUBLIC_DOCUMENT_MAX_AGE: u64 = 300;

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
/// SDK sends `MCP-Protocol-Version`, which forces one; checklist item 13).
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

/// The peer address of the connection, when the server runs with connect info (it always does
/// under `gatehouse serve`). Never rejects: a request without it is simply not attributed.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        use axum::extract::ConnectInfo;
        let info = ConnectInfo::<std::net::SocketAddr>::from_request_parts(parts, state).await;
        Ok(Self(info.ok().map(|ConnectInfo(addr)| addr.ip())))
    }
}

/// 429 with `Retry-After` and a body that says "rate limited", never an auth error.
pub fn rate_limited(retry_after: std::time::Duration) -> Response {
    let seconds = retry_after.as_secs().max(1);
    let mut response = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!("Too many requests; retry in {seconds} s"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}
