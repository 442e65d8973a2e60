//! A trivial upstream MCP server for measuring the gateway's own cost: one tool, `echo`, served
//! over Streamable HTTP by rmcp (stateless, plain JSON answers), so that the same call can be
//! made straight to it and through `gatehouse serve` (`BENCHMARKS.md`, gateway section).
//!
//! `cargo run --release --example echo_upstream -- 127.0.0.1:38300`

#![allow(clippy::print_stdout, clippy::expect_used)]

use std::sync::Arc;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};

#[derive(Debug, Clone)]
struct Echo {
    tool_router: rmcp::handler::server::router::tool::ToolRouter<Echo>,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// What to echo.
    message: String,
}

#[tool_router]
impl Echo {
    #[tool(description = "Echoes the message")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> CallToolResult {
        CallToolResult::success(vec![ContentBlock::text(format!("Echo: {}", args.message))])
    }
}

#[tool_handler(router = self.tool_router, name = "echo-upstream")]
impl ServerHandler for Echo {}

#[tokio::main]
async fn main() {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:38300".to_owned());
    let mut config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(["127.0.0.1".to_owned(), "localhost".to_owned()]);
    config.legacy_session_mode = false;
    config.json_response = true;
    let router = Echo::tool_router();
    let service = StreamableHttpService::new(
        move || {
            Ok(Echo {
                tool_router: router.clone(),
            })
        },
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let app = axum::Router::new().route_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(&bind).await.expect("bind");
    println!("echo upstream on http://{bind}/mcp");
    axum::serve(listener, app).await.expect("serve");
}
