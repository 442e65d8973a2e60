//! The MCP server (rmcp): `tools/list` shows what the caller may call; `tools/call` is audited
//! with tool, outcome and duration. Scopes are enforced before the request gets here (the bearer
//! layer answers 403 with a step-up challenge); the check here is a second line of defence.

use std::sync::Arc;
use std::time::Instant;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
    PaginatedRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};
use serde_json::json;

use super::scopes::ToolScopes;
use super::verify::Principal;
use crate::audit::{self, AuditEvent};
use crate::config::UnauthorizedTools;
use crate::state::AppState;

/// The MCP service of one session (rmcp makes one per session from a factory).
#[derive(Debug, Clone)]
pub struct GatehouseMcp {
    /// The application state (store, config).
    pub state: AppState,
    tool_router: ToolRouter<GatehouseMcp>,
    scopes: Arc<ToolScopes>,
}

impl GatehouseMcp {
    /// A service over `state` with `tools` ([`Self::tool_router`], made once per process: it
    /// generates every tool's input schema, and rmcp makes a service per request) and the scopes
    /// each tool needs.
    pub fn new(state: AppState, tools: ToolRouter<GatehouseMcp>, scopes: Arc<ToolScopes>) -> Self {
        Self {
            state,
            tool_router: tools,
            scopes,
        }
    }

    fn may_call(&self, principal: &Principal, tool: &str) -> bool {
        self.scopes
            .for_tool(tool)
            .names()
            .all(|s| principal.has_scope(s))
    }
}

fn principal_of(context: &RequestContext<RoleServer>) -> Option<Principal> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
}

#[tool_handler(router = self.tool_router, name = "gatehouse", instructions = "Gatehouse: tools about your own account. whoami shows who you are; get_activity_log reads your recent activity.")]
impl ServerHandler for GatehouseMcp {
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let principal = principal_of(&context);
        let mode = self.state.config.mcp.unauthorized_tools;
        let mut tools = Vec::new();
        for mut tool in self.tool_router.list_all() {
            let allowed = principal
                .as_ref()
                .is_some_and(|p| self.may_call(p, &tool.name));
            if allowed {
                tools.push(tool);
            } else if mode == UnauthorizedTools::Annotate {
                let needed = self.scopes.for_tool(&tool.name).to_string();
                let description = tool.description.clone().unwrap_or_default();
                tool.description = Some(format!("{description} (Needs the scope {needed:?}, which this connection was not granted.)").into());
                tools.push(tool);
            }
        }
        // The list depends on the caller: no shared cache hints.
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let started = Instant::now();
        let principal = principal_of(&context);
        let tool = request.name.to_string();
        let allowed = principal.as_ref().is_some_and(|p| self.may_call(p, &tool));
        let result = if allowed {
            self.tool_router
                .call(ToolCallContext::new(self, request, context))
                .await
        } else {
            Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "This connection was not granted the scopes {} needs.",
                self.scopes.for_tool(&tool)
            ))])
            .into())
        };
        let outcome = match &result {
            Ok(CallToolResponse::Complete(r)) if r.is_error == Some(true) => "tool_error",
            Ok(_) => "success",
            Err(_) => "protocol_error",
        };
        let mut event = AuditEvent::new(
            "mcp.tool_call",
            self.state.clock.now(),
            json!({
                "tool": tool,
                "outcome": outcome,
                "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
                "jti": principal.as_ref().map(|p| p.jti.clone()),
            }),
        );
        if outcome != "success" {
            event = event.failed();
        }
        if let Some(p) = &principal {
            event.subject = Some(p.subject.clone());
            event.client_id = Some(p.client_id.clone());
            event.grant_id = Some(p.grant_id.clone());
        }
        // The answer does not wait for the audit write.
        let store = self.state.store.clone();
        tokio::spawn(async move { audit::record_after_commit(&store, event).await });
        result
    }
}
