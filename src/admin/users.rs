//! `/admin` (users): list, add (with a link to choose a password, never a password typed by
//! the admin), roles, lock and unlock, remove, a new password link.

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::{Action, Admin, Fields, answer, back, event, page, render, with_notice};
use crate::audit;
use crate::domain::{User, Username};
use crate::oauth::error::AuthorizeError;
use crate::pages::{AdminPage, AdminUserRow};
use crate::routes;
use crate::state::AppState;

/// `?notice=` of an admin page. An extractor that never refuses: a query that does not read
/// (a hand-edited link) is no notice, not axum's plain-text 400.
#[derive(Debug, Default)]
pub struct NoticeQuery {
    notice: String,
}

#[derive(Deserialize)]
struct NoticeFields {
    #[serde(default)]
    notice: String,
}

impl NoticeQuery {
    /// The notice's code.
    pub fn notice(&self) -> &str {
        &self.notice
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for NoticeQuery {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let notice = Query::<NoticeFields>::try_from_uri(&parts.uri)
            .map(|Query(fields)| fields.notice)
            .unwrap_or_default();
        Ok(Self { notice })
    }
}

/// What the users page shows above its list.
#[derive(Debug, Default)]
struct Shown {
    /// A `?notice=` code.
    notice: String,
    /// A link shown once: whose, and the link.
    link: Option<(String, String)>,
    /// Why the form was refused.
    problem: Option<&'static str>,
}

/// The users page.
async fn users_page(
    state: &AppState,
    mut admin: Admin,
    shown: Shown,
) -> Result<Response, AuthorizeError> {
    let mut page: AdminPage = page(state, &mut admin, "users")?;
    with_notice(&mut page, &shown.notice);
    page.shown_link = shown.link;
    if let Some(problem) = shown.problem {
        page.problem = Some(problem.to_owned());
    }
    let mut sources = state.store.all_role_sources().await?;
    let mut providers = state.store.providers_by_user().await?;
    for user in state.store.users().await? {
        let mut ways: Vec<String> = Vec::new();
        if !user.password_hash.is_empty() {
            ways.push("a password".to_owned());
        }
        ways.extend(providers.remove(&user.id).unwrap_or_default());
        let ways = if ways.is_empty() {
            "no way to sign in yet".to_owned()
        } else {
            format!("signs in with {}", ways.join(", "))
        };
        let (granted, provided) = sources.remove(&user.id).unwrap_or_default();
        page.users.push(AdminUserRow {
            roles: page
                .roles
                .iter()
                .map(|r| (r.clone(), granted.contains(r)))
                .collect(),
            provider_roles: provided.join(", "),
            meta: format!(
                "created {} · {ways}",
                crate::clock::format_time(Some(user.created_at))
            ),
            locked: user.locked_at.is_some(),
            is_self: user.id == admin.user.id,
            name: user.username.as_str().to_owned(),
            id: user.id,
        });
    }
    render(&admin, &page).await
}

/// `GET /admin`
pub async fn users_get(State(state): State<AppState>, admin: Admin, q: NoticeQuery) -> Response {
    let shown = Shown {
        notice: q.notice,
        ..Shown::default()
    };
    answer(&state, users_page(&state, admin, shown).await)
}

/// What a user action asks for.
#[derive(Debug, Clone, Copy)]
enum UserAction {
    Add,
    Roles,
    Lock,
    Unlock,
    Remove,
    ResetLink,
}

macro_rules! post_handler {
    ($name:ident, $action:expr) => {
        #[doc = concat!("`POST` of the users page: ", stringify!($name), ".")]
        pub async fn $name(State(state): State<AppState>, action: Action) -> Response {
            let result = user_action(&state, action, $action).await;
            answer(&state, result)
        }
    };
}

post_handler!(add_post, UserAction::Add);
post_handler!(roles_post, UserAction::Roles);
post_handler!(lock_post, UserAction::Lock);
post_handler!(unlock_post, UserAction::Unlock);
post_handler!(remove_post, UserAction::Remove);
post_handler!(reset_link_post, UserAction::ResetLink);

async fn user_action(
    state: &AppState,
    Action { admin, fields }: Action,
    what: UserAction,
) -> Result<Response, AuthorizeError> {
    let user = match what {
        UserAction::Add => return add(state, admin, &fields).await,
        _ => state.store.user(fields.get("user_id")).await?,
    };
    let Some(user) = user else {
        return Ok(back(routes::ADMIN, "no-such-user"));
    };
    match what {
        UserAction::Add => add(state, admin, &fields).await,
        UserAction::Roles => roles(state, &admin, &user, &fields).await,
        UserAction::Lock => lock(state, &admin, &user).await,
        UserAction::Unlock => unlock(state, &admin, &user).await,
        UserAction::Remove => remove(state, &admin, &user, &fields).await,
        UserAction::ResetLink => {
            let Some(link) = reset_link(state, &admin, &user).await? else {
                return Ok(back(routes::ADMIN, "no-password-sign-in"));
            };
            let shown = Shown {
                link: Some((user.username.as_str().to_owned(), link)),
                ..Shown::default()
            };
            users_page(state, admin, shown).await
        }
    }
}

/// The roles in `fields` (`role`, repeated), if each is configured.
fn chosen_roles(state: &AppState, fields: &Fields) -> Option<Vec<String>> {
    let roles = fields.all("role");
    roles
        .iter()
        .all(|r| state.config.roles.contains_key(r))
        .then_some(roles)
}

/// A new user with the roles ticked and no password: the page shows a link, once, where they
/// choose one.
async fn add(state: &AppState, admin: Admin, fields: &Fields) -> Result<Response, AuthorizeError> {
    let now = state.clock.now();
    let Ok(username) = Username::parse(fields.get("username").trim()) else {
        let problem = "That user name does not work: use 1 to 64 letters, digits and . _ - @.";
        return refused(state, admin, problem).await;
    };
    let Some(roles) = chosen_roles(state, fields) else {
        return Ok(back(routes::ADMIN, "unknown-role"));
    };
    let id = User::new_id()
        .map_err(|_| AuthorizeError::Internal("random number generator failed".to_owned()))?;
    let user = User::new(id, username, String::new(), roles.clone(), now);
    match state.store.insert_user(&user).await {
        Ok(()) => {}
        Err(crate::store::StoreError::Conflict(_)) => {
            let problem = "A user with that name exists already.";
            return refused(state, admin, problem).await;
        }
        Err(e) => return Err(e.into()),
    }
    let mut audited = event(
        &admin.user,
        "user.added",
        now,
        json!({ "username": user.username.as_str(), "roles": roles }),
    );
    audited.subject = Some(user.id.clone());
    audit::record(&state.store, audited).await?;
    let link = reset_link(state, &admin, &user).await?;
    let shown = Shown {
        link: link.map(|link| (user.username.as_str().to_owned(), link)),
        ..Shown::default()
    };
    users_page(state, admin, shown).await
}

/// The users page again with `problem` on top (the add form refused).
async fn refused(
    state: &AppState,
    admin: Admin,
    problem: &'static str,
) -> Result<Response, AuthorizeError> {
    let shown = Shown {
        problem: Some(problem),
        ..Shown::default()
    };
    users_page(state, admin, shown).await
}

async fn roles(
    state: &AppState,
    admin: &Admin,
    user: &User,
    fields: &Fields,
) -> Result<Response, AuthorizeError> {
    let Some(roles) = chosen_roles(state, fields) else {
        return Ok(back(routes::ADMIN, "unknown-role"));
    };
    // The form sets the roles an admin grants; those a provider grants stay as they are.
    let admin_role = &state.config.mcp.admin_role;
    let (_, provided) = state
        .store
        .role_sources(&user.id)
        .await?
        .unwrap_or_default();
    if user.id == admin.user.id && !roles.contains(admin_role) && !provided.contains(admin_role) {
        return Ok(back(routes::ADMIN, "self"));
    }
    if !state.store.set_roles(&user.id, &roles).await? {
        return Ok(back(routes::ADMIN, "no-such-user"));
    }
    state.users.forget(&user.id);
    let now = state.clock.now();
    let mut audited = event(
        &admin.user,
        "user.roles_set",
        now,
        json!({ "username": user.username.as_str(), "roles": roles }),
    );
    audited.subject = Some(user.id.clone());
    audit::record(&state.store, audited).await?;
    Ok(back(routes::ADMIN, "roles"))
}

async fn lock(state: &AppState, admin: &Admin, user: &User) -> Result<Response, AuthorizeError> {
    if user.id == admin.user.id {
        return Ok(back(routes::ADMIN, "self"));
    }
    let now = state.clock.now();
    let Some(revoked) = state.store.lock_user(&user.id, now).await? else {
        return Ok(back(routes::ADMIN, "no-such-user"));
    };
    ended(state, admin, user, &revoked, ("user.locked", "locked"), now).await?;
    Ok(back(routes::ADMIN, "locked"))
}

async fn unlock(state: &AppState, admin: &Admin, user: &User) -> Result<Response, AuthorizeError> {
    if !state.store.unlock_user(&user.id).await? {
        return Ok(back(routes::ADMIN, "no-such-user"));
    }
    state.users.forget(&user.id);
    let mut audited = event(
        &admin.user,
        "user.unlocked",
        state.clock.now(),
        json!({ "username": user.username.as_str() }),
    );
    audited.subject = Some(user.id.clone());
    audit::record(&state.store, audited).await?;
    Ok(back(routes::ADMIN, "unlocked"))
}

/// After `user` was locked or removed (`what`: the event's kind and the grants' reason): their
/// revoked grants end here at once (other instances at their next sync), their cached roles
/// are dropped, and each grant's end and the action are audited with the admin's name.
async fn ended(
    state: &AppState,
    admin: &Admin,
    user: &User,
    revoked: &[String],
    what: (&str, &str),
    now: time::OffsetDateTime,
) -> Result<(), AuthorizeError> {
    let (kind, reason) = what;
    for grant in revoked {
        state.revocations.revoke_grant(grant, now);
    }
    state.users.forget(&user.id);
    let by = admin.user.username.as_str();
    let mut events = audit::revoked_grant_events(revoked, Some(&user.id), None, reason, by, now);
    let detail = json!({ "username": user.username.as_str(), "grants_revoked": revoked.len() });
    let mut audited = event(&admin.user, kind, now, detail);
    audited.subject = Some(user.id.clone());
    events.push(audited);
    audit::record_all_after_commit(&state.store, &events).await;
    Ok(())
}

/// Removes `user` once the admin typed their name (`confirm`).
async fn remove(
    state: &AppState,
    admin: &Admin,
    user: &User,
    fields: &Fields,
) -> Result<Response, AuthorizeError> {
    if user.id == admin.user.id {
        return Ok(back(routes::ADMIN, "self"));
    }
    if fields.get("confirm").trim() != user.username.as_str() {
        return Ok(back(routes::ADMIN, "not-confirmed"));
    }
    let now = state.clock.now();
    let reason = "user removed";
    let Some(revoked) = state.store.remove_user(&user.id, reason, now).await? else {
        return Ok(back(routes::ADMIN, "no-such-user"));
    };
    ended(state, admin, user, &revoked, ("user.removed", reason), now).await?;
    Ok(back(routes::ADMIN, "removed"))
}

/// A new link where `user` chooses a password (their earlier links stop working), audited;
/// none while password sign-in is off (`local_login = false`): nobody could use the password.
async fn reset_link(
    state: &AppState,
    admin: &Admin,
    user: &User,
) -> Result<Option<String>, AuthorizeError> {
    if !state.config.local_login {
        return Ok(None);
    }
    let now = state.clock.now();
    let link = crate::account::reset::new_link(&state.config, &state.store, &user.id, now)
        .await
        .map_err(|e| AuthorizeError::Internal(e.to_string()))?;
    let mut audited = event(
        &admin.user,
        "user.password_link",
        now,
        json!({ "username": user.username.as_str() }),
    );
    audited.subject = Some(user.id.clone());
    audit::record(&state.store, audited).await?;
    Ok(Some(link))
}
