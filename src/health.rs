//! `GET /health`: 200 when the database answers and a signing key is loaded, else 503 with the
//! reason; with gateway mode, each upstream's live sessions and processes, as counts (whose
//! they are is for the audit log, not for an unauthenticated page). Never cached.

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
    let healthy = database.is_ok();
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
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
