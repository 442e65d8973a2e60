//! The operator's endpoints. `GET /health` (and `/health/ready`): ready, 200, when the database
//! answers, a signing key is loaded and no stop is draining this instance; else 503 with the
//! reason, so a load balancer sends elsewhere. `GET /health/live`: 200 while the process
//! answers at all. With gateway mode, `/health` lists each upstream's live sessions and
//! processes, as counts (whose they are is for the audit log, not for an unauthenticated page).
//! `GET /metrics`: the Prometheus metrics ([`crate::metrics`]), on the metrics listener, or on
//! the public one behind `metrics_token`. Never cached.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

/// How long the database may take to answer a health check.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health`
pub async fn health_get(State(state): State<AppState>) -> Response {
    let database = match tokio::time::timeout(DATABASE_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "health: database check failed");
            Err("database unreachable".to_owned())
        }
        Err(_) => Err(format!(
            "database did not answer within {} s",
            DATABASE_TIMEOUT.as_secs()
        )),
    };
    let keys = state.keys.snapshot();
    let key = keys.current();
    let draining = state.draining.load(std::sync::atomic::Ordering::SeqCst);
    let healthy = database.is_ok() && !draining;
    let body = json!({
        "status": match (healthy, draining) {
            (true, _) => "ok",
            (false, true) => "draining",
            (false, false) => "unavailable",
        },
        "live": true,
        "ready": healthy,
        "draining": draining,
        "database": match &database { Ok(()) => "ok".to_owned(), Err(reason) => reason.clone() },
        "signing_key": { "kid": key.kid(), "alg": key.record.alg.as_str() },
        "upstreams": state.gateway.status().iter().map(|u| json!({
            "name": u.name,
            "transport": u.transport,
            "sessions": u.sessions.len(),
            "processes": u.sessions.iter().filter(|s| s.pid.is_some()).count(),
            "tools": u.tools,
        })).collect::<Vec<_>>(),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /health/live`: the process answers (a stop may be draining it, the database may be
/// down: restarting it would not help).
pub async fn live_get(State(state): State<AppState>) -> Response {
    let draining = state.draining.load(std::sync::atomic::Ordering::SeqCst);
    let mut response =
        Json(json!({ "status": "ok", "live": true, "draining": draining })).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /metrics` (the metrics listener's only route): every metric, the signing-key gauges read
/// now.
pub async fn metrics_get(State(state): State<AppState>) -> Response {
    let policy = crate::keys::RotationPolicy::from_config(&state.config);
    match state.store.signing_keys().await {
        Ok(keys) => state.metrics.set_keys(&keys, &policy, state.clock.now()),
        // The rest is still worth a scrape; the key gauges keep their last values.
        Err(err) => tracing::warn!(error = %err, "metrics: cannot read the signing keys"),
    }
    match state.metrics.encode() {
        Ok(text) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            text,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "metrics: encoding failed");
            crate::web::json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The metrics could not be encoded",
            )
        }
    }
}

/// `GET /metrics` on the public listener (only with `metrics_token`): the metrics for a request
/// that presents the token as a bearer credential (compared in constant time), else 401.
pub async fn public_metrics_get(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = state
        .config
        .metrics_token
        .as_ref()
        .map_or("", |t| t.0.as_str());
    if !crate::account::session::tokens_match(expected, presented) {
        let mut response = crate::web::json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The metrics need Authorization: Bearer with the metrics token",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"metrics\""),
        );
        return response;
    }
    metrics_get(State(state)).await
}

/// The metrics listener's router: `/metrics` only.
pub fn metrics_router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(crate::routes::METRICS, axum::routing::get(metrics_get))
        .fallback(crate::web::not_found)
        .with_state(state)
}
