//! The scopes each MCP request needs, as data read by both the bearer layer (which answers 403
//! with every scope a request needs, RFC 6750 §3.1) and the MCP server (which checks again before
//! a tool runs): the base scope for everything, and for `tools/call` the tool's own
//! (`mcp.tool_scopes`).

use std::collections::BTreeMap;

use crate::config::McpConfig;
use crate::domain::ScopeSet;

/// `mcp.base_scope` and `mcp.tool_scopes`, read once (the configuration checked that each is
/// in the scope catalog).
#[derive(Debug, Clone)]
pub struct ToolScopes {
    base: ScopeSet,
    per_tool: BTreeMap<String, ScopeSet>,
}

impl ToolScopes {
    /// The scopes `config` asks for.
    pub fn new(config: &McpConfig) -> Self {
        let base = ScopeSet::parse_lenient(&config.base_scope);
        let per_tool = config
            .tool_scopes
            .iter()
            .map(|(tool, scope)| {
                let mut needed = base.clone();
                for s in ScopeSet::parse_lenient(scope).iter() {
                    needed.insert(s.clone());
                }
                (tool.clone(), needed)
            })
            .collect();
        Self { base, per_tool }
    }

    /// The scope every MCP request needs.
    pub fn base(&self) -> &ScopeSet {
        &self.base
    }

    /// The scopes a call of `tool` needs: the base scope and the tool's own.
    pub fn for_tool(&self, tool: &str) -> &ScopeSet {
        self.per_tool.get(tool).unwrap_or(&self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_needs_the_base_scope_and_its_own_once() {
        let mut config = McpConfig::default();
        config
            .tool_scopes
            .insert("whoami".to_owned(), "mcp".to_owned());
        let scopes = ToolScopes::new(&config);
        assert_eq!(scopes.base().to_string(), "mcp");
        assert_eq!(scopes.for_tool("whoami").to_string(), "mcp");
        assert_eq!(
            scopes.for_tool("get_activity_log").to_string(),
            "mcp activity:read"
        );
        assert_eq!(scopes.for_tool("unknown").to_string(), "mcp");
    }
}
