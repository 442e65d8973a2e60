//! Sign-in through an identity provider: `GET /login/provider/{id}` sends the browser there,
//! `GET /login/provider/{id}/callback` takes it back. The callback must match the sign-in this
//! browser session started (provider, `state`, within ten minutes, once); the provider's `iss`
//! must be its issuer when sent (RFC 9207 §2.4); then the person is admitted or refused by the
//! provider's rules, and signed in as the account of (provider, issuer, subject), never found by
//! email. Every outcome is audited; none is a 500 or a session for the wrong person.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use tower_sessions::Session;
use url::Url;

use super::login::{RequestQuery, signed_in};
use super::page::{Notice, account_notice};
use super::session::{PENDING_TTL, SessionData, UpstreamSignIn, tokens_match};
use crate::audit::{self, AuditEvent};
use crate::config::IdentityProvider;
use crate::domain::{User, Username, random_token};
use crate::identity::rules::{self, Claims};
use crate::identity::{Provider, ProviderError};
use crate::oauth::authorize::{current_user, expired_request, page};
use crate::oauth::error::AuthorizeError;
use crate::state::AppState;
use crate::store::{ProviderIdentity, StoreError};
use crate::web::ClientIp;

/// Where the sign-in page's button for provider `id` starts a sign-in for `request`.
pub fn provider_start_href(id: &str, request: &str) -> String {
    let mut href = format!("/login/provider/{id}");
    if !request.is_empty() {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("request", request)
            .finish();
        href.push('?');
        href.push_str(&query);
    }
    href
}

/// The callback of provider `id`: registered at the provider as Gatehouse's redirect URI.
fn callback_url(state: &AppState, id: &str) -> Result<Url, AuthorizeError> {
    Url::parse(&format!(
        "{}/login/provider/{id}/callback",
        state.config.issuer.as_str()
    ))
    .map_err(|e| AuthorizeError::Internal(e.to_string()))
}

const START_AGAIN: &str = "Go back to the application and connect again.";

fn unknown_provider() -> AuthorizeError {
    page(
        StatusCode::NOT_FOUND,
        "Unknown sign-in method",
        "This server has no such way to sign in.".into(),
        START_AGAIN,
    )
}

/// `GET /login/provider/{id}`
pub async fn provider_start(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    Query(q): Query<RequestQuery>,
    ClientIp(ip): ClientIp,
) -> Response {
    let product = state.config.product_name.clone();
    start(&state, &session, &id, &q.request, None, ip)
        .await
        .unwrap_or_else(|e| e.into_response_for(&product))
}

/// Sends the browser to provider `id`: to sign in for authorization request `request` (may be
/// empty), or, with `link_to`, to link the account there to that signed-in user.
pub(super) async fn start(
    state: &AppState,
    session: &Session,
    id: &str,
    request: &str,
    link_to: Option<String>,
    ip: Option<std::net::IpAddr>,
) -> Result<Response, AuthorizeError> {
    let provider = state.identity.get(id).ok_or_else(unknown_provider)?;
    let now = state.clock.now();
    let mut data = SessionData::load(session, now, state.config.session_absolute_timeout).await?;
    if !request.is_empty() && data.pending(request, now).is_none() {
        return Err(expired_request());
    }
    let started = match provider
        .start(&state.identity, &callback_url(state, id)?)
        .await
    {
        Ok(started) => started,
        Err(err) => {
            audit_failure(state, id, "provider_unreachable", &err.to_string(), ip, now).await?;
            return Err(provider_down(&provider.config));
        }
    };
    data.upstream = Some(UpstreamSignIn {
        provider: id.to_owned(),
        state: started.state,
        nonce: started.nonce,
        verifier: started.verifier,
        request: request.to_owned(),
        created_at: now.unix_timestamp(),
        link_to,
    });
    data.save(session).await?;
    Ok(Redirect::to(started.url.as_str()).into_response())
}

fn provider_down(provider: &IdentityProvider) -> AuthorizeError {
    AuthorizeError::Page {
        status: StatusCode::BAD_GATEWAY,
        title: "Sign-in provider unavailable",
        message: format!(
            "{} could not be reached or did not answer properly.",
            provider.name
        ),
        hint: "Try again in a moment. If this keeps happening, tell whoever runs this server.",
    }
}

/// What a provider sends back (OAuth 2.0 §4.1.2, §4.1.2.1; RFC 9207).
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

/// `GET /login/provider/{id}/callback`
pub async fn provider_callback(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    ClientIp(ip): ClientIp,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let product = state.config.product_name.clone();
    let Ok(Query(q)) = query else {
        return expired_request().into_response_for(&product);
    };
    callback(&state, &session, &id, q, ip)
        .await
        .unwrap_or_else(|e| e.into_response_for(&product))
}

async fn callback(
    state: &AppState,
    session: &Session,
    id: &str,
    q: CallbackQuery,
    ip: Option<std::net::IpAddr>,
) -> Result<Response, AuthorizeError> {
    let provider = state.identity.get(id).ok_or_else(unknown_provider)?;
    let now = state.clock.now();
    let mut data = SessionData::load(session, now, state.config.session_absolute_timeout).await?;
    // Each sign-in comes back once: taken from the session whatever happens next. (A browser
    // with none in progress has nothing to write back.)
    let upstream = data.upstream.take();
    if upstream.is_some() {
        data.save(session).await?;
    }
    let Some(upstream) = upstream else {
        return refuse(state, id, "no_sign_in_in_progress", ip, now).await;
    };
    if upstream.provider != id
        || now.unix_timestamp() - upstream.created_at > PENDING_TTL.whole_seconds()
    {
        return refuse(state, id, "sign_in_expired", ip, now).await;
    }
    // OAuth 2.0 §10.12: the state binds the answer to the browser that started the sign-in.
    if !tokens_match(&upstream.state, q.state.as_deref().unwrap_or_default()) {
        return refuse(state, id, "state_mismatch", ip, now).await;
    }
    // RFC 9207 §2.4: an answer that names another issuer is a mix-up; one without `iss` from
    // a provider that says it always sends it is refused too.
    match q.iss.as_deref() {
        Some(iss) if !same_issuer(iss, &provider.config.issuer) => {
            return refuse(state, id, "issuer_mismatch", ip, now).await;
        }
        None if provider.sends_iss(&state.identity).await.unwrap_or(false) => {
            return refuse(state, id, "issuer_missing", ip, now).await;
        }
        _ => {}
    }
    if let Some(error) = q.error {
        audit_failure(state, id, "provider_error", &error, ip, now).await?;
        return Err(page(
            StatusCode::FORBIDDEN,
            "Sign-in was not completed",
            format!(
                "{} did not sign you in ({}).",
                provider.config.name,
                short(&error)
            ),
            START_AGAIN,
        ));
    }
    let Some(code) = q.code else {
        return refuse(state, id, "no_code", ip, now).await;
    };
    let callback = callback_url(state, id)?;
    let finished = provider
        .finish(
            &state.identity,
            &callback,
            &code,
            &upstream.verifier,
            &upstream.nonce,
        )
        .await;
    let (identity, claims) = match finished {
        Ok(found) => found,
        Err(err) => return provider_failed(state, provider, err, ip, now).await,
    };
    if rules::admit(&provider.config, &claims).is_err() {
        state.metrics.sign_in(id, "refused");
        let mut event = AuditEvent::new(
            "login.refused",
            now,
            json!({
                "provider": id,
                "reason": "not_admitted",
                "email": identity.email,
                "email_verified": identity.email_verified,
            }),
        )
        .failed();
        event.ip = ip.map(|i| i.to_string());
        audit::record(&state.store, event).await?;
        return Err(page(
            StatusCode::FORBIDDEN,
            "You may not sign in here",
            format!(
                "{} signed you in{}, but this server does not admit that account.",
                provider.config.name,
                identity
                    .email
                    .as_deref()
                    .map(|e| format!(" as {e}"))
                    .unwrap_or_default()
            ),
            "If you think you should have access, ask whoever runs this server. You can also sign out at your provider and try another account.",
        ));
    }
    if let Some(user_id) = &upstream.link_to {
        return link(state, &data, user_id, &identity, ip, now).await;
    }
    let roles = rules::roles(&provider.config, &claims);
    if provider.config.link_existing_by_email {
        link_by_email(state, &identity, &claims, ip, now).await?;
    }
    let (user, created) = sign_in_identity(state, &identity, &claims, &roles, now).await?;
    if user.locked_at.is_some() {
        state.metrics.sign_in(id, "refused");
        let mut event = AuditEvent::new(
            "login.refused",
            now,
            json!({ "provider": id, "reason": "locked" }),
        )
        .failed();
        event.subject = Some(user.id.clone());
        event.ip = ip.map(|i| i.to_string());
        audit::record(&state.store, event).await?;
        return Err(page(
            StatusCode::FORBIDDEN,
            "This account is locked",
            super::login::LOCKED.to_owned(),
            "Ask an admin of this server to unlock it.",
        ));
    }
    let detail = json!({
        "username": user.username.as_str(),
        "provider": id,
        "account_created": created,
        "provider_roles": roles,
    });
    state.metrics.sign_in(id, "success");
    signed_in(state, session, data, &user, detail, ip, &upstream.request).await
}

/// The end of a link started from the account page: the provider account signs in `user_id`
/// from now on, if that user is still the one signed in here and no other user has it.
async fn link(
    state: &AppState,
    data: &SessionData,
    user_id: &str,
    identity: &ProviderIdentity,
    ip: Option<std::net::IpAddr>,
    now: OffsetDateTime,
) -> Result<Response, AuthorizeError> {
    let user = current_user(state, data).await?.filter(|u| u.id == user_id);
    let Some(user) = user else {
        return refuse(state, &identity.provider, "link_signed_out", ip, now).await;
    };
    let mine = state.store.identities_of(&user.id).await?;
    let same = |l: &crate::store::LinkedIdentity| {
        l.identity.provider == identity.provider
            && l.identity.issuer == identity.issuer
            && l.identity.subject == identity.subject
    };
    if mine.iter().any(same) {
        return Ok(Redirect::to(&account_notice(Notice::AlreadyLinked)).into_response());
    }
    match state.store.link_identity(&user.id, identity, now).await {
        Ok(()) => {
            let mut event = audit::identity_change("identity.linked", &user, identity, "self", now);
            event.ip = ip.map(|i| i.to_string());
            audit::record(&state.store, event).await?;
            Ok(Redirect::to(&account_notice(Notice::Linked)).into_response())
        }
        // (provider, issuer, subject) is another user's: it keeps signing them in.
        Err(StoreError::Conflict(_)) => {
            let mut event =
                audit::identity_change("identity.linked", &user, identity, "self", now).failed();
            event.detail["reason"] = json!("linked_to_another_user");
            event.ip = ip.map(|i| i.to_string());
            audit::record(&state.store, event).await?;
            Ok(Redirect::to(&account_notice(Notice::LinkedElsewhere)).into_response())
        }
        Err(other) => Err(other.into()),
    }
}

/// `link_existing_by_email`: a provider account not linked yet is linked to the user named by
/// the address the provider says is verified, if there is one. (One already linked, to anyone,
/// stays as it is: the insert finds it taken.)
async fn link_by_email(
    state: &AppState,
    identity: &ProviderIdentity,
    claims: &Claims,
    ip: Option<std::net::IpAddr>,
    now: OffsetDateTime,
) -> Result<(), AuthorizeError> {
    let Some(email) = claims.verified_email() else {
        return Ok(());
    };
    let Some(user) = state.store.user_by_name(email).await? else {
        return Ok(());
    };
    match state.store.link_identity(&user.id, identity, now).await {
        Ok(()) => {
            let mut event =
                audit::identity_change("identity.linked", &user, identity, "verified_email", now);
            event.ip = ip.map(|i| i.to_string());
            audit::record(&state.store, event).await?;
            Ok(())
        }
        Err(StoreError::Conflict(_)) => Ok(()),
        Err(other) => Err(other.into()),
    }
}

/// A callback that does not belong to a sign-in this browser started: audited, and a page.
async fn refuse(
    state: &AppState,
    id: &str,
    reason: &str,
    ip: Option<std::net::IpAddr>,
    now: OffsetDateTime,
) -> Result<Response, AuthorizeError> {
    audit_failure(state, id, reason, "", ip, now).await?;
    Err(page(
        StatusCode::BAD_REQUEST,
        "This sign-in did not come from this browser",
        "The answer from the sign-in provider does not belong to a sign-in started here, or it came too late or twice.".into(),
        START_AGAIN,
    ))
}

/// RFC 9207 §2.4: the `iss` of the answer is the provider's issuer (simple string comparison).
fn same_issuer(iss: &str, issuer: &str) -> bool {
    iss == issuer
}

/// A provider's error code, cut short for the page (it is the provider's text, not ours).
fn short(error: &str) -> String {
    error
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

async fn provider_failed(
    state: &AppState,
    provider: &Provider,
    err: ProviderError,
    ip: Option<std::net::IpAddr>,
    now: OffsetDateTime,
) -> Result<Response, AuthorizeError> {
    let id = provider.config.id.as_str();
    let (reason, page) = match &err {
        ProviderError::Unreachable(_) => ("provider_unreachable", provider_down(&provider.config)),
        ProviderError::Refused(_) => (
            "code_refused",
            page(
                StatusCode::BAD_REQUEST,
                "Sign-in was not completed",
                format!(
                    "{} did not accept this sign-in: it expired or was already used.",
                    provider.config.name
                ),
                START_AGAIN,
            ),
        ),
        ProviderError::Invalid(_) => (
            "id_token_invalid",
            page(
                StatusCode::BAD_REQUEST,
                "Sign-in could not be verified",
                format!(
                    "The answer from {} did not verify, so nobody was signed in.",
                    provider.config.name
                ),
                "Try again. If this keeps happening, tell whoever runs this server.",
            ),
        ),
    };
    audit_failure(state, id, reason, &err.to_string(), ip, now).await?;
    Err(page)
}

async fn audit_failure(
    state: &AppState,
    provider: &str,
    reason: &str,
    detail: &str,
    ip: Option<std::net::IpAddr>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    // A provider id in a callback's path is the browser's to choose: only configured ones label.
    let label = state
        .identity
        .get(provider)
        .map_or("unknown", |p| p.config.id.as_str());
    state.metrics.sign_in(label, "failure");
    let mut body = json!({ "provider": provider, "reason": reason });
    if !detail.is_empty() {
        body["detail"] = json!(detail);
    }
    let mut event = AuditEvent::new("login.failure", now, body).failed();
    event.ip = ip.map(|i| i.to_string());
    audit::record(&state.store, event).await
}

/// The account of `identity`: the one it signed in as before, or a new one (never an existing
/// account found by email). A new account's name is its verified email, else the provider's
/// `preferred_username`, else `{provider}-{subject}`, made unique with a suffix.
async fn sign_in_identity(
    state: &AppState,
    identity: &ProviderIdentity,
    claims: &Claims,
    roles: &[String],
    now: OffsetDateTime,
) -> Result<(User, bool), AuthorizeError> {
    let base = claims
        .verified_email()
        .or_else(|| claims.str("preferred_username"))
        .map(sanitize)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| sanitize(&format!("{}-{}", identity.provider, identity.subject)));
    let rng = |_| AuthorizeError::Internal("random number generator failed".to_owned());
    let id = User::new_id().map_err(rng)?;
    let mut last = None;
    for attempt in 0..4 {
        let name = match attempt {
            0 => base.clone(),
            1 => format!("{base}-{}", identity.provider),
            _ => format!("{base}-{}", random_token(4).map_err(rng)?),
        };
        let name: String = name.chars().take(64).collect();
        let Ok(username) = Username::parse(&name) else {
            continue;
        };
        // No password: this account signs in through its provider only.
        let user = User::new(id.clone(), username, String::new(), Vec::new(), now);
        match state
            .store
            .sign_in_identity(identity, &user, roles, now)
            .await
        {
            Ok(done) => return Ok(done),
            Err(StoreError::Conflict(what)) => last = Some(what),
            Err(other) => return Err(other.into()),
        }
    }
    Err(AuthorizeError::Internal(format!(
        "no free user name for a new account: {}",
        last.unwrap_or_default()
    )))
}

/// A user name from what a provider said: the characters user names may hold, at most 64.
fn sanitize(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._@+-".contains(*c))
        .take(48)
        .collect()
}
