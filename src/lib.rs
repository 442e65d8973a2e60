//! Gatehouse: one binary that is an OAuth 2.1 authorization server and an MCP resource server.
//!
//! [`app`] builds the router that `gatehouse serve` runs and the tests drive in process.

/// mimalloc rather than glibc's malloc, for `gatehouse` and for the benches and tests that link
/// this crate, so they measure what ships. Requests allocate and free many small buffers across
/// threads (tokio workers, SQLite connection threads), where glibc's arenas spent some 13% of a
/// worker's time (`_int_malloc`, `malloc_consolidate`); with mimalloc the token endpoint used
/// 10-15% less CPU per refresh (`BENCHMARKS.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod account;
pub mod admin;
pub mod audit;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod config;
pub mod domain;
pub mod edge;
pub mod gateway;
pub mod health;
pub mod identity;
pub mod keep_alive;
pub mod keys;
pub mod limits;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod pages;
pub mod password;
pub mod recent;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod tokens;
pub mod web;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub use state::AppState;

/// The browser pages: authorize, sign-in, consent, sign-out. Only they carry a session, and
/// every response of theirs (redirects included) is hardened.
fn pages_router(state: &AppState) -> Router<AppState> {
    use axum::routing::{get, post};
    use tower_sessions::cookie::SameSite;
    use tower_sessions::{Expiry, SessionManagerLayer};

    let config = &state.config;
    // `__Host-`: only sent over https, to this host, for every path (RFC 6265bis §4.1.3.2).
    let name = if config.issuer.is_https() {
        "__Host-gatehouse"
    } else {
        "gatehouse_session"
    };
    let idle = tower_sessions::cookie::time::Duration::seconds(
        config.session_idle_timeout.whole_seconds(),
    );
    let sessions = SessionManagerLayer::new(store::SessionStoreAdapter(state.store.clone()))
        .with_name(name)
        .with_secure(config.issuer.is_https())
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_path("/")
        .with_expiry(Expiry::OnInactivity(idle))
        .with_signed(state.session_key.0.clone());
    Router::new()
        .route(routes::AUTHORIZE, get(oauth::authorize::authorize_get))
        .route(
            routes::LOGIN,
            get(account::login::login_get).post(account::login::login_post),
        )
        .route(
            routes::PROVIDER_LOGIN,
            get(account::provider::provider_start),
        )
        .route(
            routes::PROVIDER_CALLBACK,
            get(account::provider::provider_callback),
        )
        .route(
            routes::CONSENT,
            get(oauth::consent::consent_get).post(oauth::consent::consent_post),
        )
        .route(
            routes::LOGOUT,
            get(account::login::logout_get).post(account::login::logout_post),
        )
        .route(
            routes::SETUP,
            get(account::setup::setup_get).post(account::setup::setup_post),
        )
        .route(
            routes::RESET,
            get(account::reset::reset_get).post(account::reset::reset_post),
        )
        .route(routes::ADMIN, get(admin::users::users_get))
        .route(routes::ADMIN_USER_ADD, post(admin::users::add_post))
        .route(routes::ADMIN_USER_ROLES, post(admin::users::roles_post))
        .route(routes::ADMIN_USER_LOCK, post(admin::users::lock_post))
        .route(routes::ADMIN_USER_UNLOCK, post(admin::users::unlock_post))
        .route(routes::ADMIN_USER_REMOVE, post(admin::users::remove_post))
        .route(
            routes::ADMIN_USER_RESET_LINK,
            post(admin::users::reset_link_post),
        )
        .route(routes::ADMIN_CLIENTS, get(admin::system::clients_get))
        .route(
            routes::ADMIN_CLIENT_REMOVE,
            post(admin::system::client_remove_post),
        )
        .route(routes::ADMIN_KEYS, get(admin::system::keys_get))
        .route(
            routes::ADMIN_KEYS_ROTATE,
            post(admin::system::keys_rotate_post),
        )
        .route(
            routes::ADMIN_KEYS_RETIRE,
            post(admin::system::keys_retire_post),
        )
        .route(routes::ADMIN_UPSTREAMS, get(admin::system::upstreams_get))
        .route(
            routes::ADMIN_UPSTREAMS_CHECK,
            post(admin::system::upstreams_check_post),
        )
        .route(routes::ADMIN_AUDIT, get(admin::audit::audit_get))
        .route(
            routes::ADMIN_AUDIT_EXPORT,
            get(admin::audit::audit_export_get),
        )
        .route(routes::ACCOUNT, get(account::page::account_get))
        .route(
            routes::ACCOUNT_LINK,
            axum::routing::post(account::page::link_post),
        )
        .route(
            routes::ACCOUNT_UNLINK,
            axum::routing::post(account::page::unlink_post),
        )
        .route(
            routes::ACCOUNT_DISCONNECT,
            axum::routing::post(account::page::disconnect_post),
        )
        .route(
            routes::ACCOUNT_TOKENS,
            axum::routing::post(account::page::token_create_post),
        )
        .route(
            routes::ACCOUNT_TOKEN_REVOKE,
            axum::routing::post(account::page::token_revoke_post),
        )
        .route(
            routes::ACCOUNT_SIGN_OUT_EVERYWHERE,
            axum::routing::post(account::page::sign_out_everywhere_post),
        )
        .method_not_allowed_fallback(web::method_not_allowed)
        .layer(sessions)
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), limits::Endpoints::OAuth),
            web::budget,
        ))
        .layer(axum::middleware::from_fn(pages::harden))
        .route(routes::STYLESHEET, get(pages::stylesheet_get))
}

/// `/health`, and `/metrics` only where `metrics_token` puts it on the public listener.
fn operator_routes(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route(routes::HEALTH, get(health::health_get))
        .route(routes::HEALTH_READY, get(health::health_get))
        .route(routes::HEALTH_LIVE, get(health::live_get));
    if state.config.metrics_token.is_some() {
        routes.route(routes::METRICS, get(health::public_metrics_get))
    } else {
        routes
    }
}

/// The whole HTTP surface: authorization server, resource server and health.
pub fn app(state: AppState) -> Router {
    let mcp = mcp::router(&state);
    app_with_mcp(state, mcp)
}

/// [`app`] with `mcp` as the resource server's routes (see [`mcp::router_with_auth`]).
#[doc(hidden)]
pub fn app_with_mcp(state: AppState, mcp: Router<AppState>) -> Router {
    // RFC 6797: on an https issuer, browsers keep to https for this host for a year.
    let hsts = state.config.issuer.is_https().then(|| {
        SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        )
    });
    let router = Router::new()
        .merge(pages_router(&state))
        .merge(oauth::router(&state))
        .merge(mcp)
        .merge(
            operator_routes(&state)
                .method_not_allowed_fallback(web::method_not_allowed)
                .layer(axum::middleware::from_fn_with_state(
                    (state.clone(), limits::Endpoints::Public),
                    web::budget,
                )),
        )
        .fallback(web::not_found)
        .method_not_allowed_fallback(web::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::measure,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(CatchPanicLayer::custom(web::panic_response))
        .layer(axum::middleware::from_fn(keep_alive::finish_request_bodies))
        .layer(tower_http::request_id::PropagateRequestIdLayer::new(
            request_id::X_REQUEST_ID.clone(),
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(request_id::MakeSpan {
                json: state.config.log_format == config::LogFormat::Json,
            }),
        )
        .layer(tower_http::request_id::SetRequestIdLayer::new(
            request_id::X_REQUEST_ID.clone(),
            request_id::MakeId,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_id::accept_incoming,
        ))
        .with_state(state);
    match hsts {
        Some(layer) => router.layer(layer),
        None => router,
    }
}
