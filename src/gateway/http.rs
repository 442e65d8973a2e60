//! The HTTP side of an upstream on Streamable HTTP: rmcp's client transport over our own HTTP
//! client, which builds every request afresh. Nothing of the client's request reaches the
//! upstream (no `Authorization`, `Cookie` or session id of ours): the upstream learns the
//! caller only from what [`Identity`] adds, a token minted for it per request by default (MCP
//! authorization forbids passing the client's token through).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue, StatusCode, header};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::{Sse, SseStream};

use super::identity::Identity;

const SESSION_ID: &str = "mcp-session-id";
const LAST_EVENT_ID: &str = "last-event-id";
const ACCEPT_BOTH: &str = "application/json, text/event-stream";
/// Largest JSON answer read from an upstream.
const MAX_JSON_BODY: usize = 16 * 1024 * 1024;
/// Largest error body read from an upstream (for its JSON-RPC error).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why a request to the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    /// The connection or the request.
    #[error("{0}")]
    Request(#[from] reqwest::Error),
    /// The identity could not be minted.
    #[error("cannot sign the upstream's token: {0}")]
    Identity(String),
    /// The upstream answered with a status that carries no JSON-RPC answer.
    #[error("the upstream answered HTTP {0}")]
    Status(u16),
    /// An event of its stream grew past the largest message read from an upstream.
    #[error("an event of the upstream's stream is larger than {0} bytes")]
    EventTooLarge(usize),
}

/// A client for one upstream session: one caller's identity on every request.
#[derive(Debug, Clone)]
pub struct UpstreamHttp {
    http: reqwest::Client,
    identity: Arc<Identity>,
}

impl UpstreamHttp {
    /// Requests through `http` (no redirects followed), each carrying `identity`.
    pub fn new(http: reqwest::Client, identity: Arc<Identity>) -> Self {
        Self { http, identity }
    }

    fn request(
        &self,
        method: reqwest::Method,
        uri: &str,
        session_id: Option<&str>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<reqwest::RequestBuilder, StreamableHttpError<HttpFailure>> {
        let mut request = self
            .http
            .request(method, uri)
            .header(header::ACCEPT, ACCEPT_BOTH);
        // rmcp's own headers (the negotiated protocol version); nothing of the client's.
        for (name, value) in custom_headers {
            request = request.header(name, value);
        }
        if let Some(id) = session_id {
            request = request.header(SESSION_ID, id);
        }
        for (name, value) in self
            .identity
            .headers()
            .map_err(|e| StreamableHttpError::Client(HttpFailure::Identity(e)))?
        {
            request = request.header(name, value);
        }
        Ok(request)
    }
}

fn failure(e: reqwest::Error) -> StreamableHttpError<HttpFailure> {
    StreamableHttpError::Client(HttpFailure::Request(e))
}

/// The body as events, as it arrives. An event is held until its blank line, so one that grows
/// past [`MAX_JSON_BODY`] ends the stream with an error rather than the gateway's memory.
fn sse(response: reqwest::Response) -> BoxStream<'static, Result<Sse, SseError>> {
    let chunks = futures::stream::unfold(
        Some((response, EventBound::default())),
        |state| async move {
            let (mut response, mut bound) = state?;
            match response.chunk().await {
                Ok(Some(chunk)) => match bound.feed(&chunk, MAX_JSON_BODY) {
                    Ok(()) => Some((Ok(chunk), Some((response, bound)))),
                    Err(e) => Some((Err(e), None)),
                },
                Ok(None) => None,
                Err(e) => Some((Err(HttpFailure::Request(e)), None)),
            }
        },
    );
    SseStream::from_bytes_stream(chunks).boxed()
}

/// The size of the event being received: bytes since the last blank line (an event's end in
/// `text/event-stream`; lines end in CR LF, LF or CR).
#[derive(Debug, Default)]
struct EventBound {
    event: usize,
    line: usize,
    after_cr: bool,
}

impl EventBound {
    fn feed(&mut self, chunk: &[u8], max: usize) -> Result<(), HttpFailure> {
        for &byte in chunk {
            let after_cr = std::mem::take(&mut self.after_cr);
            match byte {
                // The LF of a CR LF: that line has ended already.
                b'\n' if after_cr => {}
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    if self.line == 0 {
                        self.event = 0;
                    }
                    self.line = 0;
                }
                _ => {
                    self.line += 1;
                    self.event += 1;
                    if self.event > max {
                        return Err(HttpFailure::EventTooLarge(max));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads at most `max` bytes of the body; `None` past it.
async fn bounded_body(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn is(response: &reqwest::Response, mime: &str) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(mime.as_bytes()))
}

impl StreamableHttpClient for UpstreamHttp {
    type Error = HttpFailure;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let had_session = session_id.is_some();
        let response = self
            .request(
                reqwest::Method::POST,
                &uri,
                session_id.as_deref(),
                custom_headers,
            )?
            .header(header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&message)?)
            .send()
            .await
            .map_err(failure)?;
        let status = response.status();
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == StatusCode::NOT_FOUND && had_session {
            // The upstream forgot the session: rmcp initializes again and retries once.
            return Err(StreamableHttpError::SessionExpired);
        }
        let new_session = response
            .headers()
            .get(SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let answers_request = matches!(message, ClientJsonRpcMessage::Request(_));
        if !status.is_success() {
            // A JSON-RPC error in the body passes through unchanged.
            if is(&response, "application/json") {
                if let Ok(Some(body)) = bounded_body(response, MAX_ERROR_BODY).await {
                    if let Ok(message @ ServerJsonRpcMessage::Error(_)) =
                        serde_json::from_slice::<ServerJsonRpcMessage>(&body)
                    {
                        return Ok(StreamableHttpPostResponse::Json(message, new_session));
                    }
                }
            }
            return Err(StreamableHttpError::Client(HttpFailure::Status(
                status.as_u16(),
            )));
        }
        if is(&response, "text/event-stream") {
            return Ok(StreamableHttpPostResponse::Sse(sse(response), new_session));
        }
        if !is(&response, "application/json") {
            if !answers_request {
                return Ok(StreamableHttpPostResponse::Accepted);
            }
            return Err(StreamableHttpError::UnexpectedContentType(
                response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            ));
        }
        let body = bounded_body(response, MAX_JSON_BODY)
            .await
            .map_err(failure)?
            .ok_or(StreamableHttpError::ResponseBodyTooLarge {
                max_size: MAX_JSON_BODY,
            })?;
        if body.is_empty() && !answers_request {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        let message = serde_json::from_slice(&body)?;
        Ok(StreamableHttpPostResponse::Json(message, new_session))
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        let response = self
            .request(
                reqwest::Method::DELETE,
                &uri,
                Some(&session_id),
                custom_headers,
            )?
            .send()
            .await
            .map_err(failure)?;
        // 405: the upstream does not end sessions on request; its own timeout will.
        if response.status().is_success() || response.status() == StatusCode::METHOD_NOT_ALLOWED {
            Ok(())
        } else {
            Err(StreamableHttpError::Client(HttpFailure::Status(
                response.status().as_u16(),
            )))
        }
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        let mut request = self.request(
            reqwest::Method::GET,
            &uri,
            session_id.as_deref(),
            custom_headers,
        )?;
        if let Some(id) = last_event_id {
            request = request.header(LAST_EVENT_ID, id);
        }
        let response = request.send().await.map_err(failure)?;
        if response.status() == StatusCode::METHOD_NOT_ALLOWED {
            return Err(StreamableHttpError::ServerDoesNotSupportSse);
        }
        if !response.status().is_success() {
            return Err(StreamableHttpError::Client(HttpFailure::Status(
                response.status().as_u16(),
            )));
        }
        if !is(&response, "text/event-stream") {
            return Err(StreamableHttpError::UnexpectedServerResponse(
                Cow::Borrowed("the stream is not an event stream"),
            ));
        }
        Ok(sse(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_measured_from_its_blank_line_whatever_the_line_endings() {
        for end in ["\n", "\r\n", "\r"] {
            let mut bound = EventBound::default();
            let event = format!("data: 12345{end}{end}");
            for _ in 0..10 {
                assert!(bound.feed(event.as_bytes(), 16).is_ok(), "{end:?}");
            }
            let mut bound = EventBound::default();
            let long = format!("data: 1234{end}data: 5678{end}");
            assert!(bound.feed(long.as_bytes(), 32).is_ok());
            assert!(
                matches!(
                    bound.feed(long.as_bytes(), 32),
                    Err(HttpFailure::EventTooLarge(32))
                ),
                "{end:?}"
            );
        }
        // Split anywhere, even between the CR and the LF.
        let mut bound = EventBound::default();
        for piece in ["data: 1234567\r", "\n\r", "\ndata: 1234567\r\n", "\r\n"] {
            assert!(bound.feed(piece.as_bytes(), 16).is_ok());
        }
    }
}
