//! The public JWK set (RFC 7517 §5) at `/jwks.json`: next, current and previous keys, public
//! members only.

use axum::extract::State;
use axum::response::Response;

use crate::state::AppState;
use crate::web;

/// `GET /jwks.json`
pub async fn jwks_get(State(state): State<AppState>) -> Response {
    web::public_json(&state.keys.snapshot().jwks())
}
