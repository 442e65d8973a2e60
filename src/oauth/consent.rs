//! The consent page (`/consent`): who is asking, where the browser goes next, and what the
//! application will be able to do; remembered per (user, client, resource), so asking again for
//! the same or fewer scopes skips the page and asking for more shows only what is new.
//!
//! As the MCP authorization spec asks: the redirect URI's host is shown prominently, unverified
//! and loopback-only clients are flagged, and the form's CSRF token is bound to this one request.
//! The answer is a 303, never a 307, which would re-POST the form to the client's callback
//! (Claude's answers 405).

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use tower_sessions::Session;

use super::authorize::{
    consent_state, expired_request, is_unverified, issue_code, see_other, signed_in_with_consent,
};
use super::clients::resolve_client;
use super::error::{AuthorizeError, ErrorTarget};
use crate::account::login::RequestQuery;
use crate::account::session::{SessionData, tokens_match};
use crate::audit::{self, AuditEvent};
use crate::pages::{self, ConsentPage, ScopeView};
use crate::routes;
use crate::state::AppState;

/// The consent form.
#[derive(Debug, Deserialize)]
pub struct ConsentForm {
    #[serde(default)]
    request: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
}

fn scope_view(state: &AppState, name: &str) -> ScopeView {
    let description = state
        .config
        .scopes
        .iter()
        .find(|s| s.name.as_str() == name)
        .map(|s| s.description.clone())
        .unwrap_or_else(|| name.to_owned());
    ScopeView {
        name: name.to_owned(),
        description,
    }
}

/// `GET /consent`
pub async fn consent_get(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<RequestQuery>,
) -> Response {
    let product = state.config.product_name.clone();
    consent_page(&state, &session, &q.request)
        .await
        .unwrap_or_else(|e| e.into_response_for(&product))
}

async fn consent_page(
    state: &AppState,
    session: &Session,
    id: &str,
) -> Result<Response, AuthorizeError> {
    let now = state.clock.now();
    let data = SessionData::load(session, now, state.config.session_absolute_timeout).await?;
    let Some(pending) = data.pending(id, now).cloned() else {
        return Err(expired_request());
    };
    let signed_in =
        signed_in_with_consent(state, &data, &pending.client_id, &pending.resource).await?;
    let Some((user, consent)) = signed_in else {
        return Ok(see_other(&format!("{}?request={id}", routes::LOGIN)));
    };
    let client = resolve_client(state, &pending.client_id, None)
        .await
        .map_err(|_| expired_request())?;
    let consent = consent_state(state, &pending, &user, consent);
    // A public client at another redirect URI is asked for everything again, as if new.
    let applies = consent.applies_to(&pending);
    let (kept, new): (Vec<_>, Vec<_>) = consent
        .granted
        .names()
        .partition(|s| applies && consent.remembered.contains(s));
    let redirect_host = client
        .redirect_uri(&pending.redirect_uri)
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_else(|| pending.redirect_uri.clone());
    // The headline names what was verified: a metadata document's host; a self-asserted name
    // only comes second ("calls itself"), and never with characters that disguise it.
    let (app_name, claimed_name) = match client.verified_host() {
        Some(host) => (host, client.display_name()),
        None => (
            client
                .display_name()
                .unwrap_or_else(|| redirect_host.clone()),
            None,
        ),
    };
    Ok(pages::render(
        StatusCode::OK,
        &ConsentPage {
            product: state.config.product_name.clone(),
            app_name,
            claimed_name,
            unverified: is_unverified(&client),
            loopback_only: client.only_loopback_redirects(),
            redirect_host,
            new_scopes: new.iter().map(|s| scope_view(state, s)).collect(),
            kept_scopes: kept.iter().map(|s| scope_view(state, s)).collect(),
            username: user.username.to_string(),
            csrf: pending.csrf.clone(),
            request: pending.id.clone(),
        },
    ))
}

/// `POST /consent`
pub async fn consent_post(
    State(state): State<AppState>,
    session: Session,
    form: Result<Form<ConsentForm>, FormRejection>,
) -> Response {
    let product = state.config.product_name.clone();
    let Ok(Form(form)) = form else {
        return pages::error(
            &product,
            StatusCode::BAD_REQUEST,
            "Invalid consent form",
            "The consent form was incomplete.",
            "Go back to the application and connect again.",
        );
    };
    decide(&state, &session, form)
        .await
        .unwrap_or_else(|e| e.into_response_for(&product))
}

async fn decide(
    state: &AppState,
    session: &Session,
    form: ConsentForm,
) -> Result<Response, AuthorizeError> {
    let now = state.clock.now();
    let mut data = SessionData::load(session, now, state.config.session_absolute_timeout).await?;
    let Some(pending) = data.pending(&form.request, now).cloned() else {
        return Err(expired_request());
    };
    // The token of this very request: a form from another request or session does nothing.
    if !tokens_match(&pending.csrf, &form.csrf) {
        return Err(AuthorizeError::Page {
            status: StatusCode::FORBIDDEN,
            title: "Consent not confirmed",
            message: "The consent form did not come from this sign-in.".into(),
            hint: "Go back to the application and connect again.",
        });
    }
    let signed_in =
        signed_in_with_consent(state, &data, &pending.client_id, &pending.resource).await?;
    let Some((user, consent)) = signed_in else {
        return Ok(see_other(&format!(
            "{}?request={}",
            routes::LOGIN,
            pending.id
        )));
    };
    let target = ErrorTarget::for_pending(state, &pending);
    // Each consent form works once.
    data.take_pending(&pending.id);
    data.save(session).await?;
    let consent = consent_state(state, &pending, &user, consent);
    let audit_event = |kind: &str| {
        let mut event = AuditEvent::new(
            kind,
            now,
            json!({ "scopes": consent.granted.to_string(), "resource": pending.resource }),
        );
        event.subject = Some(user.id.clone());
        event.client_id = Some(pending.client_id.clone());
        event
    };
    match form.decision.as_str() {
        "allow" => {
            let mut remembered = consent.remembered.clone();
            for scope in consent.granted.iter() {
                remembered.insert(scope.clone());
            }
            state
                .store
                .save_consent(
                    &user.id,
                    &pending.client_id,
                    &pending.resource,
                    &remembered.to_string(),
                    &pending.redirect_uri,
                    now,
                )
                .await?;
            audit::record(&state.store, audit_event("consent.granted")).await?;
            issue_code(state, &pending, &user, &consent.granted, now).await
        }
        "deny" => {
            audit::record(&state.store, audit_event("consent.denied").failed()).await?;
            Err(AuthorizeError::redirect(
                &target,
                "access_denied",
                "the user denied the request",
            ))
        }
        _ => Err(AuthorizeError::redirect(
            &target,
            "invalid_request",
            "the consent form carried no decision",
        )),
    }
}
