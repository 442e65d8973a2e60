//! The person's own page, `/account`: the ways they sign in (their password, the provider
//! accounts linked to them), linking another provider account from their session, and
//! unlinking one, never the last. Every form carries the session's CSRF token; every change is
//! audited as done `by: self`.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use time::OffsetDateTime;
use time::macros::format_description;
use tower_sessions::Session;

use super::provider::start;
use super::session::{SessionData, tokens_match};
use crate::audit;
use crate::config::API_TOKEN_DEFAULT_DAYS;
use crate::domain::User;
use crate::oauth::authorize::current_user;
use crate::oauth::clients::is_metadata_document;
use crate::oauth::error::AuthorizeError;
use crate::pages::{self, AccountPage, AppView, IdentityView, ProviderView, TokenView};
use crate::routes;
use crate::state::AppState;
use crate::store::{ApiTokenRecord, ConnectedApp, ProviderIdentity, Unlinked};
use crate::web::ClientIp;

/// What the page says after an action (`?notice=`): fixed texts, so nothing from the URL is
/// shown as it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A provider account was linked.
    Linked,
    /// It was linked already.
    AlreadyLinked,
    /// Another user has it.
    LinkedElsewhere,
    /// An account was unlinked.
    Unlinked,
    /// Unlinking it would leave no way to sign in.
    LastWay,
    /// It was not linked to this user.
    NotLinked,
    /// An application was disconnected.
    Disconnected,
    /// An API token was revoked.
    TokenRevoked,
}

impl Notice {
    const ALL: [Notice; 8] = [
        Notice::Linked,
        Notice::AlreadyLinked,
        Notice::LinkedElsewhere,
        Notice::Unlinked,
        Notice::LastWay,
        Notice::NotLinked,
        Notice::Disconnected,
        Notice::TokenRevoked,
    ];

    fn code(self) -> &'static str {
        match self {
            Notice::Linked => "linked",
            Notice::AlreadyLinked => "already-linked",
            Notice::LinkedElsewhere => "linked-elsewhere",
            Notice::Unlinked => "unlinked",
            Notice::LastWay => "last-way",
            Notice::NotLinked => "not-linked",
            Notice::Disconnected => "disconnected",
            Notice::TokenRevoked => "token-revoked",
        }
    }

    /// The text, and whether it reports a refusal.
    fn text(self) -> (&'static str, bool) {
        match self {
            Notice::Linked => ("Linked: that account signs you in from now on.", false),
            Notice::AlreadyLinked => ("That account was already linked to you.", false),
            Notice::LinkedElsewhere => (
                "That account already signs in another user here, so it was not linked. Ask whoever runs this server if it should be yours.",
                true,
            ),
            Notice::Unlinked => ("Unlinked: that account no longer signs you in.", false),
            Notice::LastWay => (
                "That is your only way to sign in, so it stays linked. Link another account first.",
                true,
            ),
            Notice::NotLinked => ("That account is not linked to you.", true),
            Notice::Disconnected => (
                "Disconnected: its tokens no longer work, and it must ask you again to connect.",
                false,
            ),
            Notice::TokenRevoked => ("Revoked: that token no longer works.", false),
        }
    }
}

/// The account page showing `notice`.
pub fn account_notice(notice: Notice) -> String {
    format!("{}?notice={}", routes::ACCOUNT, notice.code())
}

/// `?notice=` of the account page.
#[derive(Debug, Deserialize)]
pub struct AccountQuery {
    #[serde(default)]
    notice: String,
}

/// The signed-in user and the session's form token, or the way to the sign-in page.
async fn signed_in(
    state: &AppState,
    session: &Session,
) -> Result<Result<(User, SessionData), Response>, AuthorizeError> {
    let data = SessionData::load(
        session,
        state.clock.now(),
        state.config.session_absolute_timeout,
    )
    .await?;
    Ok(match current_user(state, &data).await? {
        Some(user) => Ok((user, data)),
        None => Err(Redirect::to(routes::LOGIN).into_response()),
    })
}

/// `GET /account`
pub async fn account_get(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<AccountQuery>,
) -> Response {
    let result = async {
        let (user, data) = match signed_in(&state, &session).await? {
            Ok(found) => found,
            Err(to_login) => return Ok(to_login),
        };
        let notice = Notice::ALL.into_iter().find(|n| n.code() == q.notice);
        let (notice, problem) = match notice.map(Notice::text) {
            Some((text, true)) => (None, Some(text.to_owned())),
            Some((text, false)) => (Some(text.to_owned()), None),
            None => (None, None),
        };
        render(&state, &session, &user, data, notice, problem, None).await
    }
    .await;
    finish(&state, result)
}

/// The page for `user`, with what the last action said, and a token just created.
async fn render(
    state: &AppState,
    session: &Session,
    user: &User,
    mut data: SessionData,
    notice: Option<String>,
    problem: Option<String>,
    new_token: Option<String>,
) -> Result<Response, AuthorizeError> {
    // Written back only when the form token is new: viewing the page changes nothing else.
    let fresh = data.form_csrf.is_none();
    let csrf = data.form_csrf()?;
    if fresh {
        data.save(session).await?;
    }
    let now = state.clock.now();
    let linked = state.store.identities_of(&user.id).await?;
    let name_of = |id: &str| {
        state
            .identity
            .all()
            .find(|p| p.id == id)
            .map_or_else(|| id.to_owned(), |p| p.name.clone())
    };
    let identities = linked
        .into_iter()
        .map(|l| IdentityView {
            provider_name: name_of(&l.identity.provider),
            account: l
                .identity
                .email
                .clone()
                .unwrap_or_else(|| l.identity.subject.clone()),
            linked_at: day(l.linked_at),
            last_used: l.last_sign_in_at.map_or_else(
                || "not used yet".to_owned(),
                |t| format!("last used {}", day(t)),
            ),
            provider: l.identity.provider,
            issuer: l.identity.issuer,
            subject: l.identity.subject,
        })
        .collect();
    let providers = state
        .identity
        .all()
        .map(|p| ProviderView {
            id: p.id.clone(),
            name: p.name.clone(),
        })
        .collect();
    let apps = state
        .store
        .connected_apps(&user.id, now)
        .await?
        .into_iter()
        .map(|app| app_view(state, app))
        .collect();
    let tokens = state
        .store
        .api_tokens(Some(&user.id))
        .await?
        .into_iter()
        .map(|t| token_view(t, now))
        .collect();
    Ok(pages::render(
        StatusCode::OK,
        &AccountPage {
            product: state.config.product_name.clone(),
            username: user.username.as_str().to_owned(),
            notice,
            problem,
            has_password: !user.password_hash.is_empty(),
            identities,
            providers,
            apps,
            tokens,
            token_scopes: state.config.grantable(user),
            lifetimes: lifetimes(&state.config),
            new_token,
            csrf,
        },
    ))
}

/// The lifetimes the create form offers: common ones within the limit, the limit, and "never"
/// where the operator allows it; 90 days first chosen.
fn lifetimes(config: &crate::config::Config) -> Vec<(String, String, bool)> {
    let max = config.api_tokens.max_days;
    let mut days: Vec<u32> = [7, 30, API_TOKEN_DEFAULT_DAYS, 365]
        .into_iter()
        .filter(|d| *d <= max)
        .collect();
    if !days.contains(&max) {
        days.push(max);
    }
    let default = if days.contains(&API_TOKEN_DEFAULT_DAYS) {
        API_TOKEN_DEFAULT_DAYS
    } else {
        max
    };
    let mut out: Vec<(String, String, bool)> = days
        .into_iter()
        .map(|d| (d.to_string(), format!("{d} days"), d == default))
        .collect();
    if config.api_tokens.allow_no_expiry {
        out.push(("never".to_owned(), "Never".to_owned(), false));
    }
    out
}

/// An API token's row.
fn token_view(t: ApiTokenRecord, now: OffsetDateTime) -> TokenView {
    let used = t.last_used_at.map_or_else(
        || "never used".to_owned(),
        |u| format!("last used {}", day(u)),
    );
    let (live, end) = match (t.revoked_at, t.expires_at) {
        (Some(r), _) => (false, format!("revoked {}", day(r))),
        (None, Some(e)) if e <= now => (false, format!("expired {}", day(e))),
        (None, Some(e)) => (true, format!("expires {}", day(e))),
        (None, None) => (true, "never expires".to_owned()),
    };
    TokenView {
        dates: format!("created {} · {used} · {end}", day(t.created_at)),
        id: t.token_id,
        name: t.name,
        scopes: t.scopes,
        live,
    }
}

/// How the page names a connected application: a metadata-document client by the host that
/// vouches for it, any other by the name it was registered with, saying who registered it.
fn app_view(state: &AppState, app: ConnectedApp) -> AppView {
    let host = is_metadata_document(state, &app.client_id)
        .then(|| url::Url::parse(&app.client_id).ok())
        .flatten()
        .and_then(|u| u.host_str().map(str::to_owned));
    let (name, source) = match host {
        Some(host) => (host, "Verified by its address".to_owned()),
        None if app.operator_client => (
            app.client_name.unwrap_or_else(|| app.client_id.clone()),
            "Added by whoever runs this server".to_owned(),
        ),
        None => (
            app.client_name
                .map_or_else(|| app.client_id.clone(), |n| format!("“{n}”")),
            "Registered itself: the name is its own claim".to_owned(),
        ),
    };
    AppView {
        name,
        source,
        scopes: app.scopes.join(" "),
        granted_at: day(app.granted_at),
        last_used: match (app.live_grants, app.last_used_at) {
            (0, _) | (_, None) => "no tokens now".to_owned(),
            (_, Some(t)) => format!("last got tokens {}", day(t)),
        },
        client_id: app.client_id,
    }
}

/// A date as the page shows it.
fn day(t: OffsetDateTime) -> String {
    t.format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_default()
}

/// A form of the page: each carries the session's CSRF token.
trait PageForm {
    fn csrf(&self) -> &str;
}

/// What a form post goes on with: the signed-in user, their session and the form, when the form
/// carries the session's token; else the response that ends it (to sign in, or "not confirmed").
async fn confirmed<F: PageForm>(
    state: &AppState,
    session: &Session,
    form: Option<F>,
) -> Result<Result<(User, SessionData, F), Response>, AuthorizeError> {
    let (user, data) = match signed_in(state, session).await? {
        Ok(found) => found,
        Err(to_login) => return Ok(Err(to_login)),
    };
    Ok(match form {
        Some(form) if tokens_match(data.form_csrf.as_deref().unwrap_or(""), form.csrf()) => {
            Ok((user, data, form))
        }
        _ => Err(form_expired(&state.config.product_name)),
    })
}

/// A page action's response; an error ends on the error page.
fn finish(state: &AppState, result: Result<Response, AuthorizeError>) -> Response {
    result.unwrap_or_else(|e| e.into_response_for(&state.config.product_name))
}

fn form_expired(product: &str) -> Response {
    pages::error(
        product,
        StatusCode::FORBIDDEN,
        "Not confirmed",
        "The form expired.",
        "Open your account page again and try once more.",
    )
}

/// The link form.
#[derive(Debug, Deserialize)]
pub struct LinkForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /account/link/{id}`: sends the browser to provider `id`; its callback links the account
/// there to the signed-in user (if they are still the one signed in when it comes back).
pub async fn link_post(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
    ClientIp(ip): ClientIp,
    form: Result<Form<LinkForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = form.ok().map(|Form(f)| f);
        let (user, _, _) = match confirmed(&state, &session, form).await? {
            Ok(found) => found,
            Err(end) => return Ok(end),
        };
        start(&state, &session, &id, "", Some(user.id), ip).await
    }
    .await;
    finish(&state, result)
}

/// The unlink form: which provider account.
#[derive(Debug, Deserialize)]
pub struct UnlinkForm {
    #[serde(default)]
    csrf: String,
    provider: String,
    issuer: String,
    subject: String,
}

/// `POST /account/unlink`: the provider account no longer signs the user in, unless it is their
/// last way to sign in.
pub async fn unlink_post(
    State(state): State<AppState>,
    session: Session,
    ClientIp(ip): ClientIp,
    form: Result<Form<UnlinkForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = form.ok().map(|Form(f)| f);
        let (user, _, form) = match confirmed(&state, &session, form).await? {
            Ok(found) => found,
            Err(end) => return Ok(end),
        };
        let notice = match state
            .store
            .unlink_identity(&user.id, &form.provider, &form.issuer, &form.subject)
            .await?
        {
            Unlinked::Removed => {
                let identity = ProviderIdentity {
                    provider: form.provider,
                    issuer: form.issuer,
                    subject: form.subject,
                    email: None,
                    email_verified: false,
                };
                let now = state.clock.now();
                let mut event =
                    audit::identity_change("identity.unlinked", &user, &identity, "self", now);
                event.ip = ip.map(|i| i.to_string());
                audit::record(&state.store, event).await?;
                Notice::Unlinked
            }
            Unlinked::LastWay => Notice::LastWay,
            Unlinked::NotLinked => Notice::NotLinked,
        };
        Ok(Redirect::to(&account_notice(notice)).into_response())
    }
    .await;
    finish(&state, result)
}

/// The disconnect form: which application.
#[derive(Debug, Deserialize)]
pub struct DisconnectForm {
    #[serde(default)]
    csrf: String,
    client_id: String,
}

/// `POST /account/apps/disconnect`: the application's grants are revoked (its refresh tokens,
/// and its access tokens at the next call here, within `revocation_sync_interval` elsewhere),
/// its codes voided and the consent forgotten.
pub async fn disconnect_post(
    State(state): State<AppState>,
    session: Session,
    ClientIp(ip): ClientIp,
    form: Result<Form<DisconnectForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = form.ok().map(|Form(f)| f);
        let (user, _, form) = match confirmed(&state, &session, form).await? {
            Ok(found) => found,
            Err(end) => return Ok(end),
        };
        let now = state.clock.now();
        let revoked = state
            .store
            .disconnect_app(&user.id, &form.client_id, "disconnected by the user", now)
            .await?;
        for grant_id in &revoked {
            state.revocations.revoke_grant(grant_id, now);
        }
        let mut event = audit::AuditEvent::new(
            "app.disconnected",
            now,
            serde_json::json!({ "grants_revoked": revoked.len(), "by": "self" }),
        );
        event.subject = Some(user.id.clone());
        event.client_id = Some(form.client_id);
        event.ip = ip.map(|i| i.to_string());
        audit::record(&state.store, event).await?;
        Ok(Redirect::to(&account_notice(Notice::Disconnected)).into_response())
    }
    .await;
    finish(&state, result)
}

/// `POST /account/sign-out-everywhere`: every browser session of the person ends, this one
/// included; connected applications keep working.
pub async fn sign_out_everywhere_post(
    State(state): State<AppState>,
    session: Session,
    ClientIp(ip): ClientIp,
    form: Result<Form<LinkForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = form.ok().map(|Form(f)| f);
        let (user, _, _) = match confirmed(&state, &session, form).await? {
            Ok(found) => found,
            Err(end) => return Ok(end),
        };
        let now = state.clock.now();
        state.store.end_browser_sessions(&user.id, now).await?;
        let mut event =
            audit::AuditEvent::new("logout", now, serde_json::json!({ "everywhere": true }));
        event.subject = Some(user.id.clone());
        event.ip = ip.map(|i| i.to_string());
        audit::record(&state.store, event).await?;
        session
            .flush()
            .await
            .map_err(|e| AuthorizeError::Internal(e.to_string()))?;
        Ok(super::login::signed_out_page(&state))
    }
    .await;
    finish(&state, result)
}

/// The create-token form. `scope` repeats (one per checked box), so it is read by hand.
#[derive(Debug, Default)]
struct CreateForm {
    csrf: String,
    name: String,
    scopes: Vec<String>,
    lifetime: String,
}

impl CreateForm {
    fn parse(body: &[u8]) -> Self {
        let mut form = Self::default();
        for (key, value) in url::form_urlencoded::parse(body) {
            match key.as_ref() {
                "csrf" => form.csrf = value.into_owned(),
                "name" => form.name = value.into_owned(),
                "scope" => form.scopes.push(value.into_owned()),
                "lifetime" => form.lifetime = value.into_owned(),
                _ => {}
            }
        }
        form
    }
}

/// `POST /account/tokens`: creates an API token and shows it once, on the page itself (never in
/// a URL or the session).
pub async fn token_create_post(
    State(state): State<AppState>,
    session: Session,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let form = Some(CreateForm::parse(&body));
        let (user, data, form) = match confirmed(&state, &session, form).await? {
            Ok(found) => found,
            Err(end) => return Ok(end),
        };
        let days = match form.lifetime.as_str() {
            "never" => None,
            "" => Some(API_TOKEN_DEFAULT_DAYS),
            n => match n.parse() {
                Ok(d) => Some(d),
                Err(_) => Some(0),
            },
        };
        let now = state.clock.now();
        let created = super::api_tokens::create(
            &state.store,
            &state.config,
            &user,
            &form.name,
            &form.scopes,
            days,
            "self",
            now,
        )
        .await?;
        match created {
            Ok(created) => {
                let notice = format!("Created “{}”.", created.record.name);
                let token = created.token.expose().to_owned();
                render(
                    &state,
                    &session,
                    &user,
                    data,
                    Some(notice),
                    None,
                    Some(token),
                )
                .await
            }
            Err(refused) => {
                let problem = format!("No token was created: {refused}.");
                render(&state, &session, &user, data, None, Some(problem), None).await
            }
        }
    }
    .await;
    finish(&state, result)
}

/// The revoke-token form.
#[derive(Debug, Deserialize)]
pub struct RevokeTokenForm {
    #[serde(default)]
    csrf: String,
    token_id: String,
}

/// `POST /account/tokens/revoke`: the token stops working at its next call here (within
/// `revocation_sync_interval` on other instances).
pub async fn token_revoke_post(
    State(state): State<AppState>,
    session: Session,
    form: Result<Form<RevokeTokenForm>, FormRejection>,
) -> Response {
    let result = async {
        let form = form.ok().map(|Form(f)| f);
        let (user, _, form) = match confirmed(&state, &session, form).await? {
            Ok(found) => found,
            Err(end) => return Ok(end),
        };
        let now = state.clock.now();
        super::api_tokens::revoke(&state.store, &form.token_id, Some(&user.id), "self", now)
            .await?;
        state.api_tokens.forget(&form.token_id);
        Ok(Redirect::to(&account_notice(Notice::TokenRevoked)).into_response())
    }
    .await;
    finish(&state, result)
}

impl PageForm for LinkForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl PageForm for UnlinkForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl PageForm for DisconnectForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl PageForm for RevokeTokenForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl PageForm for CreateForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}
