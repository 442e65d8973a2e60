//! `gatehouse upstreams list | check`: the upstream MCP servers of gateway mode, as configured,
//! and as they answer (reachability, the tools each exposes under their advertised names, and
//! which of them each role may call).

use std::fmt::Write as _;
use std::sync::Arc;

use crate::clock::SystemClock;
use crate::config::{Config, HttpIdentity, Isolation, UpstreamKind};
use crate::gateway::Caller;
use crate::mcp::access::ToolAccess;
use crate::mcp::verify::{CallerKind, Principal};
use crate::state::AppState;

/// `gatehouse upstreams list`: the configuration, one upstream per line. Contacts nothing.
pub fn list(config: &Config) -> String {
    if config.upstreams.is_empty() {
        return "no upstreams configured ([[upstreams]] in the configuration file)\n".to_owned();
    }
    let mut out = String::new();
    for u in &config.upstreams {
        let detail = match &u.kind {
            UpstreamKind::Http { url, identity } => {
                let identity = match identity {
                    HttpIdentity::SignedJwt { audience, ttl } => {
                        format!("signed_jwt (aud {audience}, {} s)", ttl.as_secs())
                    }
                    HttpIdentity::Headers => "headers".to_owned(),
                    HttpIdentity::Static { header, .. } => format!("static ({header})"),
                    HttpIdentity::None => "none".to_owned(),
                };
                format!("{url}  identity: {identity}")
            }
            UpstreamKind::Stdio {
                command,
                args,
                isolation,
                identity_env,
                max_processes,
                ..
            } => {
                let isolation = match isolation {
                    Isolation::PerUser => "per_user",
                    Isolation::Shared => "shared",
                };
                let identity = if *identity_env { "env" } else { "none" };
                format!(
                    "{command} {}  isolation: {isolation}, at most {max_processes} processes, identity: {identity}",
                    args.join(" ")
                )
            }
        };
        let _ = writeln!(
            out,
            "{}  {}  {}  (idle {} s, connect {} s, call {} s)",
            u.name,
            u.transport(),
            detail,
            u.idle_timeout.as_secs(),
            u.connect_timeout.as_secs(),
            u.call_timeout.as_secs()
        );
    }
    out
}

/// `gatehouse upstreams check`: contacts each upstream as the operator (with this server's
/// keys, as `serve` would), lists its tools, and shows which each role may call. Fails when an
/// upstream cannot be reached or two of its tools would share a name.
pub async fn check(config: Config) -> anyhow::Result<String> {
    let state = AppState::start(config, Arc::new(SystemClock)).await?;
    let access = ToolAccess::new(&state.config.mcp);
    let results = state.gateway.probe(&Caller::operator()).await;
    let status = state.gateway.status();
    state.gateway.end_all();
    state.store.close().await;

    let mut out = String::new();
    let mut failures = Vec::new();
    for ((name, result), status) in results.iter().zip(&status) {
        match result {
            Ok(tools) => {
                let _ = writeln!(
                    out,
                    "{name}: reachable, {} tools, protocol {}",
                    tools.len(),
                    status.protocol.unwrap_or("unknown")
                );
                for tool in tools {
                    let roles: Vec<&str> = state
                        .config
                        .roles
                        .iter()
                        .filter(|(role, scopes)| {
                            let principal = Principal {
                                subject: "check".into(),
                                kind: CallerKind::User,
                                client_id: "check".into(),
                                scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
                                grant_id: "check".into(),
                                jti: "check".into(),
                                expires_at: 0,
                                forwarded: None,
                            };
                            access
                                .decide(&principal, std::slice::from_ref(*role), tool)
                                .allowed()
                        })
                        .map(|(role, _)| role.as_str())
                        .collect();
                    let who = if roles.is_empty() {
                        "no role".to_owned()
                    } else {
                        roles.join(", ")
                    };
                    let _ = writeln!(out, "  {tool}  (callable by: {who})");
                }
                for collision in &status.collisions {
                    let _ = writeln!(
                        out,
                        "  {collision}: two tools would share this name; neither is served"
                    );
                    failures.push(format!("{name}: tools share the name {collision}"));
                }
            }
            Err(e) => {
                let _ = writeln!(out, "{name}: NOT REACHABLE: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    if failures.is_empty() {
        Ok(out)
    } else {
        print!("{out}");
        anyhow::bail!("{}", failures.join("; "))
    }
}
