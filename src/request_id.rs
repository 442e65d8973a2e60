//! A request id on every request: sent back in `x-request-id`, and, in JSON logs, on every
//! line written while the request is served (the `request` span, with its path; never the query,
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

/// Makes ids: this process's random prefix (64 bits, drawn once) and a counter, so ids are
/// unique across instances and restarts without a call to the random source per request. An
/// id names a request in the log; it is not a secret.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeId;

static PREFIX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    crate::domain::random_token(8).unwrap_or_else(|_| format!("{:x}", std::process::id()))
});
static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _request: &axum::http::Request<B>) -> Option<RequestId> {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", *PREFIX))
            .ok()
            .map(RequestId::new)
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
        let trusted = crate::web::is_trusted_proxy(
            crate::web::peer_ip(request.extensions()),
            &state.config.trusted_proxies,
        );
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

/// The span of each request. With `log_format = "json"`, a `request` span with its id and
/// path, so every line written during the request names it; with text logs, none (the id is
/// still in the response): an enabled span is formatted at every request, and text logs are
/// read by people, who find a request by its time.
#[derive(Debug, Clone, Copy)]
pub struct MakeSpan {
    /// Whether the log is JSON.
    pub json: bool,
}

impl<B> tower_http::trace::MakeSpan<B> for MakeSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> tracing::Span {
        if !self.json {
            return tracing::Span::none();
        }
        let id = request
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        tracing::info_span!("request", request_id = id, path = request.uri().path())
    }
}
