//! The MCP server (rmcp): its own tools and those of the upstreams (gateway mode) behind one
//! decision ([`super::access`]): `tools/list` shows what the caller may call, and `tools/call`
//! checks again, then runs the tool here or at its upstream, audited with tool, upstream,
//! decision, outcome and duration. Missing scopes are answered before the request gets here
//! (the bearer layer answers 403 with a step-up challenge); the check here is a second line.

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

use super::access::{Decision, ToolAccess};
use super::verify::{CallerKind, Principal};
use crate::audit::{self, AuditEvent};
use crate::config::UnauthorizedTools;
use crate::gateway;
use crate::state::AppState;

/// The MCP service of one request (rmcp makes one per request from a factory).
#[derive(Debug, Clone)]
pub struct GatehouseMcp {
    /// The application state (store, config).
    pub state: AppState,
    tool_router: ToolRouter<GatehouseMcp>,
    access: Arc<ToolAccess>,
}

/// What a tool call was refused or answered with, as one answer for every tool the caller may
/// not know about: a denied tool, a hidden one and one that does not exist look the same.
fn unknown_tool() -> ErrorData {
    ErrorData::invalid_params("tool not found", None)
}

/// The caller of a request, and what the decisions need to know of them.
struct Caller {
    principal: Principal,
    /// The user's name and roles (read only when a decision or an upstream needs them).
    user: Option<(String, Vec<String>)>,
}

impl Caller {
    fn roles(&self) -> &[String] {
        self.user.as_ref().map(|(_, r)| r.as_slice()).unwrap_or(&[])
    }

    fn upstream(&self) -> gateway::Caller {
        gateway::Caller {
            subject: self.principal.subject.clone(),
            username: self.user.as_ref().map(|(n, _)| n.clone()),
            roles: self.roles().to_vec(),
            client_id: self.principal.client_id.clone(),
            scope: self.principal.scopes.join(" "),
        }
    }
}

impl GatehouseMcp {
    /// A service over `state` with `tools` ([`Self::tool_router`], made once per process: it
    /// generates every tool's input schema, and rmcp makes a service per request) and the rules
    /// that decide who may use which tool.
    pub fn new(state: AppState, tools: ToolRouter<GatehouseMcp>, access: Arc<ToolAccess>) -> Self {
        Self {
            state,
            tool_router: tools,
            access,
        }
    }

    /// The caller, with their name and roles when role rules or upstreams need them.
    async fn caller(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<Option<Caller>, ErrorData> {
        let Some(principal) = principal_of(context) else {
            return Ok(None);
        };
        let needs_user = self.access.uses_roles() || !self.state.gateway.is_empty();
        let user = match (needs_user, principal.kind) {
            (true, CallerKind::User) => self
                .state
                .store
                .user(&principal.subject)
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?
                .map(|u| (u.username.as_str().to_owned(), u.roles)),
            _ => None,
        };
        Ok(Some(Caller { principal, user }))
    }

    fn decide(&self, caller: &Caller, tool: &str) -> Decision {
        self.access.decide(&caller.principal, caller.roles(), tool)
    }
}

fn principal_of(context: &RequestContext<RoleServer>) -> Option<Principal> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
}

#[tool_handler(router = self.tool_router, name = "gatehouse", instructions = "Gatehouse: tools about your own account (whoami, get_activity_log), and the tools of the servers it fronts, named <server>__<tool>.")]
impl ServerHandler for GatehouseMcp {
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let Some(caller) = self.caller(&context).await? else {
            return Ok(ListToolsResult::with_all_items(Vec::new()));
        };
        let mode = self.state.config.mcp.unauthorized_tools;
        let mut candidates = self.tool_router.list_all();
        if !self.state.gateway.is_empty() {
            candidates.extend(self.state.gateway.list_tools(&caller.upstream()).await);
        }
        let mut tools = Vec::new();
        for mut tool in candidates {
            match self.decide(&caller, &tool.name) {
                Decision::Allow(_) => tools.push(tool),
                // A missing scope can be shown (the client can ask for it); a role's refusal
                // is never shown.
                Decision::MissingScope(_) if mode == UnauthorizedTools::Annotate => {
                    let needed = self.access.scopes().for_tool(&tool.name).to_string();
                    let description = tool.description.clone().unwrap_or_default();
                    tool.description = Some(format!("{description} (Needs the scope {needed:?}, which this connection was not granted.)").into());
                    tools.push(tool);
                }
                Decision::MissingScope(_) | Decision::Deny(_) => {}
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
        let caller = self.caller(&context).await?;
        let tool = request.name.to_string();
        let builtin = self.tool_router.has_route(&tool);
        let upstream = !builtin && self.state.gateway.owns(&tool);
        let decision = match &caller {
            Some(c) if builtin || upstream => self.decide(c, &tool),
            Some(_) => Decision::Deny("no such tool".to_owned()),
            None => Decision::Deny("no caller".to_owned()),
        };
        let mut routed = None;
        let result = match (&decision, &caller) {
            (Decision::Allow(_), _) if builtin => {
                self.tool_router
                    .call(ToolCallContext::new(self, request, context))
                    .await
            }
            (Decision::Allow(_), Some(c)) => {
                let downstream = gateway::Downstream {
                    peer: context.peer.clone(),
                    progress_token: context.meta.get_progress_token(),
                };
                let cancelled = context.ct.cancelled();
                match self
                    .state
                    .gateway
                    .call_tool(&c.upstream(), request, downstream, cancelled)
                    .await
                {
                    Ok(Some((response, to))) => {
                        routed = Some(to);
                        Ok(response)
                    }
                    Ok(None) => Err(unknown_tool()),
                    Err(e) => Err(e),
                }
            }
            (Decision::MissingScope(_), _) => {
                Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "This connection was not granted the scopes {} needs.",
                    self.access.scopes().for_tool(&tool)
                ))])
                .into())
            }
            _ => Err(unknown_tool()),
        };
        let outcome = match (&result, &decision) {
            (_, Decision::Deny(_) | Decision::MissingScope(_)) => "refused",
            (Ok(CallToolResponse::Complete(r)), _) if r.is_error == Some(true) => "tool_error",
            (Ok(_), _) => "success",
            (Err(e), _) if e.code.0 == gateway::UPSTREAM_UNAVAILABLE => "upstream_unavailable",
            (Err(_), _) => "protocol_error",
        };
        let principal = caller.as_ref().map(|c| &c.principal);
        let mut event = AuditEvent::new(
            "mcp.tool_call",
            self.state.clock.now(),
            json!({
                "tool": tool,
                "upstream": routed.as_ref().map(|r| r.upstream.as_str()),
                "upstream_tool": routed.as_ref().map(|r| r.tool.as_str()),
                "decision": if decision.allowed() { "allow" } else { "deny" },
                "rule": decision.rule(),
                "outcome": outcome,
                "duration_ms": started.elapsed().as_secs_f64() * 1000.0,
                "jti": principal.map(|p| p.jti.clone()),
            }),
        );
        if outcome != "success" {
            event = event.failed();
        }
        if let Some(p) = principal {
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
