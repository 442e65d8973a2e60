//! The bearer layer in front of `/mcp`: a tower [`Layer`] that any service can sit behind.
//!
//! For every request (never inferred from a session), in this order:
//! 1. a browser `Origin` not on `allowed_origins` (when that list is set) is refused, 403;
//! 2. the token is read from `Authorization: Bearer` only (never a query string, never a session
//!    id) and verified ([`TokenVerifier`]): none gets 401 with the discovery challenge, a bad one
//!    401 `invalid_token`; either spends from the client address's budget
//!    (`mcp.rate_limit_unauthenticated` a minute), except a genuine token that has expired or
//!    been revoked;
//! 3. a valid token spends from its grant's budget (`mcp.rate_limit_per_token` a minute, shared
//!    by every token of the grant, so a refresh does not renew it); when empty, 429 with
//!    `Retry-After`, never an auth error;
//! 4. the token must hold the base scope, and for `tools/call` each tool's scope (read from the
//!    JSON-RPC body, at most `mcp.max_body_bytes`); else 403 `insufficient_scope` listing every
//!    scope the request needs;
//! 5. an `Mcp-Session-Id` this instance did not issue to this subject (or that has ended) is
//!    answered as unknown (404); `DELETE` of a live one ends it; in stateful mode an
//!    `initialize` past `mcp.max_sessions` is refused (503) ([`super::sessions`]);
//! 6. a `notifications/cancelled` stops the call it names, if that is one of the grant's own
//!    calls in flight at an upstream (in the same session, if any) ([`crate::gateway::cancel`]);
//! 7. the caller's [`Principal`] goes into the request's extensions for the service; a
//!    successful `initialize` in stateful mode opens a session (its id on the response), which
//!    past `mcp.max_sessions_per_user` ends that subject's oldest.
//!
//! Every response carries `X-RateLimit-Limit` and `X-RateLimit-Remaining`. Refusals are audited
//! (at most once a minute per client and reason, so a flood cannot flood the audit log).

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use tower::{Layer, Service};

use super::SESSION_HEADER;
use super::challenge::BearerChallenge;
use super::forwarded;
use super::scopes::ToolScopes;
use super::sessions::{NotOpened, SessionOwners};
use super::verify::{Principal, TokenRejection, TokenVerifier};
use crate::audit::{self, AuditEvent};
use crate::config::CredentialSource;
use crate::gateway::cancel::CallKey;
use crate::limits::{Budget, Exhausted};
use crate::state::AppState;
use crate::web;

/// What the guard shares between requests.
#[derive(Debug)]
pub struct Guard {
    state: AppState,
    verifier: TokenVerifier,
    sessions: Arc<SessionOwners>,
    scopes: ToolScopes,
    stateful: bool,
}

impl Guard {
    /// A guard for `state`'s resource.
    pub fn new(state: AppState) -> Self {
        let implies = state
            .config
            .scopes
            .iter()
            .map(|s| (s.name.as_str().to_owned(), s.implies.clone()))
            .collect();
        let verifier = TokenVerifier::new(
            state.keys.clone(),
            state.revocations.clone(),
            state.clock.clone(),
            state.config.issuer.as_str().to_owned(),
            state.config.resource(),
            state.config.leeway().whole_seconds(),
            implies,
        );
        let mcp = &state.config.mcp;
        let sessions = Arc::new(SessionOwners::new(
            std::time::Duration::from_secs(mcp.session_idle_timeout),
            mcp.max_sessions_per_user,
            mcp.max_sessions,
        ));
        let stateful = mcp.session_mode == crate::config::SessionMode::Stateful;
        let scopes = ToolScopes::new(mcp);
        if stateful {
            SessionOwners::sweep_while_alive(&sessions);
        }
        Self {
            state,
            verifier,
            sessions,
            scopes,
            stateful,
        }
    }
}

/// The layer: wrap any service whose requests need an MCP caller.
#[derive(Debug, Clone)]
pub struct GuardLayer(pub Arc<Guard>);

impl<S> Layer<S> for GuardLayer {
    type Service = GuardService<S>;
    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            guard: self.0.clone(),
            inner,
        }
    }
}

/// The service the layer makes.
#[derive(Debug, Clone)]
pub struct GuardService<S> {
    guard: Arc<Guard>,
    inner: S,
}

impl<S, B> Service<Request<Body>> for GuardService<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was polled ready does the work; the fresh clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move { Ok(guard.handle(request, inner).await) })
    }
}

/// The budget's headers. (A refusal's `Retry-After` is set by [`web::rate_limited`].)
fn rate_headers(response: &mut axum::response::Response, budget: Budget) {
    let h = response.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(budget.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(budget.remaining));
}

/// The JSON-RPC messages of a body: the one, or a batch's; none when it is not JSON. Parsed once
/// for every question the layer asks of it.
fn messages(body: &[u8]) -> Vec<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(other) => vec![other],
        Err(_) => Vec::new(),
    }
}

fn method(message: &Value) -> Option<&str> {
    message.get("method").and_then(Value::as_str)
}

/// Whether the messages are an `initialize` request (which opens a session in stateful mode).
fn is_initialize(messages: &[Value]) -> bool {
    matches!(messages, [one] if method(one) == Some("initialize"))
}

/// How long a refused new session is told to wait: sessions end after their idle timeout, so
/// room comes back within it; a client that retries sooner is refused again at no cost.
const SESSIONS_FULL_RETRY_AFTER: u64 = 30;

/// The request ids the messages cancel (`notifications/cancelled`).
fn cancelled_requests(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| method(m) == Some("notifications/cancelled"))
        .filter_map(|m| m.pointer("/params/requestId").cloned())
        .collect()
}

/// The tools the messages call (`tools/call`).
fn called_tools(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| method(m) == Some("tools/call"))
        .filter_map(|m| {
            m.pointer("/params/name")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect()
}

impl Guard {
    async fn handle<S, B>(&self, request: Request<Body>, mut inner: S) -> axum::response::Response
    where
        S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let config = &self.state.config;
        let peer = web::peer_ip(request.extensions());
        let ip = web::client_ip(peer, request.headers(), &config.trusted_proxies);

        // 1. DNS-rebinding defence for browsers: only configured origins.
        if let Some(origin) = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
        {
            if !config.allowed_origins.is_empty()
                && !config.allowed_origins.iter().any(|a| a == origin)
            {
                self.audit_refusal(
                    ip,
                    None,
                    ("origin_not_allowed", "origin not allowed"),
                    json!({ "origin": origin }),
                )
                .await;
                return web::json_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "This browser origin may not call this server",
                );
            }
        }

        // 2. The bearer token, only from the Authorization header.
        let challenge = BearerChallenge::for_config(config);
        let authorizations: Vec<_> = request
            .headers()
            .get_all(header::AUTHORIZATION)
            .iter()
            .collect();
        let token = match authorizations.as_slice() {
            [] => None,
            [one] => one
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim().to_owned()),
            _ => Some(String::new()),
        };
        // The first source in `mcp.credentials` whose credential the request carries decides;
        // a credential that fails is refused and never tried as another kind. A bearer token is
        // told apart by its form: an API token is never tried as a JWT, nor a JWT as one.
        // The forwarded headers are looked at only where that source is configured; from an
        // address that is not a trusted proxy they are ignored (and logged).
        let named = config
            .mcp
            .credentials
            .contains(&CredentialSource::Forwarded)
            && forwarded::names_someone(config, request.headers());
        let trusted_peer = named && web::is_trusted_proxy(peer, &config.trusted_proxies);
        if named && !trusted_peer {
            tracing::warn!(peer = ?peer, "a forwarded-user header from an address not in trusted_proxies was ignored");
        }
        let token_kind = token.as_deref().map(|t| {
            if crate::domain::is_api_token(t) {
                CredentialSource::ApiToken
            } else {
                CredentialSource::Oauth
            }
        });
        let source = config.mcp.credentials.iter().copied().find(|s| match s {
            CredentialSource::Forwarded => named && trusted_peer,
            kind => token_kind == Some(*kind),
        });
        let principal = match (token.as_deref(), source) {
            (_, Some(CredentialSource::Forwarded)) => forwarded::principal(
                config,
                &self.verifier,
                request.headers(),
                self.state.clock.now(),
            )
            .ok_or(Some(TokenRejection::BadForwardedUser)),
            (None, _) => Err(None),
            // A bearer token of a kind this server does not accept here.
            (Some(_), None) => Err(Some(TokenRejection::NotAccepted)),
            (Some(t), Some(CredentialSource::ApiToken)) => {
                let state = &self.state;
                state
                    .api_tokens
                    .verify(
                        t,
                        &state.store,
                        &state.users,
                        &state.config,
                        &self.verifier,
                        state.clock.now(),
                    )
                    .await
                    .map_err(Some)
            }
            (Some(t), Some(CredentialSource::Oauth)) => match self.verifier.verify(t) {
                // Another instance may have activated a key a moment ago: read the key states
                // once (at most once a second) and try again.
                Err(TokenRejection::UnknownKey)
                    if self
                        .state
                        .keys
                        .reload_for_unknown_kid(&self.state.store)
                        .await =>
                {
                    self.verifier.verify(t).map_err(Some)
                }
                other => other.map_err(Some),
            },
        };
        let principal = match principal {
            Ok(p) => p,
            Err(rejection) => {
                // A token that verifies (our signature, issuer and audience) but has expired or
                // been revoked is a client that needs to refresh or sign in again, not a
                // probe: it never spends the unauthenticated budget, which is for requests
                // with no credential or a forged one. Hosted clients bring many people's
                // hourly expiries from one address.
                let genuine = matches!(
                    rejection,
                    Some(
                        TokenRejection::Expired
                            | TokenRejection::NotYetValid
                            | TokenRejection::Revoked
                    )
                );
                // A token that could not be checked (the database did not answer) was not
                // shown to be ours: it spends the budget, so forged ones cannot flood a
                // struggling database unbounded.
                let budget = ip
                    .filter(|_| !genuine)
                    .map(|ip| self.state.limits.mcp_unauthenticated(ip));
                let mut response = match (budget, rejection) {
                    (
                        Some(Budget {
                            retry_after: Some(wait),
                            ..
                        }),
                        _,
                    ) => web::rate_limited(Exhausted::Unauthenticated, wait),
                    (_, None) => challenge.into_response(),
                    (_, Some(TokenRejection::Unavailable)) => web::with_retry_after(
                        web::json_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "temporarily_unavailable",
                            &TokenRejection::Unavailable.to_string(),
                        ),
                        1,
                    ),
                    (_, Some(reason)) => challenge
                        .invalid_token(&reason.shown().to_string())
                        .into_response(),
                };
                if let Some(b) = budget {
                    rate_headers(&mut response, b);
                }
                let reason = match (response.status(), rejection) {
                    (StatusCode::TOO_MANY_REQUESTS, _) => {
                        ("rate_limited", "rate limited (no valid token)".to_owned())
                    }
                    (_, None) => ("no_token", "no token".to_owned()),
                    (_, Some(r)) => (r.label(), r.to_string()),
                };
                let detail = json!({ "status": response.status().as_u16(), "revoked": rejection == Some(TokenRejection::Revoked) });
                self.audit_refusal(ip, None, (reason.0, &reason.1), detail)
                    .await;
                return response;
            }
        };

        // 3. The token's own budget.
        let budget = self
            .state
            .limits
            .mcp_token(&principal.grant_id, self.state.clock.now())
            .await;
        if let Some(wait) = budget.retry_after {
            let mut response = web::rate_limited(Exhausted::Token, wait);
            rate_headers(&mut response, budget);
            self.audit_refusal(
                ip,
                Some(&principal),
                ("rate_limited", "rate limited"),
                json!({ "status": 429 }),
            )
            .await;
            return response;
        }

        // 4. Scopes: the base scope for everything; each called tool's for tools/call.
        let (parts, body) = request.into_parts();
        let mut needed = self.scopes.base().clone();
        let mut opens_session = false;
        let mut cancels = Vec::new();
        let body = if parts.method == Method::POST {
            match axum::body::to_bytes(body, config.mcp.max_body_bytes).await {
                Ok(bytes) => {
                    let messages = messages(&bytes);
                    opens_session = self.stateful && is_initialize(&messages);
                    cancels = cancelled_requests(&messages);
                    for tool in called_tools(&messages) {
                        for scope in self.scopes.for_tool(&tool).iter() {
                            needed.insert(scope.clone());
                        }
                    }
                    Body::from(bytes)
                }
                Err(_) => {
                    let mut response = web::json_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request_too_large",
                        &format!(
                            "MCP requests are limited to {} bytes",
                            config.mcp.max_body_bytes
                        ),
                    );
                    rate_headers(&mut response, budget);
                    return response;
                }
            }
        } else {
            body
        };
        if !needed.names().all(|s| principal.has_scope(s)) {
            let mut response = challenge.insufficient_scope(&needed).into_response();
            rate_headers(&mut response, budget);
            self.audit_refusal(
                ip,
                Some(&principal),
                ("insufficient_scope", "insufficient scope"),
                json!({ "status": 403, "needed": needed.names().collect::<Vec<_>>() }),
            )
            .await;
            return response;
        }

        // 5. A session belongs to the subject that created it.
        let session = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(id) = &session {
            // Unknown here (never issued, ended, evicted, another instance's) or another
            // subject's: answered as an unknown session, so the client starts a new one.
            if self
                .sessions
                .owner(id)
                .is_none_or(|owner| *owner != *principal.subject)
            {
                let mut response = web::json_error(
                    StatusCode::NOT_FOUND,
                    "session_not_found",
                    "No such MCP session",
                );
                rate_headers(&mut response, budget);
                self.audit_refusal(
                    ip,
                    Some(&principal),
                    ("unknown_session", "unknown session or another subject's"),
                    json!({ "status": 404 }),
                )
                .await;
                return response;
            }
        }

        // 6. Stateful mode: room for a new session, or a clear refusal before serving; live ones
        // keep working.
        let opens_session = opens_session && session.is_none();
        if opens_session && !self.sessions.has_room() {
            return self.sessions_full(ip, &principal, budget).await;
        }

        // The client ends its session (the transport's `DELETE`); the service has nothing of it.
        if let (Some(id), &Method::DELETE) = (&session, &parts.method) {
            self.sessions.end(id);
            let mut response = StatusCode::NO_CONTENT.into_response();
            rate_headers(&mut response, budget);
            return response;
        }

        // 7. A cancellation reaches the caller's own call in flight at an upstream: each POST
        // is served on its own, so the service that runs the call never sees it.
        for id in &cancels {
            if let Some(key) = CallKey::named(&principal.grant_id, session.as_deref(), id) {
                self.state.gateway.in_flight.cancel(&key);
            }
        }

        // 8. Serve, with the caller in the extensions.
        let mut request = Request::from_parts(parts, body);
        request.extensions_mut().insert(principal.clone());
        let response = match inner.call(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let mut response = response.map(Body::new);
        if opens_session && response.status() == StatusCode::OK {
            match self.sessions.open(&principal.subject) {
                Ok(opened) => {
                    if let Ok(value) = HeaderValue::from_str(&opened.id) {
                        response.headers_mut().insert(SESSION_HEADER, value);
                    }
                    self.audit_evictions(opened.evicted, &principal, ip).await;
                }
                // Others opened the last room while this was served: the answer held nothing, so
                // the refusal replaces it.
                Err(NotOpened::Full) => return self.sessions_full(ip, &principal, budget).await,
                Err(NotOpened::NoRandomness) => tracing::warn!(
                    "no random bytes for an MCP session id; the client continues without a session"
                ),
            }
        }
        rate_headers(&mut response, budget);
        response
    }

    /// 503 with `Retry-After` for a new session past `mcp.max_sessions`, audited.
    async fn sessions_full(
        &self,
        ip: Option<IpAddr>,
        principal: &Principal,
        budget: Budget,
    ) -> axum::response::Response {
        let mut response = web::with_retry_after(
            web::json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_sessions",
                "This server holds as many MCP sessions as it may; try again shortly",
            ),
            SESSIONS_FULL_RETRY_AFTER,
        );
        rate_headers(&mut response, budget);
        self.audit_refusal(
            ip,
            Some(principal),
            ("sessions_full", "sessions full"),
            json!({ "status": 503 }),
        )
        .await;
        response
    }

    /// Audits the sessions the per-user bound ended (their next request gets 404, as for any
    /// unknown session).
    async fn audit_evictions(&self, evicted: usize, principal: &Principal, ip: Option<IpAddr>) {
        for _ in 0..evicted {
            let mut event = AuditEvent::new(
                "mcp.session_evicted",
                self.state.clock.now(),
                json!({ "reason": "over mcp.max_sessions_per_user", "limit": self.state.config.mcp.max_sessions_per_user }),
            );
            event.ip = ip.map(|i| i.to_string());
            event.subject = Some(principal.subject.clone());
            event.client_id = Some(principal.client_id.clone());
            audit::record_after_commit(&self.state.store, event).await;
        }
    }

    /// Counts a refusal under its label (`reason.0`, for the metrics) and audits it with its
    /// words (`reason.1`), at most once a minute per caller and reason.
    async fn audit_refusal(
        &self,
        ip: Option<IpAddr>,
        principal: Option<&Principal>,
        reason: (&'static str, &str),
        detail: Value,
    ) {
        let (label, reason) = reason;
        self.state.metrics.mcp_refused(label);
        let who = principal
            .map(|p| p.jti.clone())
            .or_else(|| ip.map(|i| i.to_string()))
            .unwrap_or_default();
        if !self.state.limits.audit_refusal(&format!("{who}|{reason}")) {
            return;
        }
        let mut detail = detail;
        if let Value::Object(map) = &mut detail {
            map.insert("reason".to_owned(), Value::String(reason.to_owned()));
        }
        let mut event = AuditEvent::new("mcp.refused", self.state.clock.now(), detail).failed();
        event.ip = ip.map(|i| i.to_string());
        if let Some(p) = principal {
            event.subject = Some(p.subject.clone());
            event.client_id = Some(p.client_id.clone());
            event.grant_id = Some(p.grant_id.clone());
        }
        audit::record_after_commit(&self.state.store, event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_called_in_single_and_batch_messages() {
        let single = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#;
        assert_eq!(called_tools(&messages(single)), ["whoami"]);
        let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_activity_log"}}]"#;
        assert_eq!(called_tools(&messages(batch)), ["get_activity_log"]);
        assert!(called_tools(&messages(b"not json")).is_empty());
    }
}
