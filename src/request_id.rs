//! A request id on every request: sent back in `x-request-id`, and on every log line written
//! while the request is served (the `request` span, with its method and path; never the query,
//! which may hold codes and state). An id a trusted proxy sent is kept, so its logs and ours
//! meet; from anyone else the header is replaced, so clients cannot write into the log.

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::{MakeRequestId, RequestId};

use crate::state::AppState;

/// The header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest id kept from a trusted proxy.
const MAX_LEN: usize = 128;

/// Makes ids: 96 random bits, base64url.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let id = crate::domain::random_token(12).ok()?;
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Keeps an incoming id only from a trusted proxy, and only of letters, digits, `-`, `_`, `.`
/// and `:` (at most 128); drops it otherwise, so that [`MakeId`] makes one.
pub async fn accept_incoming(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(value) = request.headers().get(&X_REQUEST_ID) {
        let trusted = crate::web::peer_ip(request.extensions()).is_some_and(|peer| {
            state
                .config
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&peer))
        });
        let plain = value.len() <= MAX_LEN
            && !value.is_empty()
            && value
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b));
        if !(trusted && plain) {
            request.headers_mut().remove(&X_REQUEST_ID);
        }
    }
    next.run(request).await
}

/// The span of a request: its id, method and path.
pub fn span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path()
    )
}
