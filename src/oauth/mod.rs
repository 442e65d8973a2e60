//! The authorization server: one file per endpoint, each exposing its routes here.

pub mod jwks;
pub mod metadata;

use axum::Router;
use axum::routing::get;

use crate::routes;
use crate::state::AppState;
use crate::web;

/// The authorization server's routes. Discovery documents and the JWK set are CORS-readable.
pub fn router() -> Router<AppState> {
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
        .layer(web::public_cors())
}
