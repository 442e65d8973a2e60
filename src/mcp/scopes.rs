//! The scopes each MCP request needs, as data read by both the bearer layer (which answers 403
//! with every scope a request needs, RFC 6750 §3.1) and the MCP server (which checks again before
//! a tool runs): the base scope for everything, and for `tools/call` the tool's own
//! (`mcp.tool_scopes`, by name or by glob, so that an upstream's tools can be named together).

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::config::{McpConfig, ToolGlob};
use crate::domain::ScopeSet;

/// `mcp.base_scope` and `mcp.tool_scopes`, read once (the configuration checked that each is
/// in the scope catalog).
#[derive(Debug, Clone)]
pub struct ToolScopes {
    base: ScopeSet,
    per_tool: BTreeMap<String, ScopeSet>,
    /// Globs (`crm__update_*`) and what a matching tool needs besides the base scope.
    per_glob: Vec<(ToolGlob, ScopeSet)>,
}

impl ToolScopes {
    /// The scopes `config` asks for.
    pub fn new(config: &McpConfig) -> Self {
        let base = ScopeSet::parse_lenient(&config.base_scope);
        let with_base = |scope: &str| {
            let mut needed = base.clone();
            for s in ScopeSet::parse_lenient(scope).iter() {
                needed.insert(s.clone());
            }
            needed
        };
        let (globs, names): (Vec<_>, Vec<_>) = config
            .tool_scopes
            .iter()
            .partition(|(tool, _)| tool.contains('*'));
        let per_glob = globs
            .into_iter()
            .filter_map(|(glob, scope)| Some((ToolGlob::parse(glob).ok()?, with_base(scope))))
            .collect();
        let per_tool = names
            .into_iter()
            .map(|(tool, scope)| (tool.clone(), with_base(scope)))
            .collect();
        Self {
            base,
            per_tool,
            per_glob,
        }
    }

    /// The scope every MCP request needs.
    pub fn base(&self) -> &ScopeSet {
        &self.base
    }

    /// The scopes a call of `tool` needs: the base scope, the tool's own, and those of every
    /// glob that matches it.
    pub fn for_tool(&self, tool: &str) -> Cow<'_, ScopeSet> {
        let own = self.per_tool.get(tool).unwrap_or(&self.base);
        let mut matching = self
            .per_glob
            .iter()
            .filter(|(g, _)| g.matches(tool))
            .peekable();
        if matching.peek().is_none() {
            return Cow::Borrowed(own);
        }
        let mut needed = own.clone();
        for (_, scopes) in matching {
            for s in scopes.iter() {
                needed.insert(s.clone());
            }
        }
        Cow::Owned(needed)
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

    #[test]
    fn a_glob_adds_its_scope_to_every_tool_it_matches() {
        let mut config = McpConfig::default();
        config
            .tool_scopes
            .insert("crm__update_*".to_owned(), "crm:write".to_owned());
        config
            .tool_scopes
            .insert("*__update_notes".to_owned(), "notes".to_owned());
        let scopes = ToolScopes::new(&config);
        assert_eq!(
            scopes.for_tool("crm__update_deal").to_string(),
            "mcp crm:write"
        );
        assert_eq!(
            scopes.for_tool("crm__update_notes").to_string(),
            "mcp notes crm:write"
        );
        assert_eq!(scopes.for_tool("crm__find").to_string(), "mcp");
    }
}
