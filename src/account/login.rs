//! The sign-in page (`/login`) and signing out (`/logout`).
//!
//! Sign-in never says whether an account exists; failures are throttled per account name and per
//! client IP (see [`super::throttle`]); every success and failure is audited; the session id is
//! rotated at sign-in (session fixation, RFC 9700 §4.6 spirit).

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use tower_sessions::Session;

use super::provider::provider_start_href;
use super::session::{SessionData, tokens_match};
use super::throttle;
use crate::audit::{self, AuditEvent};
use crate::oauth::authorize::{Pending, continue_authorization, current_user};
use crate::oauth::clients::resolve_client;
use crate::oauth::error::AuthorizeError;
use crate::pages::{self, LoginPage, MessagePage, ProviderButton};
use crate::state::AppState;
use crate::web::{self, ClientIp};

/// `?request=` of the login and consent pages.
#[derive(Debug, Deserialize)]
pub struct RequestQuery {
    /// The pending authorization request id.
    #[serde(default)]
    pub request: String,
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    request: String,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The metrics' name for sign-in with a Gatehouse password.
const PASSWORD: &str = "password";

/// What a person whose account an admin locked is told.
pub(super) const LOCKED: &str = "This account is locked. Ask an admin of this server to unlock it.";

const GENERIC_FAILURE: &str = "Incorrect user name or password.";

/// `Retry-After` of a sign-in refused because the password checks are all taken: the queue
/// drains in well under a second.
const BUSY_RETRY_AFTER_SECONDS: u64 = 1;

/// The application a pending request is for, to name it on the login page: the verified host
/// of a metadata-document client with the name it gives itself, or the registered name (never
/// with characters that disguise it), or its redirect host.
async fn app_name(
    state: &AppState,
    data: &SessionData,
    request: &str,
) -> (Option<String>, Option<String>) {
    let Some(pending) = data.pending(request, state.clock.now()) else {
        return (None, None);
    };
    let Ok(client) = resolve_client(state, &pending.client_id, None).await else {
        return (None, None);
    };
    if let Some(host) = client.verified_host() {
        return (Some(host), client.display_name());
    }
    let name = client.display_name().or_else(|| {
        client
            .redirect_uris
            .first()
            .and_then(|u| u.host().map(str::to_owned))
    });
    (name, None)
}

async fn login_page(
    state: &AppState,
    session: &Session,
    mut data: SessionData,
    request: &str,
    username: &str,
    error: Option<(StatusCode, String)>,
) -> Result<Response, AuthorizeError> {
    let csrf = data.form_csrf()?;
    data.save(session).await?;
    let (app_name, claimed_name) = app_name(state, &data, request).await;
    let (status, error) = match error {
        Some((status, message)) => (status, Some(message)),
        None => (StatusCode::OK, None),
    };
    Ok(pages::render(
        status,
        &LoginPage {
            product: state.config.product_name.clone(),
            csrf,
            request: request.to_owned(),
            app_name,
            claimed_name,
            username: username.to_owned(),
            error,
            local_login: state.config.local_login,
            providers: state
                .identity
                .all()
                .map(|p| ProviderButton {
                    href: provider_start_href(&p.id, request),
                    name: p.name.clone(),
                })
                .collect(),
        },
    ))
}

/// `GET /login`
pub async fn login_get(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<RequestQuery>,
) -> Response {
    let product = state.config.product_name.clone();
    let result = async {
        let data = SessionData::load(
            &session,
            state.clock.now(),
            state.config.session_absolute_timeout,
        )
        .await?;
        if !q.request.is_empty() && current_user(&state, &data).await?.is_some() {
            return continue_authorization(
                &state,
                &session,
                data,
                Pending::Kept(q.request.clone()),
                true,
            )
            .await;
        }
        login_page(&state, &session, data, &q.request, "", None).await
    }
    .await;
    result.unwrap_or_else(|e| e.into_response_for(&product))
}

/// `POST /login`
pub async fn login_post(
    State(state): State<AppState>,
    session: Session,
    ClientIp(ip): ClientIp,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let product = state.config.product_name.clone();
    if !state.config.local_login {
        return pages::error(
            &product,
            StatusCode::FORBIDDEN,
            "Password sign-in is turned off",
            "This server signs people in through their identity provider only.",
            "Go back to the sign-in page and choose your identity provider.",
        );
    }
    let Ok(Form(form)) = form else {
        return pages::error(
            &product,
            StatusCode::BAD_REQUEST,
            "Invalid sign-in form",
            "The sign-in form was incomplete.",
            "Reload the page and try again.",
        );
    };
    login(&state, &session, ip, form)
        .await
        .unwrap_or_else(|e| e.into_response_for(&product))
}

async fn login(
    state: &AppState,
    session: &Session,
    ip: Option<std::net::IpAddr>,
    form: LoginForm,
) -> Result<Response, AuthorizeError> {
    let now = state.clock.now();
    let data = SessionData::load(session, now, state.config.session_absolute_timeout).await?;
    // CSRF: the token must be the one this session's form was rendered with; nothing else is
    // checked (not even the password) when it is missing or foreign.
    let expected = data.form_csrf.clone().unwrap_or_default();
    if !tokens_match(&expected, &form.csrf) {
        state.metrics.sign_in(PASSWORD, "failure");
        let mut event = AuditEvent::new("login.failure", now, json!({ "reason": "csrf" })).failed();
        event.ip = ip.map(|i| i.to_string());
        audit::record(&state.store, event).await?;
        let message = "Your sign-in form expired. Please try again.".to_owned();
        return login_page(
            state,
            session,
            data,
            &form.request,
            "",
            Some((StatusCode::FORBIDDEN, message)),
        )
        .await;
    }

    let account_key = throttle::account_key(&form.username);
    let ip_key = ip.map(throttle::ip_key);
    let account_wait = throttle::wait(
        throttle::ACCOUNT,
        state.store.throttle(&account_key).await?,
        now,
    );
    let ip_wait = match &ip_key {
        Some(key) => throttle::wait(throttle::IP, state.store.throttle(key).await?, now),
        None => None,
    };
    let audit_failure = |reason: &str| {
        let mut event = AuditEvent::new(
            "login.failure",
            now,
            json!({ "reason": reason, "username": form.username }),
        )
        .failed();
        event.ip = ip.map(|i| i.to_string());
        event
    };
    if let Some(wait) = account_wait.max(ip_wait) {
        state.metrics.sign_in(PASSWORD, "throttled");
        audit::record(&state.store, audit_failure("throttled")).await?;
        let seconds = wait.whole_seconds().max(1);
        let message = if seconds > 60 {
            format!(
                "Too many failed sign-ins. Sign-in is locked for {} more minutes.",
                (seconds + 59) / 60
            )
        } else {
            format!("Too many failed sign-ins. Wait {seconds} seconds, then try again.")
        };
        let status = (StatusCode::TOO_MANY_REQUESTS, message);
        return come_back_later(state, session, data, &form, status, seconds.unsigned_abs()).await;
    }

    // An account made by an identity provider has no password: checked like an unknown name
    // (against the dummy hash, in the same time), never accepted.
    let user = state
        .store
        .user_by_name(&form.username)
        .await?
        .filter(|u| !u.password_hash.is_empty());
    let checked = state
        .passwords
        .verify(
            form.password.clone(),
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await;
    // Every password-checking thread busy and the queue full: no check was made, so nothing is
    // counted against the name or the address; the person is asked to try again shortly.
    let Ok(ok) = checked else {
        state.metrics.sign_in(PASSWORD, "busy");
        let message = "The server is busy signing people in. Try again in a moment.".to_owned();
        let status = (StatusCode::SERVICE_UNAVAILABLE, message);
        return come_back_later(
            state,
            session,
            data,
            &form,
            status,
            BUSY_RETRY_AFTER_SECONDS,
        )
        .await;
    };
    let Some(user) = user.filter(|_| ok) else {
        let reset_before = now - throttle::WINDOW;
        let failures = state
            .store
            .record_failure(&account_key, now, reset_before)
            .await?;
        if failures >= throttle::ACCOUNT.lock_after {
            state
                .store
                .lock(&account_key, now + throttle::WINDOW)
                .await?;
        }
        if let Some(key) = &ip_key {
            let failures = state.store.record_failure(key, now, reset_before).await?;
            if failures >= throttle::IP.lock_after {
                state.store.lock(key, now + throttle::WINDOW).await?;
            }
        }
        state.metrics.sign_in(PASSWORD, "failure");
        audit::record(&state.store, audit_failure("bad_credentials")).await?;
        let username = form.username.clone();
        return login_page(
            state,
            session,
            data,
            &form.request,
            &username,
            Some((StatusCode::UNAUTHORIZED, GENERIC_FAILURE.to_owned())),
        )
        .await;
    };

    state.store.clear_throttle(&account_key).await?;
    // Told only to someone who knows the password.
    if user.locked_at.is_some() {
        state.metrics.sign_in(PASSWORD, "refused");
        let mut event = audit_failure("locked");
        event.subject = Some(user.id.clone());
        audit::record(&state.store, event).await?;
        let username = form.username.clone();
        return login_page(
            state,
            session,
            data,
            &form.request,
            &username,
            Some((StatusCode::FORBIDDEN, LOCKED.to_owned())),
        )
        .await;
    }
    state.metrics.sign_in(PASSWORD, "success");
    let detail = json!({ "username": user.username.as_str() });
    signed_in(state, session, data, &user, detail, ip, &form.request).await
}

/// A person has just proven who they are (`detail` says how, for the audit log): the session
/// gets a new id (one planted before sign-in is worthless after it) and their user, the
/// sign-in is audited, and the authorization request `request` continues (or a page says they
/// are signed in).
pub(super) async fn signed_in(
    state: &AppState,
    session: &Session,
    mut data: SessionData,
    user: &crate::domain::User,
    detail: serde_json::Value,
    ip: Option<std::net::IpAddr>,
    request: &str,
) -> Result<Response, AuthorizeError> {
    let now = state.clock.now();
    begin_session(session, &mut data, user, now).await?;
    let mut event = AuditEvent::new("login.success", now, detail);
    event.subject = Some(user.id.clone());
    event.ip = ip.map(|i| i.to_string());
    audit::record(&state.store, event).await?;
    if !request.is_empty() {
        let pending = Pending::Kept(request.to_owned());
        return continue_authorization(state, session, data, pending, true).await;
    }
    signed_in_page(state, session, data, user.username.as_str()).await
}

/// The browser now belongs to `user`: the session gets a new id (one planted before is worthless
/// after) and forgets the form token it had.
pub(super) async fn begin_session(
    session: &Session,
    data: &mut SessionData,
    user: &crate::domain::User,
    now: time::OffsetDateTime,
) -> Result<(), AuthorizeError> {
    session
        .cycle_id()
        .await
        .map_err(|e| AuthorizeError::Internal(e.to_string()))?;
    data.user_id = Some(user.id.clone());
    data.authenticated_at = Some(now.unix_timestamp());
    data.form_csrf = None;
    data.save(session).await?;
    Ok(())
}

/// The sign-in page again with `status` and its message, and `Retry-After: seconds`: a try that
/// was not made (throttled, or no password thread free).
async fn come_back_later(
    state: &AppState,
    session: &Session,
    data: SessionData,
    form: &LoginForm,
    status: (StatusCode, String),
    seconds: u64,
) -> Result<Response, AuthorizeError> {
    let page = login_page(
        state,
        session,
        data,
        &form.request,
        &form.username,
        Some(status),
    )
    .await?;
    Ok(web::with_retry_after(page, seconds))
}

async fn signed_in_page(
    state: &AppState,
    session: &Session,
    mut data: SessionData,
    username: &str,
) -> Result<Response, AuthorizeError> {
    let csrf = data.form_csrf()?;
    data.save(session).await?;
    Ok(pages::render(
        StatusCode::OK,
        &MessagePage {
            product: state.config.product_name.clone(),
            title: "You are signed in".to_owned(),
            message: format!(
                "Signed in as {username}. You can close this page and return to your application."
            ),
            logout_csrf: Some(csrf),
        },
    ))
}

/// The logout form.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `GET /logout`: a page with a sign-out button (signing out is a POST with a CSRF token).
pub async fn logout_get(State(state): State<AppState>, session: Session) -> Response {
    let product = state.config.product_name.clone();
    let result = async {
        let data = SessionData::load(
            &session,
            state.clock.now(),
            state.config.session_absolute_timeout,
        )
        .await?;
        match current_user(&state, &data).await? {
            Some(user) => signed_in_page(&state, &session, data, user.username.as_str()).await,
            None => Ok(signed_out_page(&state)),
        }
    }
    .await;
    result.unwrap_or_else(|e| e.into_response_for(&product))
}

pub(super) fn signed_out_page(state: &AppState) -> Response {
    pages::render(
        StatusCode::OK,
        &MessagePage {
            product: state.config.product_name.clone(),
            title: "You are signed out".to_owned(),
            message: "You can close this page.".to_owned(),
            logout_csrf: None,
        },
    )
}

/// `POST /logout`
pub async fn logout_post(
    State(state): State<AppState>,
    session: Session,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> Response {
    let product = state.config.product_name.clone();
    let result = async {
        let now = state.clock.now();
        let data = SessionData::load(&session, now, state.config.session_absolute_timeout).await?;
        let submitted = form.map(|Form(f)| f.csrf).unwrap_or_default();
        if !tokens_match(data.form_csrf.as_deref().unwrap_or(""), &submitted) {
            return Ok(pages::error(
                &product,
                StatusCode::FORBIDDEN,
                "Sign-out not confirmed",
                "The sign-out form expired.",
                "Open the sign-out page again and press Sign out.",
            ));
        }
        if let Some(user_id) = &data.user_id {
            let mut event = AuditEvent::new("logout", now, json!({}));
            event.subject = Some(user_id.clone());
            audit::record(&state.store, event).await?;
        }
        session
            .flush()
            .await
            .map_err(|e| AuthorizeError::Internal(e.to_string()))?;
        Ok(signed_out_page(&state))
    }
    .await;
    result.unwrap_or_else(|e: AuthorizeError| e.into_response_for(&product))
}
