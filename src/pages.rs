//! The browser pages (askama templates in `templates/`), the headers every page of the flow
//! carries, and the stylesheet from `static/`.

use askama::Template;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

/// One scope as a page shows it.
#[derive(Debug, Clone)]
pub struct ScopeView {
    /// Its token.
    pub name: String,
    /// Its consent-page description.
    pub description: String,
}

/// The sign-in page.
#[derive(Debug, Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// Product name.
    pub product: String,
    /// Form CSRF token.
    pub csrf: String,
    /// Authorization request id (may be empty).
    pub request: String,
    /// The application the person is signing in to: a metadata-document client's verified host.
    pub app_name: Option<String>,
    /// The name a metadata-document client gives itself, shown second.
    pub claimed_name: Option<String>,
    /// The name typed last time (after a failure).
    pub username: String,
    /// What went wrong last time.
    pub error: Option<String>,
    /// Whether the password form is shown.
    pub local_login: bool,
    /// "Continue with ..." for each identity provider.
    pub providers: Vec<ProviderButton>,
}

/// A sign-in page's button for an identity provider.
#[derive(Debug, Clone)]
pub struct ProviderButton {
    /// Where it starts the sign-in (with the request in progress).
    pub href: String,
    /// The provider's display name.
    pub name: String,
}

/// The consent page.
#[derive(Debug, Template)]
#[template(path = "consent.html")]
pub struct ConsentPage {
    /// Product name.
    pub product: String,
    /// The headline: the host of a metadata-document client id (verified by fetching it), else
    /// the registered name, else the redirect host.
    pub app_name: String,
    /// The name a metadata document gives itself, shown second.
    pub claimed_name: Option<String>,
    /// Self-registered client: say so.
    pub unverified: bool,
    /// Every redirect goes to localhost: say so.
    pub loopback_only: bool,
    /// Where the browser goes next.
    pub redirect_host: String,
    /// Scopes not allowed before.
    pub new_scopes: Vec<ScopeView>,
    /// Scopes allowed before.
    pub kept_scopes: Vec<ScopeView>,
    /// Who is signed in.
    pub username: String,
    /// The request's consent CSRF token.
    pub csrf: String,
    /// Authorization request id.
    pub request: String,
}

/// An error page: what happened and what to do next.
#[derive(Debug, Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// Product name.
    pub product: String,
    /// Heading.
    pub title: String,
    /// What happened.
    pub message: String,
    /// What the person can do.
    pub hint: String,
}

/// A plain message (signed in, signed out).
#[derive(Debug, Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    /// Product name.
    pub product: String,
    /// Heading.
    pub title: String,
    /// Text.
    pub message: String,
    /// When set, a sign-out button with this CSRF token.
    pub logout_csrf: Option<String>,
}

/// First run (`/setup`): the form that creates the first admin, or, once done, where to go next.
#[derive(Debug, Template)]
#[template(path = "setup.html")]
pub struct SetupPage {
    /// Product name.
    pub product: String,
    /// The form's CSRF token (empty once done).
    pub csrf: String,
    /// The setup link's secret, carried by the form.
    pub token: String,
    /// The name typed last time (after a refusal), or the new admin's name once done.
    pub username: String,
    /// Why the last try was refused.
    pub error: Option<String>,
    /// Once done: the URL to paste into an MCP client (`{issuer}/mcp`).
    pub done_mcp_url: Option<String>,
}

/// A reset link's page (`/reset`): the person chooses their password.
#[derive(Debug, Template)]
#[template(path = "reset.html")]
pub struct ResetPage {
    /// Product name.
    pub product: String,
    /// The form's CSRF token.
    pub csrf: String,
    /// The link's secret, carried by the form.
    pub token: String,
    /// Whose password it sets.
    pub username: String,
    /// Why the last try was refused.
    pub error: Option<String>,
}

/// The admin console (`/admin`): one template, one section shown at a time.
#[derive(Debug, Template)]
#[template(path = "admin.html")]
pub struct AdminPage {
    /// Product name.
    pub product: String,
    /// The signed-in admin.
    pub username: String,
    /// `users`, `clients`, `keys` or `audit`.
    pub section: &'static str,
    /// The forms' CSRF token.
    pub csrf: String,
    /// What the last action did.
    pub notice: Option<String>,
    /// Why the last action was refused.
    pub problem: Option<String>,
    /// A one-time link shown once: whose, and the link.
    pub shown_link: Option<(String, String)>,
    /// The configured roles.
    pub roles: Vec<String>,
    /// Users section.
    pub users: Vec<AdminUserRow>,
    /// Clients section.
    pub clients: Vec<AdminClientRow>,
    /// Keys section: the keys.
    pub keys: Vec<AdminKeyRow>,
    /// Keys section: the schedule's next steps, in words.
    pub steps: Vec<String>,
    /// Upstreams section (gateway mode).
    pub upstreams: Vec<AdminUpstreamRow>,
    /// Audit section: one page of events.
    pub events: Vec<AdminEventRow>,
    /// Audit section: the filter shown in the form.
    pub filter: AuditFilterView,
    /// Audit section: the next (older) page, if any.
    pub next_page: Option<String>,
    /// Audit section: the export of what the filter lets through, as JSON lines.
    pub export_href: String,
}

/// A user as the admin console lists them.
#[derive(Debug, Clone)]
pub struct AdminUserRow {
    /// Their id.
    pub id: String,
    /// Their name.
    pub name: String,
    /// Every configured role, and whether an admin granted it to them.
    pub roles: Vec<(String, bool)>,
    /// The roles their identity provider grants them (re-evaluated at each sign-in through it;
    /// not edited here), comma-separated, or empty.
    pub provider_roles: String,
    /// Created, how they sign in.
    pub meta: String,
    /// Locked by an admin.
    pub locked: bool,
    /// The admin looking at the page.
    pub is_self: bool,
}

/// A client as the admin console lists it.
#[derive(Debug, Clone)]
pub struct AdminClientRow {
    /// `client_id`.
    pub id: String,
    /// Its name (as registered; never trusted for anything).
    pub name: String,
    /// How it became known.
    pub kind: String,
    /// Redirect hosts, created and last used.
    pub meta: String,
}

/// A signing key as the admin console lists it.
#[derive(Debug, Clone)]
pub struct AdminKeyRow {
    /// `kid`.
    pub kid: String,
    /// Algorithm.
    pub alg: String,
    /// State.
    pub state: String,
    /// Created, signs from, retire after or retired.
    pub meta: String,
    /// Not retired yet.
    pub retirable: bool,
}

/// An upstream MCP server (gateway mode) as the admin console lists it.
#[derive(Debug, Clone)]
pub struct AdminUpstreamRow {
    /// Its name (the prefix of its tools).
    pub name: String,
    /// Transport, protocol, tools, colliding names.
    pub meta: String,
    /// Its live sessions, one line each.
    pub sessions: Vec<String>,
    /// The result of a check just made: reachable (with its tools) or why not.
    pub check: Option<(bool, String)>,
}

/// An audit event as the admin console lists it.
#[derive(Debug, Clone)]
pub struct AdminEventRow {
    /// When.
    pub at: String,
    /// Kind.
    pub kind: String,
    /// Whether it was a failure.
    pub failed: bool,
    /// Who and what: user, client, address.
    pub who: String,
    /// The detail, as JSON.
    pub detail: String,
}

/// The audit filter as its form shows it.
#[derive(Debug, Clone, Default)]
pub struct AuditFilterView {
    /// User name.
    pub user: String,
    /// Client id.
    pub client: String,
    /// Kind (or its prefix).
    pub kind: String,
    /// `success`, `failure` or empty.
    pub outcome: String,
    /// From this day (YYYY-MM-DD).
    pub since: String,
    /// Through this day (YYYY-MM-DD).
    pub until: String,
}

/// The person's own page (`/account`).
#[derive(Debug, Template)]
#[template(path = "account.html")]
pub struct AccountPage {
    /// Product name.
    pub product: String,
    /// Who is signed in.
    pub username: String,
    /// What the last action did.
    pub notice: Option<String>,
    /// Why the last action was refused.
    pub problem: Option<String>,
    /// The account has a password.
    pub has_password: bool,
    /// Linked provider accounts.
    pub identities: Vec<IdentityView>,
    /// Providers another account can be linked from.
    pub providers: Vec<ProviderView>,
    /// Applications the person connected.
    pub apps: Vec<AppView>,
    /// Their API tokens.
    pub tokens: Vec<TokenView>,
    /// Scopes a new token may carry.
    pub token_scopes: Vec<String>,
    /// Lifetimes a new token may get: (value, label, preselected).
    pub lifetimes: Vec<(String, String, bool)>,
    /// A token just created, shown this once.
    pub new_token: Option<String>,
    /// The forms' CSRF token.
    pub csrf: String,
}

/// A linked provider account as the account page shows it.
#[derive(Debug, Clone)]
pub struct IdentityView {
    /// The provider's id (a form field).
    pub provider: String,
    /// Its display name (or the id of a provider no longer configured).
    pub provider_name: String,
    /// The issuer (a form field).
    pub issuer: String,
    /// The subject (a form field).
    pub subject: String,
    /// The email, or the subject when there is none.
    pub account: String,
    /// The date it was linked.
    pub linked_at: String,
    /// "last used ..." or "not used yet".
    pub last_used: String,
}

/// A connected application as the account page shows it.
#[derive(Debug, Clone)]
pub struct AppView {
    /// Its client id (a form field).
    pub client_id: String,
    /// Its headline: the verified host of a metadata-document client, else its registered name.
    pub name: String,
    /// How far the name can be trusted.
    pub source: String,
    /// The scopes allowed, space-separated.
    pub scopes: String,
    /// The date it was allowed.
    pub granted_at: String,
    /// "last used ..." or "no tokens now".
    pub last_used: String,
}

/// An API token as the account page shows it (never its secret).
#[derive(Debug, Clone)]
pub struct TokenView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its scopes, space-separated.
    pub scopes: String,
    /// "created ..., last used ..., expires ..." or its end.
    pub dates: String,
    /// Whether it still works (and can be revoked).
    pub live: bool,
}

/// A configured provider the person can link an account from.
#[derive(Debug, Clone)]
pub struct ProviderView {
    /// Its id (in the form's path).
    pub id: String,
    /// Its display name.
    pub name: String,
}

/// Renders a page with `status`; a render failure is logged and a generic page is shown.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<!doctype html><title>Error</title><p>Something went wrong. Please try again.</p>"),
            )
                .into_response()
        }
    }
}

/// An error page with `status`.
pub fn error(
    product: &str,
    status: StatusCode,
    title: &str,
    message: &str,
    hint: &str,
) -> Response {
    render(
        status,
        &ErrorPage {
            product: product.to_owned(),
            title: title.to_owned(),
            message: message.to_owned(),
            hint: hint.to_owned(),
        },
    )
}

/// Content-Security-Policy of every page: no script at all, styles only from this origin, no
/// framing (RFC 9700 §4.16). No `form-action`: browsers apply it to the redirect that follows the
/// consent form, which goes to the client's own site.
const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Middleware for every page of the flow (and its redirects): CSP, no framing, no referrer, no
/// caching.
pub async fn harden(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /static/gatehouse.css`, compiled into the binary.
pub async fn stylesheet_get() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        include_str!("../static/gatehouse.css"),
    )
        .into_response()
}
