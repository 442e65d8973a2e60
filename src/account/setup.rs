//! First run: a one-time link (`/setup?token=...`) opens a page that creates the first admin.
//!
//! While the database has no user and password sign-in is on, `serve` logs a link at start and
//! `gatehouse setup-link` prints one. A link carries a 256-bit secret, of which only the SHA-256
//! is kept; it works once, within [`LINK_TTL`], and only while there is still no user. A new
//! link replaces the earlier ones (a restart logs a new one), and using one deletes every link
//! in the transaction that adds the admin, so two links used at the same moment make one admin.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower_sessions::Session;

use super::login::begin_session;
use super::session::{SessionData, tokens_match};
use crate::audit::{self, AuditEvent};
use crate::config::Config;
use crate::domain::{Secret, User, Username};
use crate::oauth::error::AuthorizeError;
use crate::pages::{self, SetupPage};
use crate::routes;
use crate::state::AppState;
use crate::store::{FirstAdmin, Store};
use crate::web::ClientIp;

/// How long a setup link works.
pub const LINK_TTL: Duration = Duration::hours(1);

/// A new setup link for `config`'s server, or `None` when there is no use for one: someone can
/// already sign in, or password sign-in is off (the first admin then comes from an identity
/// provider's rules, or from `gatehouse users add`).
pub async fn new_link(
    config: &Config,
    store: &Store,
    now: OffsetDateTime,
) -> anyhow::Result<Option<String>> {
    if !config.local_login || store.has_users().await? {
        return Ok(None);
    }
    let secret =
        Secret::generate().map_err(|_| anyhow::anyhow!("random number generator failed"))?;
    store
        .add_setup_link(&secret.hash(), now, now + LINK_TTL)
        .await?;
    Ok(Some(format!(
        "{}{}?token={}",
        config.issuer,
        routes::SETUP,
        secret.expose()
    )))
}

/// `?token=` of the setup page.
#[derive(Deserialize)]
pub struct SetupQuery {
    #[serde(default)]
    token: String,
}

impl std::fmt::Debug for SetupQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SetupQuery(<redacted>)")
    }
}

/// The setup form.
#[derive(Deserialize)]
pub struct SetupForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password_again: String,
}

impl std::fmt::Debug for SetupForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetupForm")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The answer to a link that cannot be used: one page whether it is unknown, expired or used,
/// or someone can already sign in.
fn not_valid(product: &str) -> Response {
    pages::error(
        product,
        StatusCode::NOT_FOUND,
        "This setup link does not work",
        "It was used already, it expired (links work for an hour), or this server is set up.",
        "Sign in, or ask the operator for a new link: gatehouse setup-link.",
    )
}

/// Whether the link `token` would create the first admin now.
async fn open(state: &AppState, token: &str, now: OffsetDateTime) -> Result<bool, AuthorizeError> {
    if !state.config.local_login || token.is_empty() || token.len() > 128 {
        return Ok(false);
    }
    Ok(state
        .store
        .setup_link_open(&Secret::presented(token).hash(), now)
        .await?)
}

async fn form_page(
    state: &AppState,
    session: &Session,
    mut data: SessionData,
    token: &str,
    username: &str,
    error: Option<(StatusCode, &str)>,
) -> Result<Response, AuthorizeError> {
    let csrf = data.form_csrf()?;
    data.save(session).await?;
    let (status, error) = match error {
        Some((status, message)) => (status, Some(message.to_owned())),
        None => (StatusCode::OK, None),
    };
    Ok(pages::render(
        status,
        &SetupPage {
            product: state.config.product_name.clone(),
            csrf,
            token: token.to_owned(),
            username: username.to_owned(),
            error,
            done_mcp_url: None,
        },
    ))
}

/// The form again, refused with `status` and `message`, keeping the name typed.
async fn refused(
    state: &AppState,
    session: &Session,
    data: SessionData,
    form: &SetupForm,
    status: StatusCode,
    message: &str,
) -> Result<Response, AuthorizeError> {
    let error = Some((status, message));
    form_page(state, session, data, &form.token, &form.username, error).await
}

/// `GET /setup?token=...`
pub async fn setup_get(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<SetupQuery>,
) -> Response {
    let product = state.config.product_name.clone();
    let result = async {
        let now = state.clock.now();
        if !open(&state, &q.token, now).await? {
            return Ok(not_valid(&product));
        }
        let data = SessionData::load(&session, now, state.config.session_absolute_timeout).await?;
        form_page(&state, &session, data, &q.token, "", None).await
    }
    .await;
    result.unwrap_or_else(|e: AuthorizeError| e.into_response_for(&product))
}

/// `POST /setup`
pub async fn setup_post(
    State(state): State<AppState>,
    session: Session,
    ClientIp(ip): ClientIp,
    form: Result<Form<SetupForm>, FormRejection>,
) -> Response {
    let product = state.config.product_name.clone();
    let Ok(Form(form)) = form else {
        return pages::error(
            &product,
            StatusCode::BAD_REQUEST,
            "Invalid setup form",
            "The setup form was incomplete.",
            "Open the setup link again and fill in the form.",
        );
    };
    setup(&state, &session, ip, form)
        .await
        .unwrap_or_else(|e| e.into_response_for(&product))
}

async fn setup(
    state: &AppState,
    session: &Session,
    ip: Option<std::net::IpAddr>,
    form: SetupForm,
) -> Result<Response, AuthorizeError> {
    let product = &state.config.product_name;
    let now = state.clock.now();
    // The link first: without a working one, nothing else is looked at (and no password is
    // hashed).
    if !open(state, &form.token, now).await? {
        return Ok(not_valid(product));
    }
    let mut data = SessionData::load(session, now, state.config.session_absolute_timeout).await?;
    if !tokens_match(data.form_csrf.as_deref().unwrap_or(""), &form.csrf) {
        let message = "The form expired. Please fill it in again.";
        return refused(state, session, data, &form, StatusCode::FORBIDDEN, message).await;
    }
    let username = match Username::parse(form.username.trim()) {
        Ok(name) => name,
        Err(e) => {
            let message = format!("That user name does not work: {e}.");
            return refused(
                state,
                session,
                data,
                &form,
                StatusCode::BAD_REQUEST,
                &message,
            )
            .await;
        }
    };
    let hash = match new_password_hash(&form.password, &form.password_again).await? {
        Ok(hash) => hash,
        Err(message) => {
            let status = StatusCode::BAD_REQUEST;
            return refused(state, session, data, &form, status, &message).await;
        }
    };
    let roles = first_admin_roles(&state.config);
    let id = User::new_id()
        .map_err(|_| AuthorizeError::Internal("random number generator failed".to_owned()))?;
    let user = User::new(id, username, hash, roles.clone(), now);
    let link = Secret::presented(&form.token).hash();
    match state.store.first_admin(&link, &user, now).await? {
        FirstAdmin::Created => {}
        FirstAdmin::LinkNotValid | FirstAdmin::AlreadySetUp => return Ok(not_valid(product)),
    }
    let mut event = AuditEvent::new(
        "user.added",
        now,
        json!({ "username": user.username.as_str(), "roles": roles, "by": "setup link" }),
    );
    event.subject = Some(user.id.clone());
    event.ip = ip.map(|i| i.to_string());
    audit::record_after_commit(&state.store, event).await;
    tracing::info!(username = %user.username, "the first admin was created through a setup link");
    begin_session(session, &mut data, &user, now).await?;
    Ok(pages::render(
        StatusCode::OK,
        &SetupPage {
            product: product.clone(),
            csrf: String::new(),
            token: String::new(),
            username: user.username.as_str().to_owned(),
            error: None,
            done_mcp_url: Some(state.config.resource()),
        },
    ))
}

/// The hash of a new password typed twice, or what is wrong with it (for the form).
pub(super) async fn new_password_hash(
    password: &str,
    again: &str,
) -> Result<Result<String, String>, AuthorizeError> {
    if password != again {
        return Ok(Err("The two passwords differ.".to_owned()));
    }
    match crate::password::hash(password.to_owned()).await {
        Ok(hash) => Ok(Ok(hash)),
        Err(crate::password::PasswordError::Length) => Ok(Err(format!(
            "The password must be {} to {} characters long.",
            crate::password::MIN_LEN,
            crate::password::MAX_LEN
        ))),
        Err(e) => Err(AuthorizeError::Internal(e.to_string())),
    }
}

/// The first admin's roles: the admin role, and `user` too when it is configured (the admin is
/// also a person who connects applications).
fn first_admin_roles(config: &Config) -> Vec<String> {
    let mut roles = vec![config.mcp.admin_role.clone()];
    if config.roles.contains_key("user") && !roles.iter().any(|r| r == "user") {
        roles.push("user".to_owned());
    }
    roles
}
