//! The scopes each MCP request needs, as data read by both the bearer layer (which answers 403
//! with every scope a request needs, RFC 6750 §3.1) and the MCP server (which checks again before
//! a tool runs): the base scope for everything, and for `tools/call` the tool's own
//! (`mcp.tool_scopes`).

use std::collections::BTreeMap;

use crate::config::McpConfig;

/// `mcp.base_scope` and `mcp.tool_scopes`, read once.
#[derive(Debug, Clone)]
pub struct ToolScopes {
    base: String,
    per_tool: BTreeMap<String, String>,
}

impl ToolScopes {
    /// The scopes `config` asks for.
    pub fn new(config: &McpConfig) -> Self {
        Self {
            base: config.base_scope.clone(),
            per_tool: config.tool_scopes.clone(),
        }
    }

    /// The scope every MCP request needs.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The scopes a call of `tool` needs: the base scope and the tool's own.
    pub fn for_tool(&self, tool: &str) -> Vec<String> {
        let mut scopes = vec![self.base.clone()];
        if let Some(s) = self.per_tool.get(tool) {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        scopes
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
        assert_eq!(scopes.base(), "mcp");
        assert_eq!(scopes.for_tool("whoami"), ["mcp"]);
        assert_eq!(
            scopes.for_tool("get_activity_log"),
            ["mcp", "activity:read"]
        );
        assert_eq!(scopes.for_tool("unknown"), ["mcp"]);
    }
}
