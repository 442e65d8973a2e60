//! The built-in MCP tools. Each reads the caller from the request's [`Principal`], which the
//! bearer layer put there; nothing here trusts a session.
//!
//! Adding a tool: write an `async fn` in the `#[tool_router]` block below with a `#[tool]`
//! attribute, add its name to [`TOOL_NAMES`](crate::config::TOOL_NAMES), and give it a scope in the configuration's
//! `mcp.tool_scopes` if it needs more than the base scope.

use super::server::store_failure;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock};
use rmcp::{ErrorData, tool, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::server::GatehouseMcp;
use super::users::Known;
use super::verify::{CallerKind, Principal};

/// Most audit entries one `get_activity_log` call returns.
const MAX_PAGE: u32 = 100;

/// Arguments of `get_activity_log`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ActivityLogArgs {
    /// How many entries to return, newest first (1 to 100; default 20).
    pub limit: Option<u32>,
    /// Return entries older than this cursor (the `next_cursor` of a previous page).
    pub before: Option<i64>,
    /// Everyone's activity instead of your own (admin role only).
    pub everyone: Option<bool>,
}

fn principal(parts: &http::request::Parts) -> Result<&Principal, ErrorData> {
    parts
        .extensions
        .get::<Principal>()
        .ok_or_else(|| ErrorData::internal_error("no authenticated caller", None))
}

fn text_json(value: &serde_json::Value) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(
        serde_json::to_string_pretty(value).unwrap_or_default(),
    )])
}

impl GatehouseMcp {
    /// The user behind the caller; `None` for a service client (client credentials), which has
    /// no user and so no roles.
    async fn user_of(&self, p: &Principal) -> Result<Option<Known>, ErrorData> {
        match p.kind {
            CallerKind::User => self
                .state
                .users
                .of(&self.state.store, p)
                .await
                .map_err(store_failure),
            CallerKind::Service => Ok(None),
        }
    }
}

#[tool_router(router = tool_router, vis = "pub")]
impl GatehouseMcp {
    /// Who is calling: user, client, scopes and when the token expires.
    #[tool(
        description = "Show who you are to this server: your user, the application you are using, the scopes it was granted and when its access token expires."
    )]
    pub async fn whoami(
        &self,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = principal(&parts)?;
        let user = self.user_of(p).await?;
        let expires = time::OffsetDateTime::from_unix_timestamp(p.expires_at)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok());
        Ok(text_json(&json!({
            "kind": p.kind.as_str(),
            "subject": p.subject,
            "username": user.as_ref().map(|u| u.username.as_str()),
            "roles": user.as_ref().map(|u| u.roles.clone()),
            "client_id": p.client_id,
            "scopes": p.scopes,
            "grant_id": p.grant_id,
            "token_expires_at": expires,
        })))
    }

    /// The caller's own recent audit entries, paged; admins may ask for everyone's.
    #[tool(
        description = "Read recent activity (sign-ins, grants, tool calls) from the audit log, newest first. Returns your own entries; administrators may set everyone=true. Page with the returned next_cursor."
    )]
    pub async fn get_activity_log(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(args): Parameters<ActivityLogArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let p = principal(&parts)?;
        let limit = args.limit.unwrap_or(20).clamp(1, MAX_PAGE);
        let everyone = args.everyone.unwrap_or(false);
        if everyone {
            // Roles belong to people: a service client is never an administrator.
            let user = self.user_of(p).await?;
            let admin = &self.state.config.mcp.admin_role;
            if !user.is_some_and(|u| u.roles.iter().any(|r| r == admin)) {
                return Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "Only users with the {admin:?} role may read everyone's activity."
                ))]));
            }
        }
        let filter = crate::audit::AuditFilter {
            subject: (!everyone).then(|| p.subject.clone()),
            ..Default::default()
        };
        let records = crate::audit::read(&self.state.store, &filter, args.before, i64::from(limit))
            .await
            .map_err(store_failure)?;
        let next_cursor = (records.len() == limit as usize)
            .then(|| records.last().map(|r| r.id))
            .flatten();
        let entries: Vec<_> = records
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "at": r.event.at.format(&Rfc3339).ok(),
                    "kind": r.event.kind,
                    "outcome": r.event.outcome.as_str(),
                    "subject": r.event.subject,
                    "client_id": r.event.client_id,
                    "grant_id": r.event.grant_id,
                    "detail": r.event.detail,
                })
            })
            .collect();
        Ok(text_json(
            &json!({ "entries": entries, "next_cursor": next_cursor }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TOOL_NAMES;

    /// The names the configuration accepts in `mcp.tool_scopes` are exactly the tools served.
    #[test]
    fn the_configurations_tool_names_are_the_tools_served() {
        let mut served: Vec<String> = GatehouseMcp::tool_router()
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        served.sort();
        let mut named: Vec<&str> = TOOL_NAMES.to_vec();
        named.sort_unstable();
        assert_eq!(served, named);
    }
}
