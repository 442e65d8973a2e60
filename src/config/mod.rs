//! Configuration: defaults < TOML file < `GATEHOUSE_*` environment, strict and checked at start.
//!
//! [`RawConfig`] is what an operator writes: every field is documented here, and the README's
//! configuration reference is checked against this struct by a test. [`Config`] is the validated
//! form the rest of the program uses; building it reports every problem, one line each.

mod identity;
mod upstreams;
mod validate;

pub use identity::{
    AdmitConfig, ClaimRule, IdentityProvider, IdentityProviderConfig, ORGS_CLAIM, ProviderKind,
    ProviderSecret, RoleRuleConfig,
};
pub use upstreams::{
    HttpIdentity, IdentityMode, Isolation, NAME_SEPARATOR, ToolAccessConfig, ToolGlob, Upstream,
    UpstreamConfig, UpstreamKind, UpstreamTransport,
};

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};
use time::Duration;
use url::Url;

use crate::domain::{Issuer, RedirectPolicy, ScopeToken, SigningAlgorithm};
use crate::store::DatabaseUrl;

/// Prefix of the environment variables that override the file (`GATEHOUSE_ISSUER`, ...).
/// Nested keys are joined with `__`.
pub const ENV_PREFIX: &str = "GATEHOUSE_";
/// The configuration file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "gatehouse.toml";
/// The environment variable naming the configuration file (same as `--config`).
pub const CONFIG_FILE_ENV: &str = "GATEHOUSE_CONFIG";

/// The configuration as written in the TOML file or the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Public base URL of this server, e.g. `https://mcp.example.com`: the OAuth issuer, and the
    /// origin of the MCP endpoint `{issuer}/mcp`. No trailing slash, path, query or fragment;
    /// https unless the host is loopback. Default: `http://{bind}` when `bind` is loopback.
    pub issuer: Option<String>,
    /// Socket address to listen on. Default `127.0.0.1:8080`.
    pub bind: SocketAddr,
    /// `sqlite://FILE` (created on first start, WAL mode) or `postgres://USER:PASS@HOST/DB`
    /// (several instances may share it). Default `sqlite://gatehouse.db` in the working directory.
    pub database_url: String,
    /// Directory of the signing keys' private halves (created with mode 0700, files 0600). An
    /// ES256 key is generated on first start. Default `keys`.
    pub keys_dir: PathBuf,
    /// Product name shown on the login and consent pages and as the PRM `resource_name`.
    pub product_name: String,
    /// Algorithm of newly generated signing keys: `ES256` (default), `EdDSA` or `RS256`.
    pub signing_algorithm: SigningAlgorithm,
    /// Access-token lifetime in seconds. Default 3600.
    pub access_token_ttl: u64,
    /// Refresh-token lifetime in seconds. Default 2592000 (30 days).
    pub refresh_token_ttl: u64,
    /// Authorization-code lifetime in seconds (at most 600). Default 60.
    pub authorization_code_ttl: u64,
    /// Lifetime of a refresh-token family (a grant) in seconds, however often it is refreshed:
    /// then the user signs in again. Default 7776000 (90 days).
    pub refresh_family_ttl: u64,
    /// Seconds during which a just-rotated refresh token, presented again, gets the same new
    /// token pair instead of revoking its family (clients that retry or race). Default 30.
    pub refresh_grace_period: u64,
    /// Seconds between reads of revocations made by other instances or the CLI: the bound on how
    /// long they take to reach this instance. Default 5.
    pub revocation_sync_interval: u64,
    /// The scope catalog: scope name -> description shown on the consent page. Advertised in
    /// `scopes_supported`. `offline_access` is implicit (refresh tokens are always issued) and
    /// must not be listed.
    pub scopes: BTreeMap<String, ScopeConfig>,
    /// Scopes granted when a client asks for none. Default `["mcp"]`.
    pub default_scopes: Vec<String>,
    /// Role name -> the scopes a user holding that role may grant.
    pub roles: BTreeMap<String, Vec<String>>,
    /// Browser origins (`https://app.example.com`) allowed to call the MCP endpoint. Empty
    /// (default) allows any origin; clients that send no `Origin` are always allowed.
    pub allowed_origins: Vec<String>,
    /// A browser session with no activity for this many seconds ends. Default 3600.
    pub session_idle_timeout: u64,
    /// A browser session ends this many seconds after it started, active or not. Default 43200.
    pub session_absolute_timeout: u64,
    /// Seconds an audit event is kept (at most ten years); the periodic clean-up deletes older
    /// ones. 0 keeps them forever. Default 7776000 (90 days).
    pub audit_retention: u64,
    /// Addresses (CIDRs, e.g. `10.0.0.0/8`) of reverse proxies whose `X-Forwarded-For` /
    /// `Forwarded` header names the real client. Empty (default): the socket's peer is the client.
    pub trusted_proxies: Vec<String>,
    /// The MCP endpoint: scopes per tool, rate limits, token checks.
    pub mcp: McpConfig,
    /// Per-client-IP budgets of the other endpoints.
    pub rate_limits: RateLimitsConfig,
    /// Dynamic client registration (RFC 7591) at `/register`.
    pub registration: RegistrationConfig,
    /// Client ID Metadata Documents: https `client_id`s whose metadata is fetched.
    pub client_metadata: ClientMetadataConfig,
    /// Passphrase that seals the private signing keys at rest, in `keys_dir` and in the database
    /// (so that several instances sharing a database share the keys). Set it in the environment
    /// (`GATEHOUSE_KEYS_PASSPHRASE`), not in the file. Unset (default): key files are plain JSON
    /// protected by mode 0600.
    pub keys_passphrase: Option<Passphrase>,
    /// Signing-key rotation: schedule and waits.
    pub key_rotation: KeyRotationConfig,
    /// The threads that check passwords at sign-in, and how many checks may wait for them.
    pub password_hashing: PasswordHashingConfig,
    /// Gateway mode: the operator's own MCP servers, served through `/mcp` under prefixed tool
    /// names (`[[upstreams]]` tables). Default none.
    pub upstreams: Vec<UpstreamConfig>,
    /// Sign-in with a Gatehouse password (`gatehouse users add`). `false` leaves only the
    /// identity providers. Default `true`.
    pub local_login: bool,
    /// Identity providers people may sign in with (`[[identity_providers]]` tables). Default
    /// none.
    pub identity_providers: Vec<IdentityProviderConfig>,
    /// API tokens people create on their account page (or an admin with the CLI).
    pub api_tokens: ApiTokensConfig,
    /// `text` (default) or `json`: how `serve` writes its log to standard error. In `json`,
    /// one object per line, with the request's id on every line written during a request.
    pub log_format: LogFormat,
    /// Address of a listener of its own that serves Prometheus metrics at `/metrics`, e.g.
    /// `127.0.0.1:9464`. Default unset: no such listener.
    pub metrics_bind: Option<SocketAddr>,
    /// A secret (32 characters or more) that also serves `/metrics` on the public listener, to
    /// requests with `Authorization: Bearer <secret>`. Default unset: never on the public
    /// listener. Set it with GATEHOUSE_METRICS_TOKEN.
    pub metrics_token: Option<Passphrase>,
    /// The socket edge of every listener: timeouts, connection and request bounds, shutdown.
    pub connections: ConnectionsConfig,
}

/// `[connections]`: what one client, or everyone together, may hold of a listener, and how a
/// stop drains it. The defaults are far above what a real client needs (one keeps a
/// connection or a few, sends a request's head in one write and its body at once).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Seconds a request's head may take to arrive, from its first byte (a new connection's
    /// first request: from the connection). Default 10.
    pub header_timeout: u64,
    /// Seconds a kept-alive connection may wait for its next request. Default 60.
    pub idle_timeout: u64,
    /// Seconds a request's body may take to arrive in full; past it, 408. Default 30.
    pub body_timeout: u64,
    /// Connections served at once, all addresses together. Default 10000.
    pub max: usize,
    /// Connections served at once from one address (times `rate_limits.shared_egress_factor`
    /// for hosted clients' egress; `trusted_proxies` only count towards `max`). Default 256.
    pub max_per_address: usize,
    /// Requests answered at once (`/health` apart); past it, 503 with `Retry-After` at once.
    /// Default 1024.
    pub max_in_flight: usize,
    /// Seconds requests in flight get to finish after SIGTERM or Ctrl-C. Default 20.
    pub shutdown_timeout: u64,
    /// Seconds between SIGTERM and the end of accepting, while `/health` answers 503
    /// "draining", so a load balancer stops sending first. Default 0.
    pub drain_delay: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            header_timeout: 10,
            idle_timeout: 60,
            body_timeout: 30,
            max: 10_000,
            max_per_address: 256,
            max_in_flight: 1024,
            shutdown_timeout: 20,
            drain_delay: 0,
        }
    }
}

/// The log's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[api_tokens]`: how long the API tokens people create may live.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiTokensConfig {
    /// Longest lifetime a token may be given, days. Default 365.
    pub max_days: u32,
    /// Whether a token may be created that never expires. Default false.
    pub allow_no_expiry: bool,
}

impl Default for ApiTokensConfig {
    fn default() -> Self {
        Self {
            max_days: 365,
            allow_no_expiry: false,
        }
    }
}

/// The lifetime an API token gets when none is chosen, days.
pub const API_TOKEN_DEFAULT_DAYS: u32 = 90;

/// `[password_hashing]`: each check costs ~18 ms of a core and 19 MiB while it runs, so checks run
/// on a fixed set of threads behind a bounded queue; beyond it a sign-in is answered 503 with
/// `Retry-After` at once, never with unbounded memory.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordHashingConfig {
    /// Threads that hash and check passwords; 0 (default) means one per core.
    pub workers: usize,
    /// Checks that may wait for a thread (at most 10000). Default 32: with two threads, about a
    /// third of a second of waiting at most.
    pub queue: usize,
}

impl Default for PasswordHashingConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            queue: 32,
        }
    }
}

impl PasswordHashingConfig {
    /// The number of threads: as configured, or one per core.
    pub fn threads(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

/// A passphrase; `Debug` never shows it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Passphrase(pub String);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// `[key_rotation]`: when signing keys move through next -> current -> previous -> retired.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyRotationConfig {
    /// Seconds a key signs before the next one takes over; 0 rotates only when an operator
    /// runs `gatehouse keys rotate`. Default 2592000 (30 days).
    pub interval: u64,
    /// Seconds a new key is published in the JWK set before it signs, so every verifier and
    /// JWK-set cache knows it first. At least the JWK set's max-age (300). Default 3600.
    pub publish_lead: u64,
    /// Seconds between this instance's reads of the key states (changes made by the CLI or
    /// another instance; the schedule runs at the same pace). Default 5.
    pub check_interval: u64,
    /// Seconds a retired key's record is kept (for `keys list` and the audit trail) before it is
    /// deleted. Default 604800 (7 days).
    pub retired_retention: u64,
}

impl Default for KeyRotationConfig {
    fn default() -> Self {
        Self {
            interval: 30 * 86_400,
            publish_lead: 3600,
            check_interval: 5,
            retired_retention: 7 * 86_400,
        }
    }
}

/// The validated rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRotation {
    /// Rotation period; `None` for manual rotation only.
    pub interval: Option<Duration>,
    /// Publication lead of a new key.
    pub publish_lead: Duration,
    /// Interval of the key-state reads and the schedule.
    pub check_interval: Duration,
    /// Retention of retired keys' records.
    pub retired_retention: Duration,
}

/// How `tools/list` shows a tool the caller lacks a scope for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnauthorizedTools {
    /// Not listed.
    #[default]
    Hide,
    /// Listed, with a note of the scope it needs.
    Annotate,
}

/// The tools this server offers (each implemented in `mcp/tools.rs`): the names
/// `mcp.tool_scopes` may use.
pub const TOOL_NAMES: [&str; 2] = ["whoami", "get_activity_log"];

/// Whether `/mcp` keeps sessions for clients of the 2025 protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// No sessions: every request stands alone (no `Mcp-Session-Id`; `GET /mcp` is 405). Costs
    /// no memory between requests and works across instances without sticky sessions.
    #[default]
    Stateless,
    /// A session per `initialize` (`Mcp-Session-Id`), for clients that expect one: a record of
    /// its owner and last use in this instance's memory, within the bounds below. Requests are
    /// served as in stateless mode; a session only has to be recognised.
    Stateful,
}

/// `[mcp]`: the MCP endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    /// The scope every MCP request needs ("may speak MCP"). Default `mcp`.
    pub base_scope: String,
    /// Tool name -> the scope it needs besides the base scope. Default
    /// `{ get_activity_log = "activity:read" }`.
    pub tool_scopes: BTreeMap<String, String>,
    /// How `tools/list` shows tools the caller may not call: `hide` (default) or `annotate`.
    pub unauthorized_tools: UnauthorizedTools,
    /// Requests per minute per access token. Default 120.
    pub rate_limit_per_token: u32,
    /// Requests per minute per client IP that carry no valid token. Default 5.
    pub rate_limit_unauthenticated: u32,
    /// Seconds of clock skew tolerated on a token's `exp` and `nbf`. Default 30.
    pub clock_leeway: u64,
    /// Users with this role may read everyone's activity. Default `admin`.
    pub admin_role: String,
    /// Largest MCP request body, bytes. Default 1048576.
    pub max_body_bytes: usize,
    /// `stateless` (default) or `stateful`: whether 2025-protocol clients get a session. The
    /// 2026-07-28 protocol has none either way.
    pub session_mode: SessionMode,
    /// Stateful mode: seconds after which a session with no request ends. Default 300.
    pub session_idle_timeout: u64,
    /// Stateful mode: most live sessions per user (per subject); a new one ends the oldest.
    /// Default 16.
    pub max_sessions_per_user: usize,
    /// Stateful mode: most live sessions in this instance; past it a new session is refused
    /// with 503 and `Retry-After`, and the live ones keep working. Default 10000.
    pub max_sessions: usize,
    /// Role -> tool globs it may and may not use (`[mcp.tool_access.<role>]`). Empty (default):
    /// roles do not restrict tools. Otherwise a tool is usable only when one of the caller's
    /// roles allows it and none denies it.
    pub tool_access: BTreeMap<String, ToolAccessConfig>,
    /// Longest advertised name of an upstream's tool, so that a client's own prefix (Claude
    /// Code's `mcp__<server>__`) still fits the usual 64. Default 48.
    pub max_tool_name_len: usize,
    /// The credentials `/mcp` accepts, in order: `oauth` (access tokens), `api_token`, and
    /// `forwarded` (a person named by a trusted proxy). Default `["oauth", "api_token"]`.
    pub credentials: Vec<CredentialSource>,
    /// `forwarded`: the header naming the person. Default `X-Forwarded-User`.
    pub forwarded_user_header: String,
    /// `forwarded`: the header listing their groups, comma-separated. Default
    /// `X-Forwarded-Groups`.
    pub forwarded_groups_header: String,
    /// `forwarded`: group (case-sensitive) -> the role it gives. Default none.
    pub forwarded_group_roles: BTreeMap<String, String>,
}

/// A kind of credential `/mcp` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialSource {
    /// An access token from this server's OAuth flow (a JWT).
    Oauth,
    /// An API token (`gh_pat_...`).
    ApiToken,
    /// A person named in headers by a reverse proxy listed in `trusted_proxies`.
    Forwarded,
}

impl Default for McpConfig {
    fn default() -> Self {
        Self {
            base_scope: "mcp".to_owned(),
            tool_scopes: BTreeMap::from([(
                "get_activity_log".to_owned(),
                "activity:read".to_owned(),
            )]),
            unauthorized_tools: UnauthorizedTools::Hide,
            rate_limit_per_token: 120,
            rate_limit_unauthenticated: 5,
            clock_leeway: 30,
            admin_role: "admin".to_owned(),
            max_body_bytes: 1024 * 1024,
            session_mode: SessionMode::Stateless,
            session_idle_timeout: 300,
            max_sessions_per_user: 16,
            max_sessions: 10_000,
            tool_access: BTreeMap::new(),
            max_tool_name_len: 48,
            credentials: vec![CredentialSource::Oauth, CredentialSource::ApiToken],
            forwarded_user_header: "X-Forwarded-User".to_owned(),
            forwarded_groups_header: "X-Forwarded-Groups".to_owned(),
            forwarded_group_roles: BTreeMap::new(),
        }
    }
}

/// `[rate_limits]`: requests per minute per client IP (per instance).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Discovery documents, the JWK set and `/health`. Default 600.
    pub public_per_minute: u32,
    /// `/authorize`, `/login`, `/consent`, `/logout`, `/token`, `/revoke`, `/introspect`,
    /// `/register` (which also has its own hourly limit). Default 300.
    pub oauth_per_minute: u32,
    /// Failed requests (`invalid_client`, `invalid_grant`) at `/token`, `/revoke` and
    /// `/introspect` per minute, counted per client IP and per `client_id`, all of which may come
    /// at once; past it every request of that address or client is answered 429 `slow_down`
    /// until the count drains (OAuth 2.1 §7.7: guessing secrets and codes). Default 20.
    pub failures_per_minute: u32,
    /// Addresses or CIDR blocks from which hosted clients (Claude.ai, ChatGPT) reach this server
    /// on behalf of many people: every per-address budget is multiplied by
    /// `shared_egress_factor` for them. Empty by default; see the README for where the hosted
    /// products publish their ranges.
    pub shared_egress: Vec<String>,
    /// The multiplier of every per-address budget for `shared_egress` addresses. Default 100.
    pub shared_egress_factor: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            public_per_minute: 600,
            oauth_per_minute: 300,
            failures_per_minute: 20,
            shared_egress: Vec::new(),
            shared_egress_factor: 100,
        }
    }
}

/// `[registration]`: who may register a client at `/register`, and how registrations age.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Accept dynamic registrations. Default true (Cursor, VS Code and Claude rely on it).
    pub enabled: bool,
    /// Accept native apps' private-use redirect schemes (RFC 8252 §7.1): reverse-domain schemes
    /// (`com.example.app:/cb`) and those in `private_use_schemes`. Default true.
    pub allow_private_use_schemes: bool,
    /// Private-use schemes accepted by name although they are not reverse domain names.
    /// Default `["cursor", "vscode", "vscode-insiders", "claude"]`.
    pub private_use_schemes: Vec<String>,
    /// When not empty, https redirect URIs must be on one of these hosts.
    pub allowed_redirect_hosts: Vec<String>,
    /// Registrations accepted per client IP address per hour. Default 30.
    pub rate_limit_per_hour: u32,
    /// Largest accepted registration request, bytes. Default 16384.
    pub max_body_bytes: usize,
    /// A dynamic registration that completed no sign-in within this many seconds is deleted
    /// (Claude registers a new client on every connection). 0 keeps them. Default 86400.
    pub unused_client_ttl: u64,
    /// Scopes a client may register for `client_credentials` (tokens with no user behind them)
    /// at `/register`. Empty (default): only clients the operator adds (`gatehouse clients add
    /// --confidential`) may use that grant (RFC 6749 §4.4: arranged with the server; RFC 7591
    /// §5: registered metadata is self-asserted).
    pub client_credentials_scopes: Vec<String>,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_private_use_schemes: true,
            private_use_schemes: ["cursor", "vscode", "vscode-insiders", "claude"]
                .map(str::to_owned)
                .to_vec(),
            allowed_redirect_hosts: Vec::new(),
            rate_limit_per_hour: 30,
            max_body_bytes: 16 * 1024,
            unused_client_ttl: 86_400,
            client_credentials_scopes: Vec::new(),
        }
    }
}

/// `[client_metadata]`: Client ID Metadata Documents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientMetadataConfig {
    /// Recognise https `client_id`s by fetching their metadata document, and advertise
    /// `client_id_metadata_document_supported`. Default true.
    pub enabled: bool,
    /// DANGER, tests and local development only: also fetch documents from loopback addresses
    /// over plain http. Logged loudly when on. Default false.
    pub insecure_allow_loopback: bool,
}

impl Default for ClientMetadataConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            insecure_allow_loopback: false,
        }
    }
}

/// One entry of the scope catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// What granting this scope lets the client do, in the words the consent page shows.
    pub description: String,
    /// Narrower scopes this one includes: a token holding it may call tools that need them.
    #[serde(default)]
    pub implies: Vec<String>,
}

impl Default for RawConfig {
    fn default() -> Self {
        let scope = |d: &str| ScopeConfig {
            description: d.to_owned(),
            implies: Vec::new(),
        };
        Self {
            issuer: None,
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://gatehouse.db".to_owned(),
            keys_dir: PathBuf::from("keys"),
            product_name: "Gatehouse".to_owned(),
            signing_algorithm: SigningAlgorithm::ES256,
            access_token_ttl: 3600,
            refresh_token_ttl: 30 * 24 * 3600,
            authorization_code_ttl: 60,
            refresh_family_ttl: 90 * 86_400,
            refresh_grace_period: 30,
            revocation_sync_interval: 5,
            scopes: BTreeMap::from([
                (
                    "mcp".to_owned(),
                    scope("Use this server's MCP tools on your behalf"),
                ),
                (
                    "activity:read".to_owned(),
                    scope("Read your recent sign-in and tool activity"),
                ),
            ]),
            default_scopes: vec!["mcp".to_owned()],
            roles: BTreeMap::from([
                (
                    "user".to_owned(),
                    vec!["mcp".to_owned(), "activity:read".to_owned()],
                ),
                (
                    "admin".to_owned(),
                    vec!["mcp".to_owned(), "activity:read".to_owned()],
                ),
            ]),
            allowed_origins: Vec::new(),
            session_idle_timeout: 3600,
            session_absolute_timeout: 12 * 3600,
            audit_retention: 90 * 86_400,
            trusted_proxies: Vec::new(),
            mcp: McpConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            registration: RegistrationConfig::default(),
            client_metadata: ClientMetadataConfig::default(),
            keys_passphrase: None,
            key_rotation: KeyRotationConfig::default(),
            password_hashing: PasswordHashingConfig::default(),
            upstreams: Vec::new(),
            local_login: true,
            identity_providers: Vec::new(),
            api_tokens: ApiTokensConfig::default(),
            log_format: LogFormat::Text,
            metrics_bind: None,
            metrics_token: None,
            connections: ConnectionsConfig::default(),
        }
    }
}

/// The validated registration policy.
#[derive(Debug, Clone)]
pub struct RegistrationPolicy {
    /// Registration open.
    pub enabled: bool,
    /// What redirect URIs may be registered.
    pub redirect: RedirectPolicy,
    /// Registrations per IP per hour.
    pub rate_limit_per_hour: NonZeroU32,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Age after which a never-used dynamic registration is deleted.
    pub unused_client_ttl: Option<Duration>,
    /// Scopes a dynamically registered client may hold for `client_credentials`; empty: that
    /// grant is for operator-added clients only.
    pub client_credentials_scopes: Vec<ScopeToken>,
}

/// A scope the server knows, with its consent-page description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeEntry {
    /// The scope token.
    pub name: ScopeToken,
    /// Its description.
    pub description: String,
    /// Narrower scopes it includes (directly).
    pub implies: Vec<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The issuer; also the origin of the MCP resource.
    pub issuer: Issuer,
    /// Listen address.
    pub bind: SocketAddr,
    /// Database.
    pub database: DatabaseUrl,
    /// Key directory.
    pub keys_dir: PathBuf,
    /// Product name for pages and PRM.
    pub product_name: String,
    /// Algorithm of new signing keys.
    pub signing_algorithm: SigningAlgorithm,
    /// Access-token lifetime.
    pub access_token_ttl: Duration,
    /// Refresh-token lifetime.
    pub refresh_token_ttl: Duration,
    /// Authorization-code lifetime.
    pub authorization_code_ttl: Duration,
    /// Refresh family lifetime.
    pub refresh_family_ttl: Duration,
    /// Grace window of a rotated refresh token.
    pub refresh_grace_period: Duration,
    /// Revocation sync interval.
    pub revocation_sync_interval: Duration,
    /// The scope catalog, in name order.
    pub scopes: Vec<ScopeEntry>,
    /// Scopes granted when none are requested.
    pub default_scopes: Vec<ScopeToken>,
    /// Role -> grantable scopes.
    pub roles: BTreeMap<String, Vec<ScopeToken>>,
    /// Allowed browser origins (ASCII serialization); empty allows all.
    pub allowed_origins: Vec<String>,
    /// Reverse proxies trusted to name the client address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Hosted clients' egress (`rate_limits.shared_egress`), validated.
    pub shared_egress: Vec<ipnet::IpNet>,
    /// The MCP endpoint's settings (validated).
    pub mcp: McpConfig,
    /// Per-IP budgets of the other endpoints.
    pub rate_limits: RateLimitsConfig,
    /// Idle timeout of browser sessions.
    pub session_idle_timeout: Duration,
    /// Absolute timeout of browser sessions.
    pub session_absolute_timeout: Duration,
    /// How long audit events are kept; `None` keeps them forever.
    pub audit_retention: Option<Duration>,
    /// Dynamic registration policy.
    pub registration: RegistrationPolicy,
    /// Client ID Metadata Documents.
    pub client_metadata: ClientMetadataConfig,
    /// Passphrase sealing the private signing keys, if any.
    pub keys_passphrase: Option<Passphrase>,
    /// Signing-key rotation.
    pub key_rotation: KeyRotation,
    /// The password-checking threads and their queue.
    pub password_hashing: PasswordHashingConfig,
    /// The upstream MCP servers of gateway mode, checked.
    pub upstreams: Vec<Upstream>,
    /// Sign-in with a Gatehouse password.
    pub local_login: bool,
    /// Identity providers, checked, in the order written.
    pub identity_providers: Vec<IdentityProvider>,
    /// API token lifetimes.
    pub api_tokens: ApiTokensConfig,
    /// The log's format.
    pub log_format: LogFormat,
    /// The metrics listener's address, if any.
    pub metrics_bind: Option<SocketAddr>,
    /// The bearer secret of `/metrics` on the public listener, if it is served there.
    pub metrics_token: Option<Passphrase>,
    /// The socket edge of every listener.
    pub connections: ConnectionsConfig,
    /// Development defaults in force, one human-readable line each (logged loudly at start).
    pub development_defaults: Vec<String>,
}

/// Every problem found in the configuration, one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "configuration error: {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Loads the configuration the way `gatehouse` commands do: `file` if given (it must exist),
    /// else `./gatehouse.toml` if present; then the `GATEHOUSE_*` environment on top.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigErrors> {
        let mut figment = Figment::new();
        match file {
            Some(path) => {
                if !path.is_file() {
                    return Err(ConfigErrors(vec![format!(
                        "config file {} does not exist or is not a file",
                        path.display()
                    )]));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).is_file() {
                    figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
                }
            }
        }
        // `GATEHOUSE_CONFIG` names the file itself; it is not a setting.
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));
        Self::from_figment(&figment)
    }

    /// Extracts and validates from an assembled figment (tests build one from a TOML string).
    ///
    /// Unknown top-level keys are reported one line each (with where they came from) and set
    /// aside, so that the other settings are still checked and every problem shows in one run.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigErrors> {
        let mut problems = unknown_keys(figment);
        let known = Figment::from(KnownKeysOnly(figment));
        let raw: RawConfig = match known.extract() {
            Ok(raw) => raw,
            Err(err) => {
                problems.extend(err.into_iter().map(|e| {
                    let key = e.path.join(".");
                    format!("`{key}`{}: {}", source_of(figment, &key), e.kind)
                }));
                return Err(ConfigErrors(problems));
            }
        };
        let provided = |key: &str| figment.contains(key);
        match Self::validate(raw, &provided) {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(ConfigErrors(problems)),
            Err(ConfigErrors(more)) => {
                problems.extend(more);
                Err(ConfigErrors(problems))
            }
        }
    }

    /// The scopes `user`'s roles allow, each once, in the order of the roles and the catalog.
    pub fn grantable(&self, user: &crate::domain::User) -> Vec<String> {
        self.grantable_by_roles(&user.roles)
    }

    /// The scopes `roles` allow, each once, in the order of the roles and the catalog.
    pub fn grantable_by_roles(&self, roles: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for role in roles {
            for scope in self.roles.get(role).into_iter().flatten() {
                if !out.iter().any(|s| s == scope.as_str()) {
                    out.push(scope.as_str().to_owned());
                }
            }
        }
        out
    }

    /// The MCP resource identifier (RFC 8707, RFC 9728 `resource`): exactly `{issuer}/mcp`.
    pub fn resource(&self) -> String {
        self.issuer.url(crate::routes::MCP)
    }

    /// How long after its expiry the MCP endpoint still accepts an access token
    /// (`mcp.clock_leeway`): revocations must be remembered that much longer.
    pub fn leeway(&self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.mcp.clock_leeway).unwrap_or(300))
    }

    /// The scope catalog's names, in order.
    pub fn scope_names(&self) -> Vec<&str> {
        self.scopes.iter().map(|s| s.name.as_str()).collect()
    }

    /// A configuration for tests and examples: loopback issuer, the given database and keys.
    pub fn for_tests(
        issuer: &str,
        database_url: &str,
        keys_dir: &Path,
    ) -> Result<Self, ConfigErrors> {
        let raw = RawConfig {
            issuer: Some(issuer.to_owned()),
            database_url: database_url.to_owned(),
            keys_dir: keys_dir.to_owned(),
            ..RawConfig::default()
        };
        Self::validate(raw, &|_| true)
    }
}

/// The top-level keys [`RawConfig`] accepts.
fn known_keys() -> Vec<String> {
    match serde_json::to_value(RawConfig::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Settings that existed once, with why they went: an older configuration that still sets one
/// is told that, not merely that the key is unknown.
const REMOVED_KEYS: &[(&str, &str)] = &[(
    "code_replay_window",
    "an authorization code is now used once only, and a second redemption revokes what the first issued (RFC 6749 §4.1.2); delete the setting",
)];

/// One line per top-level key that is not a setting, naming its source (file or variable).
fn unknown_keys(figment: &Figment) -> Vec<String> {
    let known = known_keys();
    let Ok(data) = figment.data() else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for dict in data.values() {
        for key in dict.keys().filter(|k| !known.contains(k)) {
            let source = source_of(figment, key);
            lines.push(match REMOVED_KEYS.iter().find(|(name, _)| name == key) {
                Some((_, why)) => format!("setting `{key}`{source} was removed: {why}"),
                None => format!(
                    "unknown setting `{key}`{source}; the settings are: {}",
                    known.join(", ")
                ),
            });
        }
    }
    lines
}

/// Where a key's value came from, as ` (in TOML file F)` or ` (environment variable V)`.
fn source_of(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map(|m| match &m.source {
            Some(source) => format!(" (in {} {source})", m.name),
            // Only the environment has no source file.
            None => format!(
                " (environment variable {ENV_PREFIX}{})",
                key.replace('.', "__").to_uppercase()
            ),
        })
        .unwrap_or_default()
}

/// A view of a figment without its unknown top-level keys.
struct KnownKeysOnly<'a>(&'a Figment);

impl Provider for KnownKeysOnly<'_> {
    fn metadata(&self) -> Metadata {
        Metadata::named("configuration")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let known = known_keys();
        let mut data = self.0.data()?;
        for dict in data.values_mut() {
            dict.retain(|k, _| known.contains(k));
        }
        Ok(data)
    }
}

/// Checks a browser origin (`scheme://host[:port]`) and returns its ASCII serialization.
fn parse_origin(raw: &str) -> Result<String, String> {
    let url = Url::parse(raw).map_err(|e| format!("{raw:?} is not an origin URL ({e})"))?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.path() == "/"
        && !raw.ends_with('/')
        && url.query().is_none()
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none();
    if !plain {
        return Err(format!(
            "{raw:?} must be an origin like https://app.example.com (scheme, host and optional port only)"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(toml: &str) -> Result<Config, ConfigErrors> {
        Config::from_figment(&Figment::from(Toml::string(toml)))
    }

    #[test]
    fn empty_configuration_is_a_loopback_development_server() {
        let config = from_toml("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.issuer.as_str(), "http://127.0.0.1:8080");
        assert_eq!(config.resource(), "http://127.0.0.1:8080/mcp");
        assert_eq!(config.access_token_ttl, Duration::seconds(3600));
        assert_eq!(config.refresh_token_ttl, Duration::days(30));
        assert_eq!(config.authorization_code_ttl, Duration::seconds(60));
        assert_eq!(
            config.development_defaults.len(),
            3,
            "{:?}",
            config.development_defaults
        );
    }

    #[test]
    fn every_problem_is_reported_on_its_own_line() {
        let err = from_toml(
            r#"
            issuer = "http://auth.example.com/"
            database_url = "mysql://x"
            access_token_ttl = 0
            default_scopes = ["nope"]
            "#,
        )
        .expect_err("invalid");
        assert_eq!(err.0.len(), 4, "{err}");
        assert!(err.0.iter().all(|l| !l.contains('\n')));
    }

    #[test]
    fn unknown_keys_do_not_hide_other_problems() {
        let err = from_toml("isuer = \"x\"\nbogus = 1\nissuer = \"https://a.example/\"")
            .expect_err("invalid");
        assert_eq!(err.0.len(), 3, "{err}");
        assert!(
            err.0[0].contains("`isuer`") || err.0[1].contains("`isuer`"),
            "{err}"
        );
        assert!(err.0.iter().all(|l| !l.contains('\n')));
    }

    /// Out-of-range rotation settings are refused with a line each, never a panic or an
    /// overflowed bound (a huge interval used to panic the key-maintenance task).
    #[test]
    fn key_rotation_bounds_are_checked_without_overflow() {
        let err = from_toml(
            "[key_rotation]\ninterval = 9223372036854775807\ncheck_interval = 9223372036854775807",
        )
        .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("key_rotation.interval"), "{text}");
        assert!(text.contains("key_rotation.check_interval"), "{text}");
        let err = from_toml("[key_rotation]\ninterval = 31622401").expect_err("over a year");
        assert!(err.to_string().contains("31622400"), "{err}");
        let config =
            from_toml("[key_rotation]\ninterval = 31622400").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.key_rotation.interval,
            Some(Duration::seconds(31_622_400))
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = from_toml("isuer = \"https://a.example\"").expect_err("unknown key");
        assert!(err.to_string().contains("isuer"), "{err}");
    }

    /// An older configuration that still sets a removed key is told why it went.
    #[test]
    fn a_removed_key_says_why() {
        let err = from_toml("code_replay_window = 10").expect_err("removed key");
        let text = err.to_string();
        assert!(
            text.contains("`code_replay_window`")
                && text.contains("was removed")
                && text.contains("used once"),
            "{text}"
        );
    }

    #[test]
    fn offline_access_cannot_enter_the_catalog() {
        let err = from_toml("[scopes.offline_access]\ndescription = \"x\"").expect_err("refused");
        assert!(err.to_string().contains("offline_access"), "{err}");
    }

    #[test]
    fn origins_are_canonicalised_and_checked() {
        let config = from_toml("allowed_origins = [\"https://App.Example.com\"]")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.allowed_origins, vec!["https://app.example.com"]);
        let err =
            from_toml("allowed_origins = [\"https://app.example.com/path\"]").expect_err("path");
        assert!(err.to_string().contains("allowed_origins"), "{err}");
    }
}
