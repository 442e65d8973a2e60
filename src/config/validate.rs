//! Checking a [`RawConfig`] into a [`Config`]: one validator per section, each adding its
//! problems (one line each) to a shared list, so that one run reports every problem.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use time::Duration;

use super::{
    Config, ConfigErrors, KeyRotation, NAME_SEPARATOR, RawConfig, RegistrationPolicy, ScopeConfig,
    ScopeEntry, TOOL_NAMES, ToolGlob, Upstream, parse_origin,
};
use crate::config::{HttpIdentity, IdentityProvider, UpstreamKind};
use crate::domain::{Issuer, RedirectPolicy, ScopeToken};
use crate::store::DatabaseUrl;

/// What the validators found: problems that stop the start, and development defaults in force
/// (logged loudly at start).
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    development_defaults: Vec<String>,
}

impl Findings {
    fn problem(&mut self, line: impl Into<String>) {
        self.problems.push(line.into());
    }
}

/// Seconds as a `Duration` (saturating).
fn secs(n: u64) -> Duration {
    Duration::seconds(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A lifetime setting: 1 to `max` seconds.
fn ttl(name: &str, secs_set: u64, max: u64, found: &mut Findings) -> Duration {
    if secs_set == 0 || secs_set > max {
        found.problem(format!(
            "{name} must be between 1 and {max} seconds, not {secs_set}"
        ));
    }
    secs(secs_set.min(max))
}

impl Config {
    /// Checks every setting and collects all problems. `provided` tells whether the operator set
    /// a key (otherwise its default is in force).
    pub fn validate(raw: RawConfig, provided: &dyn Fn(&str) -> bool) -> Result<Self, ConfigErrors> {
        let mut found = Findings::default();
        let (issuer, database) = place(&raw, provided, &mut found);
        let lifetimes = lifetimes(&raw, &mut found);
        let catalog = scope_catalog(&raw, &mut found);
        let network = network(&raw, &mut found);
        mcp(&raw, &mut found);
        limits(&raw, &mut found);
        let registration = registration(&raw, &mut found);
        let key_rotation = keys(&raw, &mut found);
        let upstreams = upstreams(&raw, issuer.as_ref(), &mut found);
        let identity_providers = identity_providers(&raw, &mut found);

        let Findings {
            problems,
            development_defaults,
        } = found;
        match (issuer, database, problems.is_empty()) {
            (Some(issuer), Some(database), true) => Ok(Self {
                issuer,
                bind: raw.bind,
                database,
                keys_dir: raw.keys_dir,
                product_name: raw.product_name,
                signing_algorithm: raw.signing_algorithm,
                access_token_ttl: lifetimes.access_token_ttl,
                refresh_token_ttl: lifetimes.refresh_token_ttl,
                authorization_code_ttl: lifetimes.authorization_code_ttl,
                refresh_family_ttl: lifetimes.refresh_family_ttl,
                refresh_grace_period: lifetimes.refresh_grace_period,
                revocation_sync_interval: lifetimes.revocation_sync_interval,
                scopes: catalog.scopes,
                default_scopes: catalog.default_scopes,
                roles: catalog.roles,
                allowed_origins: network.allowed_origins,
                trusted_proxies: network.trusted_proxies,
                shared_egress: network.shared_egress,
                mcp: raw.mcp,
                rate_limits: raw.rate_limits,
                session_idle_timeout: lifetimes.session_idle_timeout,
                session_absolute_timeout: lifetimes.session_absolute_timeout,
                audit_retention: (raw.audit_retention > 0).then(|| secs(raw.audit_retention)),
                registration,
                client_metadata: raw.client_metadata,
                keys_passphrase: raw.keys_passphrase,
                key_rotation,
                password_hashing: raw.password_hashing,
                api_tokens: raw.api_tokens,
                log_format: raw.log_format,
                metrics_bind: raw.metrics_bind,
                metrics_token: raw.metrics_token,
                connections: raw.connections,
                upstreams,
                local_login: raw.local_login,
                identity_providers,
                development_defaults,
            }),
            _ => Err(ConfigErrors(problems)),
        }
    }
}

/// Where the server is: `issuer` (derived from a loopback `bind` when unset), `database_url`,
/// `keys_dir`, `product_name`.
fn place(
    raw: &RawConfig,
    provided: &dyn Fn(&str) -> bool,
    found: &mut Findings,
) -> (Option<Issuer>, Option<DatabaseUrl>) {
    let issuer = match &raw.issuer {
        Some(s) => Issuer::parse(s)
            .map_err(|e| found.problem(e.to_string()))
            .ok(),
        None if raw.bind.ip().is_loopback() && raw.bind.port() != 0 => {
            let derived = format!("http://{}", raw.bind);
            found.development_defaults.push(format!(
                "issuer {derived} (plain http on loopback: set `issuer` to this server's public https URL before connecting Claude.ai or ChatGPT)"
            ));
            Issuer::parse(&derived)
                .map_err(|e| found.problem(e.to_string()))
                .ok()
        }
        None => {
            found.problem(format!(
                "issuer is not set and bind {} is not a loopback address with a fixed port: set `issuer` to the public https URL clients use (e.g. https://mcp.example.com)",
                raw.bind
            ));
            None
        }
    };

    let database = DatabaseUrl::parse(&raw.database_url)
        .map_err(|e| found.problem(e))
        .ok();
    if !provided("database_url") {
        found.development_defaults.push(format!(
            "database {} in the working directory (SQLite; set `database_url` to choose the file, or postgres://... for several instances)",
            raw.database_url
        ));
    }

    if raw.keys_dir.as_os_str().is_empty() {
        found.problem("keys_dir must not be empty");
    }
    if !provided("keys_dir") {
        found.development_defaults.push(format!(
            "signing keys in ./{} (generated on first start; set `keys_dir` to a directory you back up)",
            raw.keys_dir.display()
        ));
    }

    if raw.product_name.trim().is_empty() {
        found.problem("product_name must not be empty");
    }
    (issuer, database)
}

/// The lifetimes of tokens, codes and browser sessions.
struct Lifetimes {
    access_token_ttl: Duration,
    refresh_token_ttl: Duration,
    authorization_code_ttl: Duration,
    refresh_family_ttl: Duration,
    refresh_grace_period: Duration,
    revocation_sync_interval: Duration,
    session_idle_timeout: Duration,
    session_absolute_timeout: Duration,
}

fn lifetimes(raw: &RawConfig, found: &mut Findings) -> Lifetimes {
    let access_token_ttl = ttl("access_token_ttl", raw.access_token_ttl, 86_400, found);
    let refresh_token_ttl = ttl(
        "refresh_token_ttl",
        raw.refresh_token_ttl,
        366 * 86_400,
        found,
    );
    // RFC 6749 §4.1.2: a maximum code lifetime of 10 minutes is recommended.
    let authorization_code_ttl = ttl(
        "authorization_code_ttl",
        raw.authorization_code_ttl,
        600,
        found,
    );
    let refresh_family_ttl = ttl(
        "refresh_family_ttl",
        raw.refresh_family_ttl,
        5 * 366 * 86_400,
        found,
    );
    if raw.refresh_family_ttl < raw.refresh_token_ttl {
        found.problem(format!(
            "refresh_family_ttl ({}) must not be shorter than refresh_token_ttl ({})",
            raw.refresh_family_ttl, raw.refresh_token_ttl
        ));
    }
    let refresh_grace_period = ttl("refresh_grace_period", raw.refresh_grace_period, 300, found);
    let revocation_sync_interval = ttl(
        "revocation_sync_interval",
        raw.revocation_sync_interval,
        300,
        found,
    );
    let session_idle_timeout = ttl(
        "session_idle_timeout",
        raw.session_idle_timeout,
        7 * 86_400,
        found,
    );
    let session_absolute_timeout = ttl(
        "session_absolute_timeout",
        raw.session_absolute_timeout,
        30 * 86_400,
        found,
    );
    if raw.session_absolute_timeout < raw.session_idle_timeout {
        found.problem(format!(
            "session_absolute_timeout ({}) must not be shorter than session_idle_timeout ({})",
            raw.session_absolute_timeout, raw.session_idle_timeout
        ));
    }
    if raw.refresh_token_ttl > 0 && raw.refresh_token_ttl < raw.access_token_ttl {
        found.problem(format!(
            "refresh_token_ttl ({}) must not be shorter than access_token_ttl ({})",
            raw.refresh_token_ttl, raw.access_token_ttl
        ));
    }
    Lifetimes {
        access_token_ttl,
        refresh_token_ttl,
        authorization_code_ttl,
        refresh_family_ttl,
        refresh_grace_period,
        revocation_sync_interval,
        session_idle_timeout,
        session_absolute_timeout,
    }
}

/// The scope catalog, the default scopes and what each role may be granted.
struct Catalog {
    scopes: Vec<ScopeEntry>,
    default_scopes: Vec<ScopeToken>,
    roles: BTreeMap<String, Vec<ScopeToken>>,
}

/// The scopes `list` names, each of which must be in the catalog (`what` names the setting).
fn scope_list(
    catalog: &BTreeMap<String, ScopeConfig>,
    what: &str,
    list: &[String],
    found: &mut Findings,
) -> Vec<ScopeToken> {
    list.iter()
        .filter_map(|s| {
            if catalog.contains_key(s) {
                ScopeToken::parse(s).ok()
            } else {
                found.problem(format!("{what} names {s:?}, which is not in `scopes`"));
                None
            }
        })
        .collect()
}

fn scope_catalog(raw: &RawConfig, found: &mut Findings) -> Catalog {
    let mut scopes = Vec::new();
    if raw.scopes.is_empty() {
        found.problem("scopes must list at least one scope");
    }
    for (name, entry) in &raw.scopes {
        match ScopeToken::parse(name) {
            Err(e) => found.problem(format!("scopes: {e}")),
            Ok(_) if name == "offline_access" || name == "openid" => found.problem(format!(
                "scopes: {name:?} must not be in the catalog (refresh tokens are always issued, and Gatehouse issues no ID tokens)"
            )),
            Ok(token) => {
                if entry.description.trim().is_empty() {
                    found.problem(format!("scopes.{name}.description must not be empty"));
                }
                for implied in &entry.implies {
                    if !raw.scopes.contains_key(implied) {
                        found.problem(format!(
                            "scopes.{name}.implies names {implied:?}, which is not in `scopes`"
                        ));
                    }
                }
                scopes.push(ScopeEntry {
                    name: token,
                    description: entry.description.clone(),
                    implies: entry.implies.clone(),
                });
            }
        }
    }
    if raw.default_scopes.is_empty() {
        found.problem("default_scopes must name at least one scope");
    }
    let default_scopes = scope_list(&raw.scopes, "default_scopes", &raw.default_scopes, found);
    let mut roles = BTreeMap::new();
    for (role, list) in &raw.roles {
        let valid_name = !role.is_empty()
            && role
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            found.problem(format!(
                "roles: role name {role:?} may only use letters, digits, '-' and '_'"
            ));
        }
        let granted = scope_list(&raw.scopes, &format!("roles.{role}"), list, found);
        roles.insert(role.clone(), granted);
    }
    Catalog {
        scopes,
        default_scopes,
        roles,
    }
}

/// Who may call from where: browser origins, trusted proxies, hosted clients' shared egress.
struct Network {
    allowed_origins: Vec<String>,
    trusted_proxies: Vec<ipnet::IpNet>,
    shared_egress: Vec<ipnet::IpNet>,
}

/// Addresses or CIDR blocks (`what` names the setting).
fn cidrs(what: &str, list: &[String], found: &mut Findings) -> Vec<ipnet::IpNet> {
    let mut nets = Vec::new();
    for cidr in list {
        let parsed = cidr
            .parse::<ipnet::IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => found.problem(format!("{what}: {cidr:?} is not an address or CIDR block")),
        }
    }
    nets
}

fn network(raw: &RawConfig, found: &mut Findings) -> Network {
    let mut allowed_origins = Vec::new();
    for origin in &raw.allowed_origins {
        match parse_origin(origin) {
            Ok(o) => allowed_origins.push(o),
            Err(e) => found.problem(format!("allowed_origins: {e}")),
        }
    }
    let trusted_proxies = cidrs("trusted_proxies", &raw.trusted_proxies, found);
    let shared_egress = cidrs(
        "rate_limits.shared_egress",
        &raw.rate_limits.shared_egress,
        found,
    );
    if !(1..=10_000).contains(&raw.rate_limits.shared_egress_factor) {
        found.problem(format!(
            "rate_limits.shared_egress_factor must be 1 to 10000, not {}",
            raw.rate_limits.shared_egress_factor
        ));
    }
    Network {
        allowed_origins,
        trusted_proxies,
        shared_egress,
    }
}

/// Whether a `mcp.tool_scopes` key can name a tool: a built-in one, a glob, or a tool of a
/// configured upstream (whose tools are known only once it answers).
fn names_a_tool(raw: &RawConfig, key: &str) -> bool {
    TOOL_NAMES.contains(&key)
        || key.contains('*')
        || raw.upstreams.iter().any(|u| {
            key.strip_prefix(u.name.as_str())
                .is_some_and(|rest| rest.starts_with(NAME_SEPARATOR))
        })
}

/// `[[upstreams]]`: each checked alone, then their names, which must differ.
fn upstreams(raw: &RawConfig, issuer: Option<&Issuer>, found: &mut Findings) -> Vec<Upstream> {
    let own_resource = issuer
        .map(|i| format!("{}/mcp", i.as_str()))
        .unwrap_or_default();
    let env = |k: &str| std::env::var(k).ok();
    let mut checked: Vec<Upstream> = Vec::new();
    for entry in &raw.upstreams {
        if checked.iter().any(|u| u.name == entry.name) {
            found.problem(format!(
                "upstream names must differ: {:?} is used twice",
                entry.name
            ));
            continue;
        }
        // Room for the name, the separator and a tool name cut short with its hash.
        if entry.name.len() + NAME_SEPARATOR.len() + 12 > raw.mcp.max_tool_name_len {
            found.problem(format!(
                "upstream {:?}: mcp.max_tool_name_len ({}) leaves no room for its tools' names after the prefix",
                entry.name, raw.mcp.max_tool_name_len
            ));
        }
        match Upstream::check(entry, &own_resource, &env) {
            Ok(u) => checked.push(u),
            Err(problems) => problems.into_iter().for_each(|p| found.problem(p)),
        }
    }
    // A token minted for one upstream must not be good at another (RFC 8707 audience).
    let mut audiences: BTreeMap<&str, &str> = BTreeMap::new();
    for u in &checked {
        if let UpstreamKind::Http {
            identity: HttpIdentity::SignedJwt { audience, .. },
            ..
        } = &u.kind
        {
            if let Some(other) = audiences.insert(audience.as_str(), u.name.as_str()) {
                found.problem(format!(
                    "upstreams {other:?} and {:?} have the same audience {audience}: each needs its own, or a token minted for one would be accepted by the other",
                    u.name
                ));
            }
        }
    }
    checked
}

/// `local_login` and `[[identity_providers]]`: each checked alone, then their ids, which must
/// differ; someone must be able to sign in.
fn identity_providers(raw: &RawConfig, found: &mut Findings) -> Vec<IdentityProvider> {
    let env = |k: &str| std::env::var(k).ok();
    let roles = |r: &str| raw.roles.contains_key(r);
    let mut checked: Vec<IdentityProvider> = Vec::new();
    for entry in &raw.identity_providers {
        if checked.iter().any(|p| p.id == entry.id) {
            found.problem(format!(
                "identity provider ids must differ: {:?} is used twice",
                entry.id
            ));
            continue;
        }
        match IdentityProvider::check(entry, &env, &roles) {
            Ok(p) => checked.push(p),
            Err(problems) => problems.into_iter().for_each(|p| found.problem(p)),
        }
    }
    if !raw.local_login && raw.identity_providers.is_empty() {
        found.problem(
            "local_login = false needs at least one [[identity_providers]] entry: nobody could sign in",
        );
    }
    checked
}

/// `[mcp]`.
fn mcp(raw: &RawConfig, found: &mut Findings) {
    let mcp = &raw.mcp;
    credentials(raw, found);
    if !raw.scopes.contains_key(&mcp.base_scope) {
        found.problem(format!(
            "mcp.base_scope {:?} is not in `scopes`",
            mcp.base_scope
        ));
    }
    for (tool, scope) in &mcp.tool_scopes {
        if !names_a_tool(raw, tool) {
            found.problem(format!(
                "mcp.tool_scopes names {tool:?}, which is neither a tool ({}), a glob (`*`) nor a tool of a configured upstream (`<upstream>__<tool>`)",
                TOOL_NAMES.join(", ")
            ));
        }
        if let Err(e) = ToolGlob::parse(tool) {
            found.problem(format!("mcp.tool_scopes: {e}"));
        }
        if !raw.scopes.contains_key(scope) {
            found.problem(format!(
                "mcp.tool_scopes.{tool} names {scope:?}, which is not in `scopes`"
            ));
        }
    }
    for (role, access) in &mcp.tool_access {
        if !raw.roles.contains_key(role) {
            found.problem(format!(
                "mcp.tool_access names the role {role:?}, which is not in `roles`"
            ));
        }
        for glob in access.allow.iter().chain(&access.deny) {
            if let Err(e) = ToolGlob::parse(glob) {
                found.problem(format!("mcp.tool_access.{role}: {e}"));
            }
        }
    }
    if !(16..=128).contains(&mcp.max_tool_name_len) {
        found.problem(format!(
            "mcp.max_tool_name_len must be 16 to 128, not {}",
            mcp.max_tool_name_len
        ));
    }
    if mcp.rate_limit_per_token == 0 || mcp.rate_limit_unauthenticated == 0 {
        found.problem("mcp rate limits must be at least 1 request per minute");
    }
    if !(10..=86_400).contains(&mcp.session_idle_timeout)
        || !(1..=mcp.max_sessions).contains(&mcp.max_sessions_per_user)
        || !(1..=1_000_000).contains(&mcp.max_sessions)
    {
        found.problem(format!(
            "mcp.session_idle_timeout must be 10 to 86400 seconds, mcp.max_sessions 1 to 1000000 and mcp.max_sessions_per_user 1 to mcp.max_sessions, not {}, {} and {}",
            mcp.session_idle_timeout, mcp.max_sessions, mcp.max_sessions_per_user
        ));
    }
    if mcp.clock_leeway > 300 {
        found.problem(format!(
            "mcp.clock_leeway must be at most 300 seconds, not {}",
            mcp.clock_leeway
        ));
    }
    if !(1024..=16 * 1024 * 1024).contains(&mcp.max_body_bytes) {
        found.problem(format!(
            "mcp.max_body_bytes must be between 1024 and 16777216, not {}",
            mcp.max_body_bytes
        ));
    }
}

/// `[rate_limits]`, `[connections]`, `[password_hashing]` and `[api_tokens]`.
fn limits(raw: &RawConfig, found: &mut Findings) {
    let rl = &raw.rate_limits;
    if rl.public_per_minute == 0 || rl.oauth_per_minute == 0 || rl.failures_per_minute == 0 {
        found.problem("rate_limits must allow at least 1 request per minute");
    }
    if raw.api_tokens.max_days == 0 || raw.api_tokens.max_days > 3650 {
        found.problem(format!(
            "api_tokens.max_days must be 1 to 3650, not {}",
            raw.api_tokens.max_days
        ));
    }
    let c = &raw.connections;
    if !(1..=300).contains(&c.header_timeout)
        || !(1..=3600).contains(&c.idle_timeout)
        || !(1..=3600).contains(&c.body_timeout)
        || !(1..=3600).contains(&c.shutdown_timeout)
        || c.drain_delay > 3600
    {
        found.problem(format!(
            "connections.header_timeout must be 1 to 300 seconds, connections.idle_timeout, body_timeout and shutdown_timeout 1 to 3600, and drain_delay at most 3600, not {}, {}, {}, {} and {}",
            c.header_timeout, c.idle_timeout, c.body_timeout, c.shutdown_timeout, c.drain_delay
        ));
    }
    if !(1..=1_000_000).contains(&c.max)
        || !(1..=c.max).contains(&c.max_per_address)
        || !(1..=1_000_000).contains(&c.max_in_flight)
    {
        found.problem(format!(
            "connections.max must be 1 to 1000000, connections.max_per_address 1 to connections.max, and connections.max_in_flight 1 to 1000000, not {}, {} and {}",
            c.max, c.max_per_address, c.max_in_flight
        ));
    }
    let ph = raw.password_hashing;
    if ph.workers > 256 || ph.queue > 10_000 {
        found.problem(format!(
            "password_hashing.workers must be at most 256 and password_hashing.queue at most 10000, not {} and {}",
            ph.workers, ph.queue
        ));
    }
}

/// `[registration]` and `[client_metadata]`.
fn registration(raw: &RawConfig, found: &mut Findings) -> RegistrationPolicy {
    let reg = &raw.registration;
    let rate_limit_per_hour = NonZeroU32::new(reg.rate_limit_per_hour).unwrap_or_else(|| {
        found.problem("registration.rate_limit_per_hour must be at least 1");
        NonZeroU32::MIN
    });
    if !(256..=1024 * 1024).contains(&reg.max_body_bytes) {
        found.problem(format!(
            "registration.max_body_bytes must be between 256 and 1048576, not {}",
            reg.max_body_bytes
        ));
    }
    for scheme in &reg.private_use_schemes {
        let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !valid
            || ["http", "https", "javascript", "data", "file", "vbscript"]
                .contains(&scheme.to_ascii_lowercase().as_str())
        {
            found.problem(format!(
                "registration.private_use_schemes: {scheme:?} is not an acceptable private-use scheme"
            ));
        }
    }
    for host in &reg.allowed_redirect_hosts {
        if host.is_empty() || host.contains(['/', ':', ' ']) {
            found.problem(format!(
                "registration.allowed_redirect_hosts: {host:?} must be a bare host name like claude.ai"
            ));
        }
    }
    let client_credentials_scopes = scope_list(
        &raw.scopes,
        "registration.client_credentials_scopes",
        &reg.client_credentials_scopes,
        found,
    );
    if raw.client_metadata.insecure_allow_loopback {
        found.development_defaults.push(
            "client_metadata.insecure_allow_loopback = true: client metadata documents may be fetched from loopback over plain http (tests and local development only)".to_owned(),
        );
    }
    RegistrationPolicy {
        enabled: reg.enabled,
        redirect: RedirectPolicy {
            allow_private_use_schemes: reg.allow_private_use_schemes,
            private_use_schemes: reg.private_use_schemes.clone(),
            allowed_hosts: reg.allowed_redirect_hosts.clone(),
            any_private_use_scheme: false,
        },
        rate_limit_per_hour,
        max_body_bytes: reg.max_body_bytes,
        unused_client_ttl: (reg.unused_client_ttl > 0).then(|| secs(reg.unused_client_ttl)),
        client_credentials_scopes,
    }
}

/// `[key_rotation]`, `keys_passphrase`, `audit_retention`, and the metrics settings.
fn keys(raw: &RawConfig, found: &mut Findings) -> KeyRotation {
    let kr = &raw.key_rotation;
    if !(1..=300).contains(&kr.check_interval) {
        found.problem(format!(
            "key_rotation.check_interval must be between 1 and 300 seconds, not {}",
            kr.check_interval
        ));
    }
    let jwks_max_age = crate::routes::PUBLIC_DOCUMENT_MAX_AGE;
    let min_lead = jwks_max_age.max(kr.check_interval.saturating_mul(2));
    if kr.publish_lead < min_lead || kr.publish_lead > 30 * 86_400 {
        found.problem(format!(
            "key_rotation.publish_lead must be between {min_lead} seconds (the JWK set's max-age, and twice check_interval) and 2592000, not {}",
            kr.publish_lead
        ));
    }
    if kr.interval != 0
        && (kr.interval < kr.publish_lead.saturating_mul(2) || kr.interval > 366 * 86_400)
    {
        found.problem(format!(
            "key_rotation.interval ({}) must be 0 (manual rotation), or between twice key_rotation.publish_lead ({}) and 31622400 (a year)",
            kr.interval, kr.publish_lead
        ));
    }
    if raw.audit_retention > 3_650 * 86_400 {
        found.problem(format!(
            "audit_retention must be at most 315360000 seconds (ten years), or 0 to keep audit events forever, not {}",
            raw.audit_retention
        ));
    }
    if kr.retired_retention > 366 * 86_400 {
        found.problem(format!(
            "key_rotation.retired_retention must be at most 31622400 seconds, not {}",
            kr.retired_retention
        ));
    }
    if raw.metrics_token.as_ref().is_some_and(|t| t.0.len() < 32) {
        found.problem(
            "metrics_token must be at least 32 characters (set it with GATEHOUSE_METRICS_TOKEN)",
        );
    }
    if raw.metrics_bind.is_some_and(|m| m == raw.bind) {
        found.problem(
            "metrics_bind must differ from bind (metrics are served on a listener of their own)",
        );
    }
    if raw.keys_passphrase.as_ref().is_some_and(|p| p.0.len() < 12) {
        found.problem(
            "keys_passphrase must be at least 12 characters (set it with GATEHOUSE_KEYS_PASSPHRASE)",
        );
    }
    KeyRotation {
        interval: (kr.interval > 0).then(|| secs(kr.interval)),
        publish_lead: secs(kr.publish_lead),
        check_interval: secs(kr.check_interval),
        retired_retention: secs(kr.retired_retention),
    }
}

/// `mcp.credentials` and the `forwarded` source's settings.
fn credentials(raw: &RawConfig, found: &mut Findings) {
    use super::CredentialSource;
    let mcp = &raw.mcp;
    if mcp.credentials.is_empty() {
        found.problem("mcp.credentials must name at least one of oauth, api_token, forwarded");
    }
    let mut seen = Vec::new();
    for source in &mcp.credentials {
        if seen.contains(source) {
            found.problem(format!("mcp.credentials names {source:?} twice"));
        }
        seen.push(*source);
    }
    for (key, name) in [
        ("mcp.forwarded_user_header", &mcp.forwarded_user_header),
        ("mcp.forwarded_groups_header", &mcp.forwarded_groups_header),
    ] {
        if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            found.problem(format!("{key} is not a header name: {name:?}"));
        }
    }
    for (group, role) in &mcp.forwarded_group_roles {
        if !raw.roles.contains_key(role) {
            found.problem(format!(
                "mcp.forwarded_group_roles gives group {group:?} the role {role:?}, which is not a role of [roles]"
            ));
        }
    }
    if mcp.credentials.contains(&CredentialSource::Forwarded) && raw.trusted_proxies.is_empty() {
        found.problem(
            "mcp.credentials includes forwarded, which trusts headers only from trusted_proxies: list the proxy's addresses there",
        );
    }
}
