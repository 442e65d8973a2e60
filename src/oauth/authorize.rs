//! The authorization endpoint (RFC 6749 §4.1.1, OAuth 2.1 §4.1, RFC 7636, RFC 8707, RFC 9207) as
//! a pipeline of small named checks, and the step that finishes an authorization once the person
//! is signed in and has consented.
//!
//! Until the client and redirect URI are known good, every failure is an error page; after,
//! failures go back to the client (RFC 6749 §4.1.2.1; RFC 9700 §4.1), but only to a
//! redirect URI the server trusts (RFC 9700 §4.11.2): an operator's client, or one the signed-in
//! person has already connected. Anyone can register a client whose redirect URI is a phishing
//! page; without that rule any error would send a browser there with no one's consent.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;
use time::OffsetDateTime;
use tower_sessions::Session;

use super::clients::{ClientLookupError, Lookup, is_metadata_document, lookup_client};
use super::error::{AuthorizeError, ErrorTarget, redirect_with};
use super::params::Params;
use crate::account::User;
use crate::account::session::{PendingAuthorization, SessionData, new_token};
use crate::audit::{self, AuditEvent};
use crate::domain::{
    Client, ClientKind, RedirectKind, ScopeSet, ScopeToken, Secret, new_grant_id, same_resource,
};
use crate::routes;
use crate::state::AppState;
use crate::store::{CodeRecord, Consent};
use crate::web::ClientIp;

/// An error page with `status`.
pub fn page(
    status: StatusCode,
    title: &'static str,
    message: String,
    hint: &'static str,
) -> AuthorizeError {
    AuthorizeError::Page {
        status,
        title,
        message,
        hint,
    }
}

const ASK_THE_APP: &str = "Go back to the application and start connecting again. If this keeps happening, tell whoever runs the application.";

/// Step 1: the client must be known (registered, operator-added, or a valid metadata document).
async fn check_client(
    state: &AppState,
    params: &Params,
    ip: Option<std::net::IpAddr>,
) -> Result<Client, AuthorizeError> {
    let client_id = params
        .get("client_id")
        .map_err(|_| {
            page(
                StatusCode::BAD_REQUEST,
                "Invalid sign-in request",
                "The request names more than one application.".into(),
                ASK_THE_APP,
            )
        })?
        .ok_or_else(|| {
            page(
                StatusCode::BAD_REQUEST,
                "Invalid sign-in request",
                "The request does not say which application is asking (no client_id).".into(),
                ASK_THE_APP,
            )
        })?;
    // The cache may answer: a client removed meanwhile gets no code, since issuing one is
    // guarded by the client's row (`Store::issue_code`).
    match lookup_client(state, client_id, ip, Lookup::Cached).await {
        Ok(client) => Ok(client),
        Err(ClientLookupError::Unknown(_)) => Err(page(
            StatusCode::BAD_REQUEST,
            "Unknown application",
            "This server does not know the application that sent you here. Its registration may have expired.".into(),
            "Go back to the application and connect again; it will register itself anew.",
        )),
        Err(ClientLookupError::Metadata(err)) => Err(page(
            StatusCode::BAD_REQUEST,
            "Application could not be verified",
            err.public_message(),
            ASK_THE_APP,
        )),
        Err(ClientLookupError::RateLimited(wait)) => Err(AuthorizeError::TooMany {
            title: "Too many new applications",
            message: format!(
                "Too many different applications were looked up from your network. Try again in {} seconds.",
                crate::web::seconds_to_wait(wait)
            ),
            hint: ASK_THE_APP,
            retry_after: wait,
        }),
        Err(ClientLookupError::Store(err)) => Err(err.into()),
    }
}

/// Step 2: the redirect URI must be one the client registered (exact; any port on loopback). It
/// may be left out only when the client registered exactly one, non-loopback URI.
fn check_redirect_uri(client: &Client, params: &Params) -> Result<String, AuthorizeError> {
    let bad = |message: String| {
        page(
            StatusCode::BAD_REQUEST,
            "Invalid redirect",
            message,
            "For your safety you were not sent back to the application. Tell whoever runs it that its redirect URI is not registered.",
        )
    };
    match params
        .get("redirect_uri")
        .map_err(|_| bad("The request has more than one redirect_uri.".into()))?
    {
        // RFC 9700 §4.1.1: exact match against what the client registered.
        Some(requested) => match client.redirect_uri(requested) {
            Some(_) => Ok(requested.to_owned()),
            None => Err(bad(format!(
                "{requested} is not a redirect URI registered for this application."
            ))),
        },
        None => match client.redirect_uris.as_slice() {
            [only] if only.kind() != RedirectKind::Loopback => Ok(only.as_str().to_owned()),
            _ => Err(bad(
                "The request does not say where to send you back (no redirect_uri).".into(),
            )),
        },
    }
}

/// Step 3: the client registered for the authorization code grant (RFC 6749 §4.1.2.1
/// `unauthorized_client`).
fn check_grant_type(client: &Client, target: &ErrorTarget) -> Result<(), AuthorizeError> {
    if client.grant_types.iter().any(|g| g == "authorization_code") {
        Ok(())
    } else {
        Err(AuthorizeError::redirect(
            target,
            "unauthorized_client",
            "this client is not registered for the authorization code grant",
        ))
    }
}

/// Step 4: parameters appear at most once (RFC 6749 §3.1).
fn check_no_repeats(params: &Params, target: &ErrorTarget) -> Result<(), AuthorizeError> {
    match params.repeated() {
        Some(name) => Err(AuthorizeError::redirect(
            target,
            "invalid_request",
            format!("parameter {name} is repeated"),
        )),
        None => Ok(()),
    }
}

/// Step 5: only the authorization code flow.
fn check_response_type(params: &Params, target: &ErrorTarget) -> Result<(), AuthorizeError> {
    match params.get("response_type").unwrap_or(None) {
        Some("code") => Ok(()),
        None => Err(AuthorizeError::redirect(
            target,
            "invalid_request",
            "response_type is required",
        )),
        Some(other) => Err(AuthorizeError::redirect(
            target,
            "unsupported_response_type",
            format!("response_type {other:?} is not supported; use code"),
        )),
    }
}

/// Step 6: PKCE with S256 is required; `plain` is refused (RFC 7636 §4.3; MCP authorization spec).
fn check_pkce(params: &Params, target: &ErrorTarget) -> Result<String, AuthorizeError> {
    let challenge = params
        .get("code_challenge")
        .unwrap_or(None)
        .ok_or_else(|| {
            AuthorizeError::redirect(
                target,
                "invalid_request",
                "code_challenge is required (PKCE with S256)",
            )
        })?;
    match params.get("code_challenge_method").unwrap_or(None) {
        Some("S256") => {}
        Some(other) => {
            return Err(AuthorizeError::redirect(
                target,
                "invalid_request",
                format!("code_challenge_method {other:?} is not supported; use S256"),
            ));
        }
        // RFC 7636 §4.3: an absent method means plain.
        None => {
            return Err(AuthorizeError::redirect(
                target,
                "invalid_request",
                "code_challenge_method S256 is required",
            ));
        }
    }
    let valid = challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(AuthorizeError::redirect(
            target,
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the code_verifier (43 characters)",
        ));
    }
    Ok(challenge.to_owned())
}

/// Step 7: `resource` (RFC 8707) must name this server's MCP resource; absent means it.
fn check_resource(
    state: &AppState,
    params: &Params,
    target: &ErrorTarget,
) -> Result<String, AuthorizeError> {
    let canonical = state.config.resource();
    match params.get("resource") {
        Err(_) => Err(AuthorizeError::redirect(
            target,
            "invalid_target",
            "only one resource may be requested",
        )),
        Ok(None) => Ok(canonical),
        Ok(Some(requested)) if same_resource(&canonical, requested) => Ok(canonical),
        Ok(Some(requested)) => Err(AuthorizeError::redirect(
            target,
            "invalid_target",
            format!(
                "resource {requested:?} is not served here; this server's resource is {canonical}"
            ),
        )),
    }
}

/// Step 8: requested scopes this server knows; unknown ones are dropped (Claude sends
/// `claudeai`); none left means the default scopes.
fn requested_scopes(state: &AppState, params: &Params) -> Vec<String> {
    let known = state.config.scope_names();
    let mut scopes = ScopeSet::parse_lenient(params.get("scope").unwrap_or(None).unwrap_or(""));
    scopes.retain(|s| known.contains(&s));
    if scopes.is_empty() {
        scopes = state.config.default_scopes.iter().collect();
    }
    scopes.names().map(str::to_owned).collect()
}

/// `prompt` (OIDC Core §3.1.2.1, honoured here for OAuth clients too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Prompt {
    none: bool,
    login: bool,
    consent: bool,
}

/// Step 9: `prompt`; `none` cannot be combined with anything else.
fn check_prompt(params: &Params, target: &ErrorTarget) -> Result<Prompt, AuthorizeError> {
    let mut prompt = Prompt::default();
    for value in params
        .get("prompt")
        .unwrap_or(None)
        .unwrap_or("")
        .split(' ')
        .filter(|v| !v.is_empty())
    {
        match value {
            "none" => prompt.none = true,
            "login" => prompt.login = true,
            "consent" => prompt.consent = true,
            _ => {}
        }
    }
    if prompt.none && (prompt.login || prompt.consent) {
        return Err(AuthorizeError::redirect(
            target,
            "invalid_request",
            "prompt=none cannot be combined with other values",
        ));
    }
    Ok(prompt)
}

/// `GET /authorize`
pub async fn authorize_get(
    State(state): State<AppState>,
    session: Session,
    ClientIp(ip): ClientIp,
    RawQuery(query): RawQuery,
) -> Response {
    let product = state.config.product_name.clone();
    let query = query.unwrap_or_default();
    match authorize(&state, &session, ip, &query).await {
        Ok(response) => response,
        Err(err) => {
            let params = Params::parse(&query);
            let client_id = params.get("client_id").ok().flatten();
            audit_refusal(&state, &err, client_id, ip).await;
            err.into_response_for(&product)
        }
    }
}

async fn authorize(
    state: &AppState,
    session: &Session,
    ip: Option<std::net::IpAddr>,
    query: &str,
) -> Result<Response, AuthorizeError> {
    let params = Params::parse(query);
    let client = check_client(state, &params, ip).await?;
    let redirect_uri = check_redirect_uri(&client, &params)?;
    let target = ErrorTarget::new(state, &redirect_uri, params.get("state").unwrap_or(None));
    let now = state.clock.now();
    let mut data = SessionData::load(session, now, state.config.session_absolute_timeout).await?;
    let operator_client = client.kind == ClientKind::Operator;
    let checked = (|| {
        check_grant_type(&client, &target)?;
        check_no_repeats(&params, &target)?;
        check_response_type(&params, &target)?;
        let code_challenge = check_pkce(&params, &target)?;
        let resource = check_resource(state, &params, &target)?;
        let prompt = check_prompt(&params, &target)?;
        Ok((code_challenge, resource, prompt))
    })();
    let (code_challenge, resource, prompt) = match checked {
        Ok(checked) => checked,
        Err(err) => {
            return Err(to_trusted_redirect(state, &data, &client.id, operator_client, err).await);
        }
    };
    let scopes = requested_scopes(state, &params);
    if prompt.login {
        data.user_id = None;
        data.authenticated_at = None;
    }
    let pending = PendingAuthorization {
        id: new_token()?,
        csrf: new_token()?,
        client_id: client.id.clone(),
        redirect_uri,
        state: target.state.clone(),
        code_challenge,
        resource,
        scopes,
        force_consent: prompt.consent,
        created_at: now.unix_timestamp(),
        operator_client,
        public_client: !client.is_confidential(),
    };
    continue_authorization(state, session, data, Pending::New(pending), !prompt.none).await
}

/// The signed-in user of this session, if their account still exists and neither their
/// password changed nor the operator signed them out everywhere since they signed in.
pub async fn current_user(
    state: &AppState,
    data: &SessionData,
) -> Result<Option<User>, AuthorizeError> {
    let (Some(id), Some(at)) = (&data.user_id, data.authenticated_at) else {
        return Ok(None);
    };
    let user = state.store.user(id).await?;
    Ok(user.filter(|u| u.session_valid(at)))
}

/// [`current_user`] with what they allowed `client_id` for `resource` before, in one read.
pub async fn signed_in_with_consent(
    state: &AppState,
    data: &SessionData,
    client_id: &str,
    resource: &str,
) -> Result<Option<(User, Option<Consent>)>, AuthorizeError> {
    let (Some(id), Some(at)) = (&data.user_id, data.authenticated_at) else {
        return Ok(None);
    };
    let found = state
        .store
        .user_and_consent(id, client_id, resource)
        .await?;
    Ok(found.filter(|(user, _)| user.session_valid(at)))
}

/// Where a pending request stands for this user: scopes to grant, and those already allowed.
#[derive(Debug, Clone)]
pub struct ConsentState {
    /// requested ∩ what the user's roles allow, in request order.
    pub granted: ScopeSet,
    /// Scopes remembered from earlier consent.
    pub remembered: ScopeSet,
    /// The remembered consent was given for this request's very redirect URI.
    pub same_redirect: bool,
}

impl ConsentState {
    /// Whether the remembered consent covers `pending` as it is, so a code may be issued
    /// without asking: every scope to grant was allowed before, `prompt=consent` was not sent,
    /// and for a public client the redirect URI is the one it was given for (RFC 8252 §8.6,
    /// RFC 6749 §10.2: a public client cannot prove who it is, and anyone can start a flow for
    /// one with a loopback redirect of their own).
    pub fn stands_for(&self, pending: &PendingAuthorization) -> bool {
        !self.granted.is_empty()
            && self.granted.first_missing_from(&self.remembered).is_none()
            && self.applies_to(pending)
    }

    /// Whether what was remembered counts for `pending` at all: not under `prompt=consent`, and
    /// for a public client only at the redirect URI it was given for.
    pub fn applies_to(&self, pending: &PendingAuthorization) -> bool {
        !pending.force_consent && (!pending.public_client || self.same_redirect)
    }
}

/// Works out the consent state of `pending` for `user`, who allowed its client `consent` before.
pub fn consent_state(
    state: &AppState,
    pending: &PendingAuthorization,
    user: &User,
    consent: Option<Consent>,
) -> ConsentState {
    let allowed = state.config.grantable(user);
    let granted: ScopeSet = pending
        .scopes
        .iter()
        .filter(|s| allowed.contains(s))
        .filter_map(|s| ScopeToken::parse(s).ok())
        .collect();
    let same_redirect = consent
        .as_ref()
        .is_some_and(|c| c.redirect_uri.as_deref() == Some(pending.redirect_uri.as_str()));
    let remembered = consent
        .map(|c| ScopeSet::parse_lenient(&c.scopes))
        .unwrap_or_default();
    ConsentState {
        granted,
        remembered,
        same_redirect,
    }
}

/// A request being authorized: one kept in the browser session (it comes back from the sign-in
/// page), or one just made, kept there only if a page must be shown for it.
#[derive(Debug)]
pub enum Pending {
    /// Kept in the session under this id.
    Kept(String),
    /// Just made by `/authorize`; not in the session yet.
    New(PendingAuthorization),
}

/// Finishes (or advances) `pending`: to the login page, to the consent page, or straight back to
/// the client with a code when consent stands. The session is written only when it changes: a
/// request goes into it when a page is shown, and a kept one leaves it when it is finished. The
/// common case, a returning user whose consent stands, writes nothing to the session.
/// `interactive` is false for `prompt=none`, which answers `login_required` /
/// `consent_required` instead of a page.
pub async fn continue_authorization(
    state: &AppState,
    session: &Session,
    data: SessionData,
    pending: Pending,
    interactive: bool,
) -> Result<Response, AuthorizeError> {
    let now = state.clock.now();
    let (pending, kept) = match pending {
        Pending::Kept(id) => match data.pending(&id, now) {
            Some(found) => (found.clone(), true),
            None => return Err(expired_request()),
        },
        Pending::New(new) => (new, false),
    };
    // Finished: a kept request leaves the session (each works once).
    let finish = |mut data: SessionData| {
        let id = pending.id.clone();
        async move {
            if kept {
                data.take_pending(&id);
                data.save(session).await?;
            }
            Ok::<(), AuthorizeError>(())
        }
    };
    // A page to show: a new request enters the session, which the page's form refers to.
    let show = |mut data: SessionData, route: &'static str| {
        let pending = pending.clone();
        async move {
            let id = pending.id.clone();
            if !kept {
                data.add_pending(pending, now);
                data.save(session).await?;
            }
            Ok::<Response, AuthorizeError>(see_other(&format!("{route}?request={id}")))
        }
    };
    let target = ErrorTarget::for_pending(state, &pending);
    let signed_in =
        signed_in_with_consent(state, &data, &pending.client_id, &pending.resource).await?;
    let Some((user, consent)) = signed_in else {
        if !interactive {
            finish(data).await?;
            let err =
                AuthorizeError::redirect(&target, "login_required", "the user is not signed in");
            return Err(trusted_or_page(err, pending.operator_client));
        }
        return show(data, routes::LOGIN).await;
    };
    let consent = consent_state(state, &pending, &user, consent);
    // RFC 9700 §4.11.2: an error goes back to an operator's client, or to one this person has
    // connected (its consent is remembered); to any other, it is shown as a page.
    let trusted = pending.operator_client || !consent.remembered.is_empty();
    if consent.granted.is_empty() {
        finish(data).await?;
        let err = AuthorizeError::redirect(
            &target,
            "access_denied",
            "this account may not grant any of the requested scopes",
        );
        return Err(trusted_or_page(err, trusted));
    }
    if consent.stands_for(&pending) {
        finish(data).await?;
        return issue_code(state, &pending, &user, &consent.granted, now).await;
    }
    if !interactive {
        finish(data).await?;
        let err = AuthorizeError::redirect(
            &target,
            "consent_required",
            "the user has not consented to these scopes",
        );
        return Err(trusted_or_page(err, trusted));
    }
    show(data, routes::CONSENT).await
}

/// RFC 9700 §4.11.2: `err`, if it is a redirect, goes back to the client only when the server
/// trusts its redirect URI: the operator added the client, or the person signed in here has
/// already connected it (a remembered consent). Otherwise it becomes the error page.
async fn to_trusted_redirect(
    state: &AppState,
    data: &SessionData,
    client_id: &str,
    operator_client: bool,
    err: AuthorizeError,
) -> AuthorizeError {
    if operator_client || !matches!(err, AuthorizeError::Redirect { .. }) {
        return err;
    }
    let resource = state.config.resource();
    let consented = match signed_in_with_consent(state, data, client_id, &resource).await {
        Ok(found) => found.is_some_and(|(_, consent)| consent.is_some()),
        Err(read) => return read,
    };
    trusted_or_page(err, consented)
}

/// `err` as it is when the redirect URI is trusted, else as the error page ([`untrusted`]).
fn trusted_or_page(err: AuthorizeError, trusted: bool) -> AuthorizeError {
    if trusted { err } else { untrusted(err) }
}

/// A redirect error shown as the error page instead: the person learns what went wrong and is
/// not sent to a redirect URI nobody vouched for.
fn untrusted(err: AuthorizeError) -> AuthorizeError {
    match err {
        AuthorizeError::Redirect {
            error, description, ..
        } => page(
            StatusCode::BAD_REQUEST,
            "The application's request was refused",
            format!("{description} ({error})."),
            "For your safety you were not sent back to the application, which you have not connected yet. Go back to it and try connecting again; if this keeps happening, tell whoever runs it what this page says.",
        ),
        other => other,
    }
}

/// The page for a request that expired or was already used.
pub fn expired_request() -> AuthorizeError {
    page(
        StatusCode::BAD_REQUEST,
        "This sign-in has expired",
        "The sign-in request is no longer valid: it took more than 10 minutes, was already used, or was started in another browser.".into(),
        "Go back to the application and connect again.",
    )
}

/// A 303 to a path of ours.
pub fn see_other(location: &str) -> Response {
    use axum::response::IntoResponse;
    (
        StatusCode::SEE_OTHER,
        [(axum::http::header::LOCATION, location.to_owned())],
    )
        .into_response()
}

/// Issues an authorization code for `pending` and sends the browser back to the client with
/// `code`, `state` and `iss`. The code has 256 random bits and is stored only as a hash.
pub async fn issue_code(
    state: &AppState,
    pending: &PendingAuthorization,
    user: &User,
    scopes: &ScopeSet,
    now: OffsetDateTime,
) -> Result<Response, AuthorizeError> {
    let rng = |_| AuthorizeError::Internal("random number generator failed".to_owned());
    let code = Secret::generate_ordered().map_err(rng)?;
    let grant_id = new_grant_id().map_err(rng)?;
    let record = CodeRecord {
        code_hash: code.hash().as_str().to_owned(),
        grant_id: grant_id.clone(),
        client_id: pending.client_id.clone(),
        user_id: user.id.clone(),
        redirect_uri: pending.redirect_uri.clone(),
        code_challenge: pending.code_challenge.clone(),
        resource: pending.resource.clone(),
        scopes: scopes.to_string(),
        created_at: now,
        expires_at: now + state.config.authorization_code_ttl,
    };
    let mut event = AuditEvent::new(
        "code.issued",
        now,
        json!({ "scopes": record.scopes, "resource": record.resource }),
    );
    event.subject = Some(user.id.clone());
    event.client_id = Some(pending.client_id.clone());
    event.grant_id = Some(grant_id);
    // The code with its audit event, and its client's last use: one wait for one commit.
    let registered = !is_metadata_document(state, &pending.client_id);
    if !state.store.issue_code(&record, &event, registered).await? {
        return Err(page(
            StatusCode::BAD_REQUEST,
            "Unknown application",
            "This server no longer knows the application that sent you here: it was removed."
                .into(),
            "Go back to the application and connect again; it may need to register anew.",
        ));
    }
    audit::log(&event);
    let mut params = vec![("code", code.expose())];
    if let Some(s) = &pending.state {
        params.push(("state", s.as_str()));
    }
    params.push(("iss", state.config.issuer.as_str()));
    Ok(redirect_with(&pending.redirect_uri, &params))
}

/// Every refused authorization request is audited with its reason, the `client_id` it named
/// (known or not) and the address it came from.
async fn audit_refusal(
    state: &AppState,
    err: &AuthorizeError,
    client_id: Option<&str>,
    ip: Option<std::net::IpAddr>,
) {
    let detail = match err {
        AuthorizeError::Page { message, .. } | AuthorizeError::TooMany { message, .. } => {
            json!({ "shown": "error page", "reason": message })
        }
        AuthorizeError::Redirect {
            error, description, ..
        } => json!({ "error": error, "reason": description }),
        AuthorizeError::Internal(_) => return,
    };
    let mut event = AuditEvent::new("authorize.refused", state.clock.now(), detail).failed();
    // A client_id is at most a URL; one longer is not worth keeping whole.
    event.client_id = client_id.map(|id| id.chars().take(512).collect());
    event.ip = ip.map(|i| i.to_string());
    if let Err(e) = audit::record(&state.store, event).await {
        tracing::error!(error = %e, "cannot audit a refused authorization");
    }
}

/// True when the client registered itself (shown as unverified).
pub fn is_unverified(client: &Client) -> bool {
    client.kind == ClientKind::Dynamic
}
