//! Gatehouse: one binary that is an OAuth 2.1 authorization server and an MCP resource server.
//!
//! [`app`] builds the router that `gatehouse serve` runs and the tests drive in process.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod health;
pub mod keys;
pub mod limits;
pub mod mcp;
pub mod oauth;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod web;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub use state::AppState;

/// The whole HTTP surface: authorization server, resource server and health.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(oauth::router(&state.config))
        .merge(mcp::router(&state.config))
        .route(routes::HEALTH, get(health::health_get))
        .fallback(web::not_found)
        .method_not_allowed_fallback(web::method_not_allowed)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(CatchPanicLayer::custom(web::panic_response))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
