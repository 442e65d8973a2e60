//! The admin console (`/admin`), for signed-in people with the admin role (`mcp.admin_role`):
//! users (`users.rs`), clients and signing keys (`system.rs`), the audit log (`audit.rs`).
//!
//! Every page and action first checks the session's user: nobody signed in is sent to the
//! sign-in page, anyone without the role gets 403, for a page and an action alike. Every form
//! carries the session's CSRF token; every action is audited with the admin who did it.
//! Actions answer with a redirect back to their page (`?notice=`), except those that show a
//! secret once (a new user's or a reset link), which render the page with it.

pub mod audit;
pub mod system;
pub mod users;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;
use tower_sessions::Session;

use crate::account::session::{SessionData, tokens_match};
use crate::audit::AuditEvent;
use crate::domain::User;
use crate::oauth::authorize::current_user;
use crate::oauth::error::AuthorizeError;
use crate::pages::{self, AdminPage};
use crate::routes;
use crate::state::AppState;

/// The signed-in admin behind a request, with their session. As an extractor it is the check
/// every page starts with: a request from anyone else is answered before the handler runs (the
/// sign-in page for nobody, 403 for a person without the admin role), so no route can forget it.
#[derive(Debug)]
pub struct Admin {
    /// The signed-in admin.
    pub user: User,
    /// The session's data (its form token).
    pub data: SessionData,
    /// The session, to save the form token a page made.
    pub session: Session,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let product = &state.config.product_name;
        let data = SessionData::load(
            &session,
            state.clock.now(),
            state.config.session_absolute_timeout,
        )
        .await
        .map_err(|e| AuthorizeError::from(e).into_response_for(product))?;
        let user = current_user(state, &data)
            .await
            .map_err(|e| e.into_response_for(product))?;
        let Some(user) = user else {
            return Err(Redirect::to(routes::LOGIN).into_response());
        };
        if !is_admin(state, &user) {
            return Err(pages::error(
                product,
                StatusCode::FORBIDDEN,
                "Admins only",
                &format!(
                    "You are signed in as {}, who does not have the {} role.",
                    user.username, state.config.mcp.admin_role
                ),
                "Ask an admin of this server if you need it.",
            ));
        }
        Ok(Self {
            user,
            data,
            session,
        })
    }
}

/// An admin's action: the admin (checked as for a page) and the posted form, whose CSRF token
/// is the session's. A form without it is answered 403 before the handler runs; nothing is done.
#[derive(Debug)]
pub struct Action {
    /// Who acts.
    pub admin: Admin,
    /// The posted fields.
    pub fields: Fields,
}

impl FromRequest<AppState> for Action {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let admin = Admin::from_request_parts(&mut parts, state).await?;
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let fields = Fields::parse(&body);
        let expected = admin.data.form_csrf.as_deref().unwrap_or("");
        if !tokens_match(expected, fields.get("csrf")) {
            return Err(pages::error(
                &state.config.product_name,
                StatusCode::FORBIDDEN,
                "The form expired",
                "Nothing was changed.",
                "Go back, reload the page and try again.",
            ));
        }
        Ok(Self { admin, fields })
    }
}

/// A handler's result as its response: an error is the error page.
pub fn answer(state: &AppState, result: Result<Response, AuthorizeError>) -> Response {
    result.unwrap_or_else(|e| e.into_response_for(&state.config.product_name))
}

/// Whether `user` has the admin role.
pub fn is_admin(state: &AppState, user: &User) -> bool {
    user.roles.iter().any(|r| *r == state.config.mcp.admin_role)
}

/// A posted form's fields, in order; a name may repeat (the role checkboxes).
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    /// Reads an `application/x-www-form-urlencoded` body.
    pub fn parse(body: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// An admin action's audit event: `kind`, by `admin`, with `detail` (which names the admin).
pub fn event(
    admin: &User,
    kind: &str,
    now: time::OffsetDateTime,
    detail: serde_json::Value,
) -> AuditEvent {
    let mut detail = detail;
    detail["by"] = json!(admin.username.as_str());
    detail["admin_id"] = json!(admin.id);
    AuditEvent::new(kind, now, detail)
}

/// The page skeleton every section fills in.
pub fn page(
    state: &AppState,
    admin: &mut Admin,
    section: &'static str,
) -> Result<AdminPage, AuthorizeError> {
    Ok(AdminPage {
        product: state.config.product_name.clone(),
        username: admin.user.username.as_str().to_owned(),
        section,
        csrf: admin.data.form_csrf()?,
        notice: None,
        problem: None,
        shown_link: None,
        roles: state.config.roles.keys().cloned().collect(),
        users: Vec::new(),
        clients: Vec::new(),
        keys: Vec::new(),
        steps: Vec::new(),
        upstreams: Vec::new(),
        events: Vec::new(),
        filter: pages::AuditFilterView::default(),
        next_page: None,
        export_href: String::new(),
    })
}

/// Renders `page` with 200, saving the session first (its form token may be new).
pub async fn render(admin: &Admin, page: &AdminPage) -> Result<Response, AuthorizeError> {
    admin.data.save(&admin.session).await?;
    Ok(pages::render(StatusCode::OK, page))
}

/// `Redirect` to `path` with `?notice=code` (303: the browser follows with a GET).
pub fn back(path: &str, code: &str) -> Response {
    Redirect::to(&format!("{path}?notice={code}")).into_response()
}

/// The words of a `?notice=` code, for the fixed set the actions use.
pub fn notice_text(code: &str) -> Option<(&'static str, bool)> {
    // (text, whether it is a problem)
    Some(match code {
        "locked" => (
            "The user is locked: signed out everywhere, their applications disconnected.",
            false,
        ),
        "unlocked" => ("The user is unlocked and can sign in again.", false),
        "roles" => (
            "Roles saved. Their applications get the new scopes at their next refresh.",
            false,
        ),
        "removed" => ("The user is removed, with their grants and tokens.", false),
        "client-removed" => (
            "The client is removed; its grants and tokens are revoked.",
            false,
        ),
        "rotated" => (
            "A new signing key is published; it signs once the publish lead has passed.",
            false,
        ),
        "retired" => (
            "The key is retired: tokens it signed no longer verify.",
            false,
        ),
        "self" => (
            "You cannot lock, remove or take the admin role from yourself here.",
            true,
        ),
        "not-confirmed" => (
            "Not confirmed: type the name exactly to confirm. Nothing changed.",
            true,
        ),
        "unknown-role" => ("That role is not configured. Nothing changed.", true),
        "no-password-sign-in" => (
            "Password sign-in is off on this server (local_login = false): people sign in through an identity provider, so there is no password to choose.",
            true,
        ),
        "no-such-user" => ("There is no such user (removed meanwhile?).", true),
        "no-such-client" => ("There is no such client (removed meanwhile?).", true),
        "checked" => ("Each upstream was contacted just now.", false),
        "key-refused" => (
            "The key could not be changed; see the message in the server log.",
            true,
        ),
        _ => return None,
    })
}

/// Sets a page's notice from `?notice=`.
pub fn with_notice(page: &mut AdminPage, code: &str) {
    if let Some((text, problem)) = notice_text(code) {
        if problem {
            page.problem = Some(text.to_owned());
        } else {
            page.notice = Some(text.to_owned());
        }
    }
}
