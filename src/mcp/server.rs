//! The MCP server (rmcp): its own tools and the tools, prompts and resources of the upstreams
//! (gateway mode) behind one decision ([`super::access`]): each list shows what the caller may
//! use, and `tools/call`, `prompts/get` and `resources/read` check again, then run here or at
//! the upstream, audited with the name, upstream, decision and its rule, outcome and duration. Missing scopes are answered before the request gets here
//! (the bearer layer answers 403 with a step-up challenge); the check here is a second line.

use std::sync::Arc;
use std::time::Instant;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ReadResourceRequestParams,
    ReadResourceResponse, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool_handler};
use serde_json::json;

use super::access::{Decision, ToolAccess};
use super::verify::{CallerKind, Principal};
use crate::audit::{self, AuditEvent};
use crate::config::UnauthorizedTools;
use crate::gateway;
use crate::gateway::cancel::CallKey;
use crate::state::AppState;

/// The MCP service of one request (rmcp makes one per request from a factory).
#[derive(Debug, Clone)]
pub struct GatehouseMcp {
    /// The application state (store, config).
    pub state: AppState,
    tool_router: ToolRouter<GatehouseMcp>,
    access: Arc<ToolAccess>,
}

/// A database failure, as the client sees it: no detail (it is logged).
pub(crate) fn store_failure(e: crate::store::StoreError) -> ErrorData {
    tracing::error!(error = %e, "database failure while serving an MCP request");
    ErrorData::internal_error("internal error", None)
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

    /// The caller, with their name and roles when role rules need them or the request goes
    /// to an upstream (`upstream`), which learns them; a built-in tool call without role rules
    /// reads nothing.
    async fn caller(
        &self,
        context: &RequestContext<RoleServer>,
        upstream: bool,
    ) -> Result<Option<Caller>, ErrorData> {
        let Some(principal) = principal_of(context) else {
            return Ok(None);
        };
        let needs_user = self.access.uses_roles() || upstream;
        let user = match (needs_user, principal.kind) {
            (true, CallerKind::User) => self
                .state
                .users
                .of(&self.state.store, &principal)
                .await
                .map_err(store_failure)?
                .map(|u| (u.username, u.roles)),
            _ => None,
        };
        Ok(Some(Caller { principal, user }))
    }

    fn decide(&self, caller: &Caller, tool: &str) -> Decision {
        self.access.decide(&caller.principal, caller.roles(), tool)
    }

    /// The decision on something known under several names: the first refusal, if any.
    fn decide_all(&self, caller: &Caller, names: &[String]) -> Decision {
        let mut decisions: Vec<Decision> = names.iter().map(|n| self.decide(caller, n)).collect();
        match decisions.iter().position(|d| !d.allowed()) {
            Some(refused) => decisions.swap_remove(refused),
            None if !decisions.is_empty() => decisions.swap_remove(0),
            None => Decision::Deny("no such resource".to_owned()),
        }
    }

    /// What of `listed` (each with the name it is decided on) the caller may use.
    fn allowed<T>(&self, caller: &Caller, listed: Vec<(T, String)>) -> Vec<T> {
        listed
            .into_iter()
            .filter(|(_, name)| self.decide(caller, name).allowed())
            .map(|(item, _)| item)
            .collect()
    }

    /// Records one use (or refused use) of a tool, prompt or resource: `detail` (what was
    /// asked for) with the upstream that served it, the decision and its rule, the outcome
    /// (other than `success` marks the event failed) and the duration. The answer does not wait
    /// for the write.
    fn audit(
        &self,
        kind: &str,
        caller: Option<&Caller>,
        used: Used<'_>,
        mut detail: serde_json::Value,
    ) {
        let principal = caller.map(|c| &c.principal);
        detail["upstream"] = json!(used.routed.map(|r| r.upstream.as_str()));
        detail["decision"] = json!(if used.decision.allowed() {
            "allow"
        } else {
            "deny"
        });
        detail["rule"] = json!(used.decision.rule());
        detail["outcome"] = json!(used.outcome);
        detail["duration_ms"] = json!(used.started.elapsed().as_secs_f64() * 1000.0);
        detail["jti"] = json!(principal.map(|p| p.jti.clone()));
        let mut event = AuditEvent::new(kind, self.state.clock.now(), detail);
        if used.outcome != "success" {
            event = event.failed();
        }
        if let Some(p) = principal {
            event.subject = Some(p.subject.clone());
            event.client_id = Some(p.client_id.clone());
            event.grant_id = Some(p.grant_id.clone());
        }
        let store = self.state.store.clone();
        self.state
            .store
            .spawn_write(async move { audit::record_after_commit(&store, event).await });
    }
}

/// Largest arguments the audit log keeps, as JSON; larger ones are recorded by size only.
const MAX_AUDITED_ARGUMENTS: usize = 4096;

/// The arguments of a call to `name`, as the audit log keeps them: only where the operator
/// asked for them (an upstream's `audit_arguments`), and bounded.
fn audited_arguments<T: serde::Serialize>(
    gateway: &gateway::Gateway,
    name: &str,
    arguments: &Option<T>,
) -> Option<serde_json::Value> {
    if !gateway.audits_arguments(name) {
        return None;
    }
    let json = serde_json::to_string(arguments.as_ref()?).ok()?;
    Some(if json.len() <= MAX_AUDITED_ARGUMENTS {
        serde_json::from_str(&json).ok()?
    } else {
        json!({ "truncated": true, "bytes": json.len() })
    })
}

/// What the audit log records of every use, whatever was used.
struct Used<'a> {
    decision: &'a Decision,
    routed: Option<&'a gateway::Routed>,
    outcome: &'static str,
    started: Instant,
}

/// The outcome of a request, for the audit log.
fn outcome_of<T>(result: &Result<T, ErrorData>, decision: &Decision) -> &'static str {
    match (result, decision) {
        (_, Decision::Deny(_) | Decision::MissingScope(_)) => "refused",
        (Ok(_), _) => "success",
        (Err(e), _) if e.code.0 == gateway::UPSTREAM_UNAVAILABLE => "upstream_unavailable",
        (Err(_), _) => "protocol_error",
    }
}

/// How a client names this call when it cancels it: its grant, its MCP session and the
/// request's id.
fn call_key(caller: &Caller, context: &RequestContext<RoleServer>) -> CallKey {
    let session = context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.headers.get(super::SESSION_HEADER))
        .and_then(|v| v.to_str().ok());
    CallKey::new(&caller.principal.grant_id, session, context.id.clone())
}

fn principal_of(context: &RequestContext<RoleServer>) -> Option<Principal> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Principal>())
        .cloned()
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for GatehouseMcp {
    fn get_info(&self) -> ServerConfig {
        let gateway = !self.state.gateway.is_empty();
        // In gateway mode an upstream's list changes reach the client in the stream of its
        // next call (there is no stream of the server's own).
        let capabilities = if gateway {
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_list_changed()
                .build()
        } else {
            ServerCapabilities::builder().enable_tools().build()
        };
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new("gatehouse", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Gatehouse: tools about your own account (whoami, get_activity_log), and the tools, prompts and resources of the servers it fronts, named <server>__<name>."
                    .to_owned(),
            )
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let Some(caller) = self.caller(&context, true).await? else {
            return Ok(ListPromptsResult::with_all_items(Vec::new()));
        };
        let prompts = self
            .state
            .gateway
            .list_prompts(&caller.upstream())
            .await
            .into_iter()
            .filter(|p| self.decide(&caller, &p.name).allowed())
            .collect();
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let started = Instant::now();
        let caller = self.caller(&context, true).await?;
        let name = request.name.clone();
        let arguments = audited_arguments(&self.state.gateway, &name, &request.arguments);
        let decision = match &caller {
            Some(c) if self.state.gateway.owns(&name) => self.decide(c, &name),
            _ => Decision::Deny("no such prompt".to_owned()),
        };
        let mut routed = None;
        let result = match (&decision, &caller) {
            (Decision::Allow(_), Some(c)) => {
                match self.state.gateway.get_prompt(&c.upstream(), request).await {
                    Ok(Some((response, to))) => {
                        routed = Some(to);
                        Ok(response)
                    }
                    Ok(None) => Err(ErrorData::invalid_params("prompt not found", None)),
                    Err(e) => Err(e),
                }
            }
            _ => Err(ErrorData::invalid_params("prompt not found", None)),
        };
        let used = Used {
            decision: &decision,
            routed: routed.as_ref(),
            outcome: outcome_of(&result, &decision),
            started,
        };
        let upstream_prompt = routed.as_ref().map(|r| r.tool.as_str());
        let mut detail = json!({ "prompt": name, "upstream_prompt": upstream_prompt });
        if let Some(arguments) = arguments {
            detail["arguments"] = arguments;
        }
        self.audit("mcp.prompt_get", caller.as_ref(), used, detail);
        result
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let Some(caller) = self.caller(&context, true).await? else {
            return Ok(ListResourcesResult::with_all_items(Vec::new()));
        };
        let resources = self.state.gateway.list_resources(&caller.upstream()).await;
        Ok(ListResourcesResult::with_all_items(
            self.allowed(&caller, resources),
        ))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let Some(caller) = self.caller(&context, true).await? else {
            return Ok(ListResourceTemplatesResult::with_all_items(Vec::new()));
        };
        let templates = self
            .state
            .gateway
            .list_resource_templates(&caller.upstream())
            .await;
        Ok(ListResourceTemplatesResult::with_all_items(
            self.allowed(&caller, templates),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let started = Instant::now();
        let caller = self.caller(&context, true).await?;
        let uri = request.uri.clone();
        let found = match &caller {
            Some(c) if !self.state.gateway.is_empty() => {
                self.state.gateway.find_resource(&c.upstream(), &uri).await
            }
            _ => None,
        };
        let decision = match (&caller, &found) {
            (Some(c), Some(at)) => self.decide_all(c, &at.names),
            _ => Decision::Deny("no such resource".to_owned()),
        };
        let mut routed = None;
        let result = match (&decision, &caller, &found) {
            (Decision::Allow(_), Some(c), Some(at)) => {
                match self
                    .state
                    .gateway
                    .read_resource(&c.upstream(), at, request)
                    .await
                {
                    Ok((response, to)) => {
                        routed = Some(to);
                        Ok(response)
                    }
                    Err(e) => Err(e),
                }
            }
            // The same answer whether it is refused or does not exist.
            _ => Err(ErrorData::resource_not_found("resource not found", None)),
        };
        let used = Used {
            decision: &decision,
            routed: routed.as_ref(),
            outcome: outcome_of(&result, &decision),
            started,
        };
        let resource = found.as_ref().map(|f| f.names.clone());
        let detail = json!({ "uri": uri, "resource": resource });
        self.audit("mcp.resource_read", caller.as_ref(), used, detail);
        result
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let upstreams = !self.state.gateway.is_empty();
        let Some(caller) = self.caller(&context, upstreams).await? else {
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
        let tool = request.name.to_string();
        let arguments = audited_arguments(&self.state.gateway, &tool, &request.arguments);
        let builtin = self.tool_router.has_route(&tool);
        let upstream = !builtin && self.state.gateway.owns(&tool);
        let caller = self.caller(&context, upstream).await?;
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
                // Cancelled when the client goes away, or names this call in a
                // `notifications/cancelled` of its own (MCP "Cancellation").
                let (_in_flight, by_client) =
                    self.state.gateway.in_flight.register(call_key(c, &context));
                let gone = context.ct.clone();
                let cancelled = async move {
                    tokio::select! {
                        () = gone.cancelled() => {}
                        () = by_client.cancelled() => {}
                    }
                };
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
        let outcome = match (&result, outcome_of(&result, &decision)) {
            (Ok(CallToolResponse::Complete(r)), "success") if r.is_error == Some(true) => {
                "tool_error"
            }
            (_, outcome) => outcome,
        };
        let used = Used {
            decision: &decision,
            routed: routed.as_ref(),
            outcome,
            started,
        };
        if upstream && decision.allowed() {
            // The tool's advertised name begins with its upstream's configured name.
            let name = routed.as_ref().map_or_else(
                || tool.split("__").next().unwrap_or_default(),
                |r| r.upstream.as_str(),
            );
            self.state
                .metrics
                .upstream_call(name, outcome, started.elapsed());
        }
        let upstream_tool = routed.as_ref().map(|r| r.tool.as_str());
        let mut detail = json!({ "tool": tool, "upstream_tool": upstream_tool });
        if let Some(arguments) = arguments {
            detail["arguments"] = arguments;
        }
        self.audit("mcp.tool_call", caller.as_ref(), used, detail);
        result
    }
}
