//! Password reset links (`/reset?token=...`): an admin makes one for a person (instead of
//! typing a password for them); it opens a page where that person chooses their password.
//!
//! A link carries a 256-bit secret of which only the SHA-256 is kept, works once within
//! [`LINK_TTL`], and replaces the person's earlier links. Setting the password ends what the
//! old one let anyone start (browser sessions, grants), as `gatehouse users passwd` does.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use time::{Duration, OffsetDateTime};
use tower_sessions::Session;

use super::session::{SessionData, tokens_match};
use super::setup::new_password_hash;
use crate::audit::{self, AuditEvent};
use crate::config::Config;
use crate::domain::Secret;
use crate::oauth::error::AuthorizeError;
use crate::pages::{self, MessagePage, ResetPage};
use crate::routes;
use crate::state::AppState;
use crate::store::Store;
use crate::web::ClientIp;

/// How long a reset link works: a day, time to pass it on to its person.
pub const LINK_TTL: Duration = Duration::hours(24);

/// A new reset link for `user_id`; the user's earlier links stop working.
pub async fn new_link(
    config: &Config,
    store: &Store,
    user_id: &str,
    now: OffsetDateTime,
) -> anyhow::Result<String> {
    if !config.local_login {
        anyhow::bail!(
            "password sign-in is off (local_login = false): a password set through a link could not be used"
        );
    }
    let secret =
        Secret::generate().map_err(|_| anyhow::anyhow!("random number generator failed"))?;
    store
        .add_reset_link(&secret.hash(), user_id, now, now + LINK_TTL)
        .await?;
    Ok(format!(
        "{}{}?token={}",
        config.issuer,
        routes::RESET,
        secret.expose()
    ))
}

/// `?token=` of the reset page.
#[derive(Deserialize)]
pub struct ResetQuery {
    #[serde(default)]
    token: String,
}

impl std::fmt::Debug for ResetQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetQuery(<redacted>)")
    }
}

/// The reset form.
#[derive(Deserialize)]
pub struct ResetForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password_again: String,
}

impl std::fmt::Debug for ResetForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetForm(<redacted>)")
    }
}

fn not_valid(product: &str) -> Response {
    pages::error(
        product,
        StatusCode::NOT_FOUND,
        "This password link does not work",
        "It was used already, it expired (links work for a day), or a newer one replaced it.",
        "Ask an admin of this server for a new link.",
    )
}

/// The name of the person whose link `token` is, if it works now.
async fn person(
    state: &AppState,
    token: &str,
    now: OffsetDateTime,
) -> Result<Option<String>, AuthorizeError> {
    if token.is_empty() || token.len() > 128 {
        return Ok(None);
    }
    let hash = Secret::presented(token).hash();
    let Some(user_id) = state.store.reset_link_user(&hash, now).await? else {
        return Ok(None);
    };
    Ok(state
        .store
        .user(&user_id)
        .await?
        .map(|u| u.username.as_str().to_owned()))
}

async fn form_page(
    state: &AppState,
    session: &Session,
    mut data: SessionData,
    token: &str,
    username: String,
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
        &ResetPage {
            product: state.config.product_name.clone(),
            csrf,
            token: token.to_owned(),
            username,
            error,
        },
    ))
}

/// `GET /reset?token=...`
pub async fn reset_get(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ResetQuery>,
) -> Response {
    let product = state.config.product_name.clone();
    let result = async {
        let now = state.clock.now();
        let Some(username) = person(&state, &q.token, now).await? else {
            return Ok(not_valid(&product));
        };
        let data = SessionData::load(&session, now, state.config.session_absolute_timeout).await?;
        form_page(&state, &session, data, &q.token, username, None).await
    }
    .await;
    result.unwrap_or_else(|e: AuthorizeError| e.into_response_for(&product))
}

/// `POST /reset`
pub async fn reset_post(
    State(state): State<AppState>,
    session: Session,
    ClientIp(ip): ClientIp,
    form: Result<Form<ResetForm>, FormRejection>,
) -> Response {
    let product = state.config.product_name.clone();
    let Ok(Form(form)) = form else {
        return pages::error(
            &product,
            StatusCode::BAD_REQUEST,
            "Invalid password form",
            "The form was incomplete.",
            "Open the link again and fill in the form.",
        );
    };
    reset(&state, &session, ip, form)
        .await
        .unwrap_or_else(|e| e.into_response_for(&product))
}

async fn reset(
    state: &AppState,
    session: &Session,
    ip: Option<std::net::IpAddr>,
    form: ResetForm,
) -> Result<Response, AuthorizeError> {
    let product = &state.config.product_name;
    let now = state.clock.now();
    // The link first: without a working one nothing else is looked at, nor a password hashed.
    let Some(username) = person(state, &form.token, now).await? else {
        return Ok(not_valid(product));
    };
    let data = SessionData::load(session, now, state.config.session_absolute_timeout).await?;
    if !tokens_match(data.form_csrf.as_deref().unwrap_or(""), &form.csrf) {
        let error = Some((
            StatusCode::FORBIDDEN,
            "The form expired. Please fill it in again.",
        ));
        return form_page(state, session, data, &form.token, username, error).await;
    }
    let hash = match new_password_hash(&form.password, &form.password_again).await? {
        Ok(hash) => hash,
        Err(message) => {
            let error = Some((StatusCode::BAD_REQUEST, message.as_str()));
            return form_page(state, session, data, &form.token, username, error).await;
        }
    };
    let link = Secret::presented(&form.token).hash();
    let Some((user_id, revoked)) = state.store.use_reset_link(&link, &hash, now).await? else {
        return Ok(not_valid(product));
    };
    // What the old password let anyone start ends here at once (other instances at their next
    // revocation sync), and each grant's end is audited.
    for grant in &revoked {
        state.revocations.revoke_grant(grant, now);
    }
    let reason = "password set through a reset link";
    let mut events =
        audit::revoked_grant_events(&revoked, Some(&user_id), None, reason, &username, now);
    let mut event = AuditEvent::new(
        "user.password_set",
        now,
        json!({ "username": username, "by": "reset link" }),
    );
    event.subject = Some(user_id);
    event.ip = ip.map(|i| i.to_string());
    events.push(event);
    audit::record_all_after_commit(&state.store, &events).await;
    Ok(pages::render(
        StatusCode::OK,
        &MessagePage {
            product: product.clone(),
            title: "Your password is set".to_owned(),
            message: format!(
                "Sign in as {username} with your new password. Anything signed in with the old one was signed out."
            ),
            logout_csrf: None,
        },
    ))
}
