//! Prometheus metrics, served as OpenMetrics text at `/metrics` (on `metrics_bind`, or on the
//! public listener behind `metrics_token`).
//!
//! One registry per server (no process-wide state): requests and their latency per endpoint
//! and status, tokens issued by grant, refusals at `/mcp` by reason, rate-limit refusals by
//! budget, sign-ins by provider and outcome, calls to upstream MCP servers, the database's
//! timings (kept by the store), and the signing key's age and the time to each next step of
//! its rotation (read when scraped). Every label takes a value from a bounded set: route
//! patterns (never raw paths), configured provider and upstream names, fixed reasons.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use time::OffsetDateTime;

use crate::keys::RotationPolicy;
use crate::limits::Exhausted;
use crate::store::{DbTimings, KeyRecord};

/// The content type of `/metrics` (OpenMetrics text, which Prometheus reads natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrantLabel {
    grant: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabel {
    budget: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignInLabels {
    provider: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

type Seconds = Family<EndpointLabel, Histogram, fn() -> Histogram>;
type UpstreamSeconds = Family<UpstreamLabel, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Latency buckets in seconds: from 0.25 ms, doubling, to about 8 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Seconds,
    tokens_issued: Family<GrantLabel, Counter>,
    mcp_refused: Family<ReasonLabel, Counter>,
    rate_limited: Family<BudgetLabel, Counter>,
    sign_ins: Family<SignInLabels, Counter>,
    upstream_calls: Family<UpstreamLabels, Counter>,
    upstream_seconds: UpstreamSeconds,
    key_age: FloatGauge,
    key_next_step: Family<StepLabel, FloatGauge>,
    connections_open: Gauge,
    connections_refused: Family<ReasonLabel, Counter>,
    requests_shed: Counter,
    timeouts: Family<PhaseLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry with every metric at zero; `database` are the store's own timings.
    pub fn new(database: DbTimings) -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let request_seconds: Seconds =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its response's head, by route",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let tokens_issued = Family::<GrantLabel, Counter>::default();
        registry.register(
            "tokens_issued",
            "Token responses issued by the token endpoint, by grant type",
            tokens_issued.clone(),
        );
        let mcp_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "mcp_refusals",
            "Requests to /mcp refused before reaching a tool, by reason",
            mcp_refused.clone(),
        );
        let rate_limited = Family::<BudgetLabel, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests answered 429 because a rate budget ran out, by budget",
            rate_limited.clone(),
        );
        let sign_ins = Family::<SignInLabels, Counter>::default();
        registry.register(
            "sign_ins",
            "Sign-in attempts, by provider (\"password\" for a local password) and outcome",
            sign_ins.clone(),
        );
        let upstream_calls = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_calls",
            "Tool calls sent to upstream MCP servers (gateway mode), by upstream and outcome",
            upstream_calls.clone(),
        );
        let upstream_seconds: UpstreamSeconds =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register_with_unit(
            "upstream_call_duration",
            "Time of a tool call through an upstream MCP server, by upstream",
            Unit::Seconds,
            upstream_seconds.clone(),
        );
        registry.register_with_unit(
            "database_operation_duration",
            "Time of database operations: waits for a connection, guarded writes and appends (on SQLite until their batch is durable), pings",
            Unit::Seconds,
            database,
        );
        let key_age = FloatGauge::default();
        registry.register_with_unit(
            "signing_key_age",
            "Time since the current signing key started signing",
            Unit::Seconds,
            key_age.clone(),
        );
        let key_next_step = Family::<StepLabel, FloatGauge>::default();
        registry.register_with_unit(
            "signing_key_next_step",
            "Time until the next step of the key rotation, by step (publish_next, activate, retire); negative when overdue",
            Unit::Seconds,
            key_next_step.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections being served on the public listener",
            connections_open.clone(),
        );
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections refused past a cap (answered 503, or closed when too many are being refused), by cap: max, max_per_address",
            connections_refused.clone(),
        );
        let requests_shed = Counter::default();
        registry.register(
            "requests_shed",
            "Requests answered 503 at once past connections.max_in_flight",
            requests_shed.clone(),
        );
        let timeouts = Family::<PhaseLabel, Counter>::default();
        registry.register(
            "connection_timeouts",
            "Connections cut by a timeout, by phase: header, idle, body",
            timeouts.clone(),
        );
        Self {
            connections_open,
            connections_refused,
            requests_shed,
            timeouts,
            registry,
            requests,
            request_seconds,
            tokens_issued,
            mcp_refused,
            rate_limited,
            sign_ins,
            upstream_calls,
            upstream_seconds,
            key_age,
            key_next_step,
        }
    }

    /// A response with `status` to a request for `endpoint` (a route pattern), after `took`.
    pub fn request(&self, endpoint: &str, method: &Method, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                method: method_label(method),
                status,
            })
            .inc();
        self.request_seconds
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// The token endpoint issued tokens through `grant` (its `grant_type`).
    pub fn token_issued(&self, grant: &'static str) {
        self.tokens_issued
            .get_or_create(&GrantLabel { grant })
            .inc();
    }

    /// `/mcp` refused a request for `reason`.
    pub fn mcp_refused(&self, reason: &'static str) {
        self.mcp_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A request was answered 429 because `budget` ran out.
    pub fn rate_limited(&self, budget: Exhausted) {
        self.rate_limited
            .get_or_create(&BudgetLabel {
                budget: budget.as_str(),
            })
            .inc();
    }

    /// A sign-in through `provider` (a configured provider's id, or `password`) ended with
    /// `outcome` (`success`, `failure`, `refused`, `throttled`).
    pub fn sign_in(&self, provider: &str, outcome: &'static str) {
        self.sign_ins
            .get_or_create(&SignInLabels {
                provider: provider.to_owned(),
                outcome,
            })
            .inc();
    }

    /// A tool call through `upstream` (a configured upstream's name) ended with `outcome`
    /// after `took`.
    pub fn upstream_call(&self, upstream: &str, outcome: &'static str, took: Duration) {
        self.upstream_calls
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
                outcome,
            })
            .inc();
        self.upstream_seconds
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Sets the signing-key gauges from the stored keys at `now`.
    pub fn set_keys(&self, keys: &[KeyRecord], policy: &RotationPolicy, now: OffsetDateTime) {
        let seconds = |d: time::Duration| d.as_seconds_f64();
        if let Some(current) = keys
            .iter()
            .find(|k| k.state == crate::domain::KeyState::Current)
        {
            let since = current.activated_at.unwrap_or(current.created_at);
            self.key_age.set(seconds(now - since));
        }
        self.key_next_step.clear();
        for (step, at) in crate::keys::lifecycle::upcoming(keys, policy) {
            self.key_next_step
                .get_or_create(&StepLabel { step })
                .set(seconds(at - now));
        }
    }

    /// A connection is served (`true`) or has closed (`false`).
    pub fn connection(&self, open: bool) {
        if open {
            self.connections_open.inc();
        } else {
            self.connections_open.dec();
        }
    }

    /// A connection was refused past `cap` (`max` or `max_per_address`).
    pub fn connection_refused(&self, cap: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason: cap })
            .inc();
    }

    /// A request was answered 503 past `connections.max_in_flight`.
    pub fn request_shed(&self) {
        self.requests_shed.inc();
    }

    /// A connection was cut by its `phase` timeout (`header`, `idle`, `body`).
    pub fn timed_out(&self, phase: &'static str) {
        self.timeouts.get_or_create(&PhaseLabel { phase }).inc();
    }

    /// Every metric, as OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// A method as a label: the ones the server answers, else `other` (a client picks the method).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        _ => "other",
    }
}

/// Middleware: counts every response by its route pattern (`unmatched` for a path no route
/// has), method and status, and observes its latency; a 429 is counted by the budget it names
/// (every 429 is made by [`crate::web::too_many`], which puts its budget in the response).
pub async fn measure(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let endpoint = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    if let Some(budget) = response.extensions().get::<Exhausted>() {
        metrics.rate_limited(*budget);
    }
    let endpoint = endpoint.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics.request(
        endpoint,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
