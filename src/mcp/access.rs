//! Which tools a caller may use: one decision, made the same way for `tools/list` (what is shown)
//! and `tools/call` (what runs). Scopes first (the token's grant, `mcp.tool_scopes`), then roles
//! (`mcp.tool_access`: allow and deny globs per role; a deny of any role wins over every allow).

use crate::config::{McpConfig, ToolGlob};

use super::scopes::ToolScopes;
use super::verify::Principal;

/// The outcome, with the rule that made it (for the audit log; never shown to the client, to
/// whom a refused tool and a missing one look the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// May use it.
    Allow(String),
    /// The token lacks a scope the tool needs (the bearer layer answers 403 with a step-up
    /// challenge before a call gets here).
    MissingScope(String),
    /// A role rule refuses it.
    Deny(String),
}

impl Decision {
    /// Whether the tool may be used.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }

    /// The rule, as the audit log records it.
    pub fn rule(&self) -> &str {
        match self {
            Self::Allow(r) | Self::MissingScope(r) | Self::Deny(r) => r,
        }
    }
}

#[derive(Debug, Clone)]
struct RoleRules {
    role: String,
    allow: Vec<ToolGlob>,
    deny: Vec<ToolGlob>,
}

/// `mcp.tool_scopes` and `mcp.tool_access`, read once.
#[derive(Debug, Clone)]
pub struct ToolAccess {
    scopes: ToolScopes,
    roles: Vec<RoleRules>,
}

impl ToolAccess {
    /// The rules of `config` (checked at start: every glob parses).
    pub fn new(config: &McpConfig) -> Self {
        let globs = |list: &[String]| {
            list.iter()
                .filter_map(|g| ToolGlob::parse(g).ok())
                .collect()
        };
        Self {
            scopes: ToolScopes::new(config),
            roles: config
                .tool_access
                .iter()
                .map(|(role, access)| RoleRules {
                    role: role.clone(),
                    allow: globs(&access.allow),
                    deny: globs(&access.deny),
                })
                .collect(),
        }
    }

    /// The scopes each tool needs.
    pub fn scopes(&self) -> &ToolScopes {
        &self.scopes
    }

    /// Whether role rules are configured: only then does a decision need the caller's roles.
    pub fn uses_roles(&self) -> bool {
        !self.roles.is_empty()
    }

    /// May `principal`, holding `roles` (none for a service client), use `tool`? Roles first:
    /// a tool a role refuses is refused whatever the scopes, so it is never shown, not even as
    /// one that needs a scope (`mcp.unauthorized_tools = "annotate"`).
    pub fn decide(&self, principal: &Principal, roles: &[String], tool: &str) -> Decision {
        let by_role = self.by_role(roles, tool);
        if let Some(Decision::Deny(rule)) = by_role {
            return Decision::Deny(rule);
        }
        let needed = self.scopes.for_tool(tool);
        if let Some(missing) = needed.names().find(|s| !principal.has_scope(s)) {
            return Decision::MissingScope(format!("scope {missing}"));
        }
        by_role.unwrap_or_else(|| Decision::Allow(format!("scopes {needed}")))
    }

    /// What the role rules say, if there are any.
    fn by_role(&self, roles: &[String], tool: &str) -> Option<Decision> {
        if self.roles.is_empty() {
            return None;
        }
        let held = || self.roles.iter().filter(|r| roles.contains(&r.role));
        for rules in held() {
            if let Some(glob) = rules.deny.iter().find(|g| g.matches(tool)) {
                return Some(Decision::Deny(format!(
                    "role {} denies {}",
                    rules.role,
                    glob.as_str()
                )));
            }
        }
        for rules in held() {
            if let Some(glob) = rules.allow.iter().find(|g| g.matches(tool)) {
                return Some(Decision::Allow(format!(
                    "role {} allows {}",
                    rules.role,
                    glob.as_str()
                )));
            }
        }
        Some(Decision::Deny("no role allows it".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ToolAccessConfig;
    use crate::mcp::verify::CallerKind;

    fn principal(scopes: &[&str]) -> Principal {
        Principal {
            subject: "u_1".into(),
            kind: CallerKind::User,
            client_id: "c".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            grant_id: "g".into(),
            jti: "j".into(),
            expires_at: 0,
            forwarded: None,
        }
    }

    fn access() -> ToolAccess {
        let mut config = McpConfig::default();
        config.tool_access.insert(
            "analyst".into(),
            ToolAccessConfig {
                allow: vec!["crm__*".into(), "whoami".into()],
                deny: vec![],
            },
        );
        config.tool_access.insert(
            "contractor".into(),
            ToolAccessConfig {
                allow: vec!["crm__find".into()],
                deny: vec!["*__delete_*".into()],
            },
        );
        ToolAccess::new(&config)
    }

    #[test]
    fn a_deny_of_any_role_wins_over_every_allow() {
        let p = principal(&["mcp"]);
        let a = access();
        let analyst = ["analyst".to_owned()];
        let both = ["analyst".to_owned(), "contractor".to_owned()];
        assert!(a.decide(&p, &analyst, "crm__delete_deal").allowed());
        let d = a.decide(&p, &both, "crm__delete_deal");
        assert_eq!(
            d,
            Decision::Deny("role contractor denies *__delete_*".into())
        );
        assert!(a.decide(&p, &both, "crm__find").allowed());
    }

    #[test]
    fn with_role_rules_a_tool_no_role_allows_is_refused() {
        let p = principal(&["mcp"]);
        let a = access();
        assert!(!a.decide(&p, &["contractor".to_owned()], "whoami").allowed());
        assert!(!a.decide(&p, &[], "crm__find").allowed());
        assert!(!a.decide(&p, &["user".to_owned()], "crm__find").allowed());
    }

    #[test]
    fn a_role_refusal_is_never_a_missing_scope() {
        let mut config = McpConfig::default();
        config
            .tool_scopes
            .insert("crm__delete_*".to_owned(), "activity:read".to_owned());
        config.tool_access.insert(
            "contractor".into(),
            ToolAccessConfig {
                allow: vec!["crm__*".into()],
                deny: vec!["crm__delete_*".into()],
            },
        );
        let a = ToolAccess::new(&config);
        let d = a.decide(
            &principal(&["mcp"]),
            &["contractor".to_owned()],
            "crm__delete_deal",
        );
        assert_eq!(
            d,
            Decision::Deny("role contractor denies crm__delete_*".into())
        );
    }

    #[test]
    fn without_role_rules_scopes_decide_alone() {
        let a = ToolAccess::new(&McpConfig::default());
        assert!(!a.uses_roles());
        let d = a.decide(&principal(&["mcp"]), &[], "get_activity_log");
        assert_eq!(d, Decision::MissingScope("scope activity:read".into()));
        assert!(
            a.decide(&principal(&["mcp"]), &[], "anything__else")
                .allowed()
        );
    }
}
