//! `[[upstreams]]` and `[mcp.tool_access]`: the operator's own MCP servers that `/mcp` fronts
//! (gateway mode), and which roles may use which tools. What the operator writes
//! ([`UpstreamConfig`], [`ToolAccessConfig`]) and the checked form ([`Upstream`]).

use std::collections::BTreeMap;
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use serde::{Deserialize, Serialize};
use url::Url;

/// Separator between an upstream's name and its tool's name in the advertised tool name.
pub const NAME_SEPARATOR: &str = "__";

/// Longest upstream name: short, since every advertised tool name starts with it.
const MAX_UPSTREAM_NAME: usize = 24;

/// One `[[upstreams]]` entry, as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Prefix of its tools' names (`<name>__<tool>`): letters, digits and `-`, at most 24.
    pub name: String,
    /// `streamable_http` or `stdio`.
    pub transport: UpstreamTransport,
    /// `streamable_http`: the upstream's MCP endpoint.
    #[serde(default)]
    pub url: Option<String>,
    /// `stdio`: the program to start (from this file only; never from a request).
    #[serde(default)]
    pub command: Option<String>,
    /// `stdio`: its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// `stdio`: its whole environment besides `PATH` and `HOME` (the rest is cleared).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// How the upstream learns who is calling. `streamable_http`: `signed_jwt` (default),
    /// `headers` or `static`. `stdio`: `env` (default) or `none`.
    #[serde(default)]
    pub identity: Option<IdentityMode>,
    /// `signed_jwt`: the `aud` of the tokens minted for the upstream. Default: its `url`.
    #[serde(default)]
    pub audience: Option<String>,
    /// `signed_jwt`: seconds a minted token lives (30 to 300). Default 120.
    #[serde(default = "default_token_ttl")]
    pub token_ttl: u64,
    /// `static`: the header that carries the secret, e.g. `X-Api-Key`.
    #[serde(default)]
    pub static_header: Option<String>,
    /// `static`: the environment variable that holds the secret (never the secret itself).
    #[serde(default)]
    pub static_secret_env: Option<String>,
    /// `stdio`: `per_user` (default: a process per person) or `shared` (one process, for
    /// servers that keep nothing per caller; it gets no identity).
    #[serde(default)]
    pub isolation: Isolation,
    /// `stdio`: most processes at once; the least recently used is stopped for a new one.
    #[serde(default = "default_max_processes")]
    pub max_processes: usize,
    /// Most sessions kept with this upstream (HTTP; for stdio, `max_processes`); the least
    /// recently used idle one is ended for a new one.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Seconds without a call after which a session (and a stdio process) ends. Default 600.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: u64,
    /// Seconds to connect and initialize. Default 10.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: u64,
    /// Seconds a call may take. Default 60.
    #[serde(default = "default_call_timeout")]
    pub call_timeout: u64,
    /// Whether the audit log keeps the arguments of calls to this upstream's tools and prompts
    /// (at most 4 KiB of JSON each). Default `false`: arguments may hold personal data.
    #[serde(default)]
    pub audit_arguments: bool,
}

fn default_token_ttl() -> u64 {
    120
}
fn default_max_processes() -> usize {
    16
}
fn default_max_sessions() -> usize {
    1000
}
fn default_idle_timeout() -> u64 {
    600
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_call_timeout() -> u64 {
    60
}

/// How an upstream is reached.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamTransport {
    /// MCP Streamable HTTP.
    StreamableHttp,
    /// A local program speaking MCP on its standard input and output.
    Stdio,
}

/// How the upstream learns who is calling. The client's own token is never sent (MCP
/// authorization: no token passthrough).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMode {
    /// A short-lived JWT minted per request with this server's signing keys.
    SignedJwt,
    /// `X-Gatehouse-*` headers, for upstreams on a trusted network.
    Headers,
    /// One secret header: the upstream knows one service identity.
    Static,
    /// `GATEHOUSE_*` environment variables of a per-user process.
    Env,
    /// Nothing.
    None,
}

/// Whether each person gets their own process.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// One process per person.
    #[default]
    PerUser,
    /// One process for everyone.
    Shared,
}

/// `[mcp.tool_access.<role>]`: tool globs a role may and may not use.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ToolAccessConfig {
    /// Tool names or globs (`crm__*`) the role may use.
    pub allow: Vec<String>,
    /// Tool names or globs no holder of the role may use, whatever another role allows.
    pub deny: Vec<String>,
}

/// A checked upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its name, the prefix of its tools.
    pub name: String,
    /// Where it is and how it learns the caller.
    pub kind: UpstreamKind,
    /// Most sessions kept.
    pub max_sessions: usize,
    /// Idle time after which a session ends.
    pub idle_timeout: Duration,
    /// Time to connect and initialize.
    pub connect_timeout: Duration,
    /// Time a call may take.
    pub call_timeout: Duration,
    /// Whether calls' arguments are audited.
    pub audit_arguments: bool,
}

/// A checked upstream's transport and identity.
#[derive(Debug, Clone)]
pub enum UpstreamKind {
    /// Streamable HTTP.
    Http {
        /// Its MCP endpoint.
        url: Url,
        /// What it receives about the caller.
        identity: HttpIdentity,
    },
    /// A local program.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its environment (besides `PATH` and `HOME`).
        env: BTreeMap<String, String>,
        /// A process per person, or one shared.
        isolation: Isolation,
        /// Whether a per-user process gets `GATEHOUSE_*` variables.
        identity_env: bool,
        /// Most processes at once.
        max_processes: usize,
    },
}

/// What an HTTP upstream receives about the caller.
#[derive(Clone)]
pub enum HttpIdentity {
    /// A JWT per request: `aud`, and how long it lives.
    SignedJwt {
        /// The token's audience.
        audience: String,
        /// Its lifetime.
        ttl: Duration,
    },
    /// `X-Gatehouse-*` headers.
    Headers,
    /// A fixed secret in a header.
    Static {
        /// The header.
        header: http::HeaderName,
        /// The secret (from the environment).
        secret: http::HeaderValue,
    },
    /// Nothing.
    None,
}

impl std::fmt::Debug for HttpIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SignedJwt { audience, ttl } => f
                .debug_struct("SignedJwt")
                .field("audience", audience)
                .field("ttl", ttl)
                .finish(),
            Self::Headers => f.write_str("Headers"),
            Self::Static { header, .. } => write!(f, "Static({header}: <redacted>)"),
            Self::None => f.write_str("None"),
        }
    }
}

impl Upstream {
    /// Checks one entry. `own_resource` is this server's `/mcp`: a minted token may never name
    /// it, or it would be accepted here (RFC 8707 audience). `env` reads the environment.
    pub fn check(
        raw: &UpstreamConfig,
        own_resource: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let name = &raw.name;
        let at = format!("upstream {name:?}");
        if name.is_empty()
            || name.len() > MAX_UPSTREAM_NAME
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            problems.push(format!(
                "{at}: the name must be 1 to {MAX_UPSTREAM_NAME} letters, digits or '-' (it prefixes its tools' names)"
            ));
        }
        if !(30..=300).contains(&raw.token_ttl) {
            problems.push(format!(
                "{at}: token_ttl must be 30 to 300 seconds, not {}",
                raw.token_ttl
            ));
        }
        if !(1..=100_000).contains(&raw.max_sessions) || !(1..=1000).contains(&raw.max_processes) {
            problems.push(format!(
                "{at}: max_sessions must be 1 to 100000 and max_processes 1 to 1000"
            ));
        }
        for (key, value, range) in [
            ("idle_timeout", raw.idle_timeout, 10..=86_400),
            ("connect_timeout", raw.connect_timeout, 1..=300),
            ("call_timeout", raw.call_timeout, 1..=3600),
        ] {
            if !range.contains(&value) {
                problems.push(format!(
                    "{at}: {key} must be {} to {} seconds, not {value}",
                    range.start(),
                    range.end()
                ));
            }
        }
        let kind = match raw.transport {
            UpstreamTransport::StreamableHttp => {
                http_kind(raw, &at, own_resource, env, &mut problems)
            }
            UpstreamTransport::Stdio => stdio_kind(raw, &at, &mut problems),
        };
        match (kind, problems.is_empty()) {
            (Some(kind), true) => Ok(Self {
                name: name.clone(),
                kind,
                max_sessions: raw.max_sessions,
                idle_timeout: Duration::from_secs(raw.idle_timeout),
                connect_timeout: Duration::from_secs(raw.connect_timeout),
                call_timeout: Duration::from_secs(raw.call_timeout),
                audit_arguments: raw.audit_arguments,
            }),
            _ => Err(problems),
        }
    }

    /// The transport, as the configuration names it.
    pub fn transport(&self) -> &'static str {
        match self.kind {
            UpstreamKind::Http { .. } => "streamable_http",
            UpstreamKind::Stdio { .. } => "stdio",
        }
    }
}

fn http_kind(
    raw: &UpstreamConfig,
    at: &str,
    own_resource: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<UpstreamKind> {
    if raw.command.is_some() || !raw.args.is_empty() || !raw.env.is_empty() {
        problems.push(format!(
            "{at}: command, args and env are for stdio upstreams"
        ));
    }
    let url = match raw.url.as_deref().map(Url::parse) {
        Some(Ok(url)) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => url,
        Some(_) => {
            problems.push(format!("{at}: url must be an http or https URL"));
            return None;
        }
        None => {
            problems.push(format!("{at}: a streamable_http upstream needs a url"));
            return None;
        }
    };
    let identity = match raw.identity.unwrap_or(IdentityMode::SignedJwt) {
        IdentityMode::SignedJwt => {
            let audience = raw.audience.clone().unwrap_or_else(|| url.to_string());
            if audience.trim_end_matches('/') == own_resource.trim_end_matches('/') {
                problems.push(format!(
                    "{at}: the audience of its tokens may not be this server's own resource {own_resource} (they would be accepted here)"
                ));
            }
            HttpIdentity::SignedJwt {
                audience,
                ttl: Duration::from_secs(raw.token_ttl),
            }
        }
        IdentityMode::Headers => HttpIdentity::Headers,
        IdentityMode::Static => {
            let header = raw
                .static_header
                .as_deref()
                .and_then(|h| http::HeaderName::try_from(h).ok());
            let secret = raw
                .static_secret_env
                .as_deref()
                .and_then(env)
                .and_then(|s| http::HeaderValue::try_from(s).ok())
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                });
            match (header, secret) {
                (Some(header), Some(secret)) => HttpIdentity::Static { header, secret },
                _ => {
                    problems.push(format!(
                        "{at}: identity = \"static\" needs static_header (a header name) and static_secret_env (a set environment variable holding the secret)"
                    ));
                    return None;
                }
            }
        }
        IdentityMode::None => HttpIdentity::None,
        IdentityMode::Env => {
            problems.push(format!("{at}: identity = \"env\" is for stdio upstreams"));
            return None;
        }
    };
    Some(UpstreamKind::Http { url, identity })
}

fn stdio_kind(raw: &UpstreamConfig, at: &str, problems: &mut Vec<String>) -> Option<UpstreamKind> {
    if raw.url.is_some() || raw.audience.is_some() || raw.static_header.is_some() {
        problems.push(format!(
            "{at}: url, audience and static_header are for streamable_http upstreams"
        ));
    }
    let Some(command) = raw.command.clone().filter(|c| !c.trim().is_empty()) else {
        problems.push(format!("{at}: a stdio upstream needs a command"));
        return None;
    };
    if let Some(reserved) = raw.env.keys().find(|k| k.starts_with("GATEHOUSE_")) {
        problems.push(format!(
            "{at}: env may not set {reserved:?}: GATEHOUSE_* variables carry the caller's identity"
        ));
    }
    let identity_env = match raw.identity.unwrap_or(IdentityMode::Env) {
        IdentityMode::Env if raw.identity.is_some() && raw.isolation == Isolation::Shared => {
            problems.push(format!(
                "{at}: identity = \"env\" needs isolation = \"per_user\": a shared process serves everyone"
            ));
            false
        }
        IdentityMode::Env => raw.isolation == Isolation::PerUser,
        IdentityMode::None => false,
        other => {
            problems.push(format!(
                "{at}: identity {other:?} is for streamable_http upstreams; stdio takes env or none"
            ));
            false
        }
    };
    Some(UpstreamKind::Stdio {
        command,
        args: raw.args.clone(),
        env: raw.env.clone(),
        isolation: raw.isolation,
        identity_env,
        max_processes: raw.max_processes,
    })
}

/// A tool name or glob of the access rules (`*` matches any run of characters).
#[derive(Debug, Clone)]
pub struct ToolGlob {
    text: String,
    matcher: GlobMatcher,
}

impl ToolGlob {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        Glob::new(text)
            .map(|g| Self {
                text: text.to_owned(),
                matcher: g.compile_matcher(),
            })
            .map_err(|e| format!("{text:?} is not a tool glob: {e}"))
    }

    /// Whether `tool` matches.
    pub fn matches(&self, tool: &str) -> bool {
        self.matcher.is_match(tool)
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(name: &str) -> UpstreamConfig {
        UpstreamConfig {
            name: name.to_owned(),
            transport: UpstreamTransport::StreamableHttp,
            url: Some("http://127.0.0.1:9/mcp".to_owned()),
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            identity: None,
            audience: None,
            token_ttl: 120,
            static_header: None,
            static_secret_env: None,
            isolation: Isolation::PerUser,
            max_processes: 16,
            max_sessions: 1000,
            idle_timeout: 600,
            connect_timeout: 10,
            call_timeout: 60,
            audit_arguments: false,
        }
    }

    const OWN: &str = "https://gh.example/mcp";

    #[test]
    fn names_that_would_make_ambiguous_or_odd_tool_names_are_refused() {
        for bad in ["", "a__b", "crm.tools", "a b", "x".repeat(25).as_str()] {
            assert!(
                Upstream::check(&http(bad), OWN, &|_| None).is_err(),
                "{bad:?}"
            );
        }
        assert!(Upstream::check(&http("crm-1"), OWN, &|_| None).is_ok());
    }

    #[test]
    fn a_minted_token_never_names_this_server() {
        let mut raw = http("crm");
        raw.audience = Some(format!("{OWN}/"));
        let problems = Upstream::check(&raw, OWN, &|_| None).unwrap_err();
        assert!(problems[0].contains("own resource"), "{problems:?}");
    }

    #[test]
    fn a_static_secret_comes_from_the_environment_and_is_never_shown() {
        let mut raw = http("crm");
        raw.identity = Some(IdentityMode::Static);
        raw.static_header = Some("X-Api-Key".to_owned());
        raw.static_secret_env = Some("CRM_KEY".to_owned());
        assert!(Upstream::check(&raw, OWN, &|_| None).is_err());
        let up = Upstream::check(&raw, OWN, &|k| {
            (k == "CRM_KEY").then(|| "s3cret".to_owned())
        })
        .expect("valid");
        assert!(!format!("{up:?}").contains("s3cret"));
    }

    #[test]
    fn stdio_needs_a_command_and_keeps_the_identity_variables_to_itself() {
        let mut raw = http("fs");
        raw.transport = UpstreamTransport::Stdio;
        raw.url = None;
        assert!(Upstream::check(&raw, OWN, &|_| None).is_err());
        raw.command = Some("node".to_owned());
        raw.env
            .insert("GATEHOUSE_USER_ID".to_owned(), "forged".to_owned());
        assert!(Upstream::check(&raw, OWN, &|_| None).is_err());
        raw.env.clear();
        assert!(Upstream::check(&raw, OWN, &|_| None).is_ok());
    }

    #[test]
    fn a_glob_matches_across_the_separator() {
        let g = ToolGlob::parse("*__delete_*").expect("glob");
        assert!(g.matches("crm__delete_customer"));
        assert!(!g.matches("crm__find"));
    }
}
