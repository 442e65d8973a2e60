//! The authorization server: one file per endpoint, each exposing its routes here.

pub mod authorize;
pub mod client_auth;
pub mod clients;
pub mod consent;
pub mod error;
pub mod grants;
pub mod introspect;
pub mod jwks;
pub mod metadata;
pub mod params;
pub mod register;
pub mod revoke;
pub mod token;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use axum::middleware::from_fn_with_state;

use crate::limits::Endpoints;

use crate::routes;
use crate::state::AppState;
use crate::web;

/// Largest accepted token, revocation or introspection request.
const TOKEN_BODY_LIMIT: usize = 16 * 1024;

/// The authorization server's routes, all CORS-enabled for browser-based clients.
pub fn router(state: &AppState) -> Router<AppState> {
    let config = &state.config;
    let oauth_budget = from_fn_with_state((state.clone(), Endpoints::OAuth), web::budget);
    let register = Router::new()
        .route(routes::REGISTER, post(register::register_post))
        .layer(DefaultBodyLimit::max(config.registration.max_body_bytes))
        .method_not_allowed_fallback(web::method_not_allowed)
        .layer(oauth_budget.clone())
        .layer(web::public_cors());
    // Browser-based clients (MCP Inspector) exchange and refresh from the page: CORS too.
    let tokens = Router::new()
        .route(routes::TOKEN, post(token::token_post))
        .route(routes::REVOKE, post(revoke::revoke_post))
        .route(routes::INTROSPECT, post(introspect::introspect_post))
        .layer(DefaultBodyLimit::max(TOKEN_BODY_LIMIT))
        .method_not_allowed_fallback(web::method_not_allowed)
        .layer(oauth_budget)
        .layer(web::public_cors());
    Router::new()
        .route(routes::AS_METADATA, get(metadata::metadata_get))
        .route(
            routes::OPENID_CONFIGURATION,
            get(metadata::openid_configuration_get),
        )
        .route(routes::JWKS, get(jwks::jwks_get))
        // Set before the CORS layer so the 405 fallback is wrapped too and preflights are
        // answered; set after it, axum would replace the wrapped fallback.
        .method_not_allowed_fallback(web::method_not_allowed)
        .layer(from_fn_with_state(
            (state.clone(), Endpoints::Public),
            web::budget,
        ))
        .layer(web::public_cors())
        .merge(register)
        .merge(tokens)
}
