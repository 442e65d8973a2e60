//! Every request gets a complete answer on a connection that can carry the next one.
//!
//! An HTTP/1.1 connection can only carry the next request once this one's body has been read
//! to its end (RFC 9112 §9.3). Many answers are given without reading it: a 401 or 429 from the
//! bearer layer, a 429 from a budget, a rejection by an extractor. hyper then makes one attempt to
//! read what is left and, if the body is not all there yet (a client that writes the head and the
//! body separately, as most do), closes the connection after the answer without saying so; the
//! keep-alive client's next request on it fails with "server disconnected".
//!
//! This layer takes back a body the handler dropped unread and reads the rest of it, up to
//! [`DRAIN_LIMIT`] bytes within [`DRAIN_TIMEOUT`], before the answer goes out. A body too large or
//! too slow for that gets `Connection: close` on its answer, so the client knows (RFC 9112 §9.6).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};

/// The most of an unread body read to keep a connection: more than any form or JSON-RPC message a
/// client sends in practice; a larger body refused unread costs the client its connection
/// rather than costing the server the reading.
pub const DRAIN_LIMIT: usize = 256 * 1024;

/// How long an unread body may take to arrive before the connection is given up instead.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a body dropped unread is put back.
type Slot = Arc<Mutex<Option<Body>>>;

/// A request body that goes back to its [`Slot`] if it is dropped before its end.
struct Returning {
    body: Option<Body>,
    slot: Slot,
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        // At its end, or broken (the connection is lost then anyway): nothing to give back.
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.body = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(body) = self.body.take().filter(|b| !b.is_end_stream()) {
            *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
        }
    }
}

/// Middleware: see the module's account.
pub async fn finish_request_bodies(request: Request, next: Next) -> Response {
    // HTTP/2 streams end on their own, and a connection header is not allowed there. A request
    // with no body (a GET, most of them) has nothing to leave unread: no wrapper for it.
    let http1 = matches!(request.version(), Version::HTTP_11 | Version::HTTP_10);
    if !http1 || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let slot: Slot = Arc::default();
    let request = request.map(|body| {
        Body::new(Returning {
            body: Some(body),
            slot: slot.clone(),
        })
    });
    let mut response = next.run(request).await;
    let unread = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(body) = unread {
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, drain(body, DRAIN_LIMIT)).await;
        if !matches!(drained, Ok(true)) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Reads `body` to its end; false if it is longer than `limit` or breaks.
async fn drain(body: Body, limit: usize) -> bool {
    let mut body = body;
    let mut read = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let Ok(frame) = frame else { return false };
        if let Some(data) = frame.data_ref() {
            read = read.saturating_add(data.len());
            if read > limit {
                return false;
            }
        }
    }
    true
}
