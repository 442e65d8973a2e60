//! The resource server: Protected Resource Metadata (RFC 9728) and the `/mcp` endpoint.
//!
//! Until the MCP service is mounted behind the bearer layer, `/mcp` answers every request with
//! the 401 challenge that starts a client's discovery (checklist items 7, 14-16).

pub mod challenge;
pub mod prm;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::config::Config;
use crate::routes;
use crate::state::AppState;
use crate::web;
use challenge::BearerChallenge;

/// Request headers browser MCP clients send (checklist section J).
const MCP_ALLOW_HEADERS: [&str; 8] = [
    "authorization",
    "content-type",
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "mcp-method",
    "mcp-name",
];
/// Response headers browser MCP clients must be able to read.
const MCP_EXPOSE_HEADERS: [&str; 5] = [
    "mcp-session-id",
    "www-authenticate",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "retry-after",
];

/// The resource server's routes.
pub fn router(config: &Config) -> Router<AppState> {
    let prm = Router::new()
        .route(routes::PRM, get(prm::prm_get))
        .route(routes::PRM_MCP, get(prm::prm_get))
        // The Python SDK keeps a trailing slash of the server URL (checklist item 8).
        .route(&format!("{}/", routes::PRM_MCP), get(prm::prm_get))
        .method_not_allowed_fallback(web::method_not_allowed)
        .layer(web::public_cors());
    let mcp = Router::new()
        .route(routes::MCP, any(mcp_unauthenticated))
        .route(&format!("{}/", routes::MCP), any(mcp_unauthenticated))
        .layer(mcp_cors(config));
    prm.merge(mcp)
}

/// CORS for `/mcp`: preflights are answered before authentication; never credentials.
fn mcp_cors(config: &Config) -> CorsLayer {
    let origins = if config.allowed_origins.is_empty() {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(config.allowed_origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::POST, Method::GET, Method::DELETE, Method::OPTIONS])
        .allow_headers(MCP_ALLOW_HEADERS.map(HeaderName::from_static))
        .expose_headers(MCP_EXPOSE_HEADERS.map(HeaderName::from_static))
        .max_age(std::time::Duration::from_secs(86_400))
}

/// Every `/mcp` request: 401 with the discovery challenge. A presented token cannot be valid yet,
/// so it is answered `invalid_token` (RFC 6750 §3.1).
async fn mcp_unauthenticated(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    let challenge = BearerChallenge::for_config(&state.config);
    if presented {
        challenge
            .invalid_token("The access token is not valid for this resource")
            .into_response()
    } else {
        challenge.into_response()
    }
}
