//! Every path the server answers. The discovery documents are built from these same constants,
//! so an advertised URL cannot drift from a served one.

/// RFC 8414 authorization-server metadata.
pub const AS_METADATA: &str = "/.well-known/oauth-authorization-server";
/// OpenID Connect discovery (answered 404: Gatehouse issues no ID tokens).
pub const OPENID_CONFIGURATION: &str = "/.well-known/openid-configuration";
/// RFC 9728 Protected Resource Metadata, root form.
pub const PRM: &str = "/.well-known/oauth-protected-resource";
/// RFC 9728 Protected Resource Metadata for the `/mcp` resource (path form).
pub const PRM_MCP: &str = "/.well-known/oauth-protected-resource/mcp";
/// The public JWK set.
pub const JWKS: &str = "/jwks.json";
/// Authorization endpoint (RFC 6749 §3.1).
pub const AUTHORIZE: &str = "/authorize";
/// The sign-in page.
pub const LOGIN: &str = "/login";
/// Sign-in through identity provider `{id}`: sends the browser there.
pub const PROVIDER_LOGIN: &str = "/login/provider/{id}";
/// Where identity provider `{id}` sends the browser back (its registered redirect URI).
pub const PROVIDER_CALLBACK: &str = "/login/provider/{id}/callback";
/// The consent page.
pub const CONSENT: &str = "/consent";
/// Signing out.
pub const LOGOUT: &str = "/logout";
/// The person's own page: their ways to sign in.
pub const ACCOUNT: &str = "/account";
/// Links an account at identity provider `{id}` to the signed-in person (POST).
pub const ACCOUNT_LINK: &str = "/account/link/{id}";
/// Unlinks one of the person's provider accounts (POST).
pub const ACCOUNT_UNLINK: &str = "/account/unlink";
/// Disconnects an application the person connected (POST).
pub const ACCOUNT_DISCONNECT: &str = "/account/apps/disconnect";
/// Creates an API token (POST).
pub const ACCOUNT_TOKENS: &str = "/account/tokens";
/// Revokes an API token (POST).
pub const ACCOUNT_TOKEN_REVOKE: &str = "/account/tokens/revoke";
/// Ends every browser session of the person (POST).
pub const ACCOUNT_SIGN_OUT_EVERYWHERE: &str = "/account/sign-out-everywhere";
/// First run: the one-time link's page that creates the first admin.
pub const SETUP: &str = "/setup";
/// A password reset link's page.
pub const RESET: &str = "/reset";
/// The admin console: users (GET), and its actions (POST).
pub const ADMIN: &str = "/admin";
/// Adds a user (POST).
pub const ADMIN_USER_ADD: &str = "/admin/users/add";
/// Sets a user's roles (POST).
pub const ADMIN_USER_ROLES: &str = "/admin/users/roles";
/// Locks a user (POST).
pub const ADMIN_USER_LOCK: &str = "/admin/users/lock";
/// Unlocks a user (POST).
pub const ADMIN_USER_UNLOCK: &str = "/admin/users/unlock";
/// Removes a user (POST).
pub const ADMIN_USER_REMOVE: &str = "/admin/users/remove";
/// Makes a link where a user chooses a password (POST).
pub const ADMIN_USER_RESET_LINK: &str = "/admin/users/reset-link";
/// The admin console: clients.
pub const ADMIN_CLIENTS: &str = "/admin/clients";
/// Removes a client (POST).
pub const ADMIN_CLIENT_REMOVE: &str = "/admin/clients/remove";
/// The admin console: signing keys.
pub const ADMIN_KEYS: &str = "/admin/keys";
/// Publishes a new signing key (POST).
pub const ADMIN_KEYS_ROTATE: &str = "/admin/keys/rotate";
/// Retires a signing key (POST).
pub const ADMIN_KEYS_RETIRE: &str = "/admin/keys/retire";
/// The admin console: the upstream MCP servers of gateway mode.
pub const ADMIN_UPSTREAMS: &str = "/admin/upstreams";
/// Contacts every upstream now (POST).
pub const ADMIN_UPSTREAMS_CHECK: &str = "/admin/upstreams/check";
/// The admin console: the audit log.
pub const ADMIN_AUDIT: &str = "/admin/audit";
/// The audit log as JSON lines.
pub const ADMIN_AUDIT_EXPORT: &str = "/admin/audit/export";
/// The stylesheet of the pages.
pub const STYLESHEET: &str = "/static/gatehouse.css";
/// Token endpoint (RFC 6749 §3.2).
pub const TOKEN: &str = "/token";
/// Token revocation (RFC 7009).
pub const REVOKE: &str = "/revoke";
/// Token introspection (RFC 7662).
pub const INTROSPECT: &str = "/introspect";
/// Dynamic client registration (RFC 7591 §3).
pub const REGISTER: &str = "/register";
/// The MCP endpoint (Streamable HTTP); its resource identifier is `{issuer}/mcp`.
pub const MCP: &str = "/mcp";
/// Readiness, with what it rests on: 503 while the database does not answer or a stop drains.
pub const HEALTH: &str = "/health";
/// Liveness: 200 while the process answers, draining or not, database or not.
pub const HEALTH_LIVE: &str = "/health/live";
/// Readiness alone (as `/health`), for a load balancer that wants the word in the path.
pub const HEALTH_READY: &str = "/health/ready";
/// Prometheus metrics (on `metrics_bind`; on the public listener only with `metrics_token`).
pub const METRICS: &str = "/metrics";

/// `Cache-Control` of the public discovery documents and the JWK set (seconds). Claude caches
/// discovery for about five minutes anyway.
pub const PUBLIC_DOCUMENT_MAX_AGE: u64 = 300;
