//! The resource server: Protected Resource Metadata (RFC 9728) and the `/mcp` endpoint, an rmcp
//! Streamable HTTP service behind our bearer layer ([`guard`]), behind CORS (preflights are
//! answered before authentication).

pub mod access;
pub mod api_tokens;
pub mod challenge;
pub mod forwarded;
pub mod guard;
pub mod prm;
pub mod scopes;
pub mod server;
pub mod sessions;
pub mod tools;
pub mod users;
pub mod verify;

use std::sync::Arc;

use std::convert::Infallible;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, Method};
use axum::response::IntoResponse;
use axum::routing::Route;
use axum::routing::get;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::config::Config;
use crate::routes;
use crate::state::AppState;
use crate::web;

/// The MCP session header (Streamable HTTP transport, "Session Management").
pub(crate) const SESSION_HEADER: &str = "mcp-session-id";

/// Request headers browser MCP clients send (MCP Streamable HTTP transport).
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
pub fn router(state: &AppState) -> Router<AppState> {
    let guard = guard::Guard::new(state.clone());
    router_with_auth(state, guard::GuardLayer(Arc::new(guard)))
}

/// The resource server's routes with `auth` in the bearer layer's place: for the benchmark that
/// measures that layer against a stand-in, everything else being equal.
#[doc(hidden)]
pub fn router_with_auth<L>(state: &AppState, auth: L) -> Router<AppState>
where
    L: Layer<Route> + Clone + Send + Sync + 'static,
    L::Service: Service<Request> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request>>::Response: IntoResponse + 'static,
    <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
    <L::Service as Service<Request>>::Future: Send + 'static,
{
    let config = &state.config;
    let prm = Router::new()
        .route(routes::PRM, get(prm::prm_get))
        .route(routes::PRM_MCP, get(prm::prm_get))
        // The MCP Python SDK keeps a trailing slash of the server URL.
        .route(&format!("{}/", routes::PRM_MCP), get(prm::prm_get))
        .method_not_allowed_fallback(web::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            (state.clone(), crate::limits::Endpoints::Public),
            web::budget,
        ))
        .layer(web::public_cors());
    let service = mcp_service(state);
    let mcp = Router::new()
        .route_service(routes::MCP, service.clone())
        .route_service(&format!("{}/", routes::MCP), service)
        .layer(auth)
        .layer(mcp_cors(config));
    prm.merge(mcp)
}

/// The MCP service itself (rmcp, Streamable HTTP), without the bearer layer: it expects a
/// [`verify::Principal`] in each request's extensions (another layer in the bearer layer's place:
/// [`router_with_auth`]). It keeps nothing between requests: each is served by a handler made
/// for it over the process's one tool router, and answered with one JSON body where the tool
/// sends nothing before its result. Sessions, in stateful mode, are the bearer layer's records
/// ([`sessions`]).
fn mcp_service(
    state: &AppState,
) -> StreamableHttpService<server::GatehouseMcp, NeverSessionManager> {
    let mcp_state = state.clone();
    let tools = server::GatehouseMcp::tool_router();
    let access = Arc::new(access::ToolAccess::new(&state.config.mcp));
    let mut config =
        StreamableHttpServerConfig::default().with_allowed_hosts(allowed_hosts(&state.config));
    config.legacy_session_mode = false;
    config.json_response = true;
    StreamableHttpService::new(
        move || {
            Ok(server::GatehouseMcp::new(
                mcp_state.clone(),
                tools.clone(),
                access.clone(),
            ))
        },
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// The `Host` values rmcp accepts (its DNS-rebinding guard): the issuer's host, and loopback
/// names when the issuer itself is on loopback.
fn allowed_hosts(config: &Config) -> Vec<String> {
    let mut hosts = Vec::new();
    if let Ok(url) = url::Url::parse(config.issuer.as_str()) {
        if let Some(host) = url.host_str() {
            hosts.push(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            );
        }
    }
    if config.issuer.is_loopback() {
        hosts.extend(["localhost", "127.0.0.1", "::1"].map(str::to_owned));
    }
    hosts
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
