//! `/admin/clients` (every registered client; remove), `/admin/keys` (the signing keys and
//! their schedule; publish a new key; retire one with its id typed as confirmation) and
//! `/admin/upstreams` (gateway mode's upstream MCP servers, their live sessions, and a check that
//! contacts each now).

use axum::extract::State;
use axum::response::Response;
use serde_json::json;

use super::users::NoticeQuery;
use super::{Action, Admin, answer, back, event, page, render, with_notice};
use crate::audit;
use crate::clock::format_time;
use crate::domain::{ClientKind, KeyState};
use crate::keys::{RotationPolicy, lifecycle};
use crate::oauth::error::AuthorizeError;
use crate::pages::{AdminClientRow, AdminKeyRow, AdminUpstreamRow};
use crate::routes;
use crate::state::AppState;

/// `GET /admin/clients`
pub async fn clients_get(
    State(state): State<AppState>,
    mut admin: Admin,
    q: NoticeQuery,
) -> Response {
    let result = async {
        let mut page = page(&state, &mut admin, "clients")?;
        with_notice(&mut page, q.notice());
        for client in state.store.clients().await? {
            let kind = match client.kind {
                ClientKind::Dynamic => "registered itself",
                ClientKind::Operator => "added by an operator",
                ClientKind::MetadataDocument => "metadata document",
            };
            let mut hosts: Vec<&str> = client
                .redirect_uris
                .iter()
                .filter_map(|u| u.host())
                .collect();
            hosts.dedup();
            page.clients.push(AdminClientRow {
                name: client
                    .display_name()
                    .unwrap_or_else(|| "(no name)".to_owned()),
                kind: kind.to_owned(),
                meta: format!(
                    "redirects to {} · created {} · last used {}",
                    if hosts.is_empty() {
                        "-".to_owned()
                    } else {
                        hosts.join(", ")
                    },
                    format_time(Some(client.created_at)),
                    format_time(client.last_used_at),
                ),
                id: client.id,
            });
        }
        render(&admin, &page).await
    }
    .await;
    answer(&state, result)
}

/// `POST /admin/clients/remove`: the client, its grants and their tokens.
pub async fn client_remove_post(
    State(state): State<AppState>,
    Action { admin, fields }: Action,
) -> Response {
    let result = async {
        let client_id = fields.get("client_id");
        let now = state.clock.now();
        let reason = "client removed";
        let Some(revoked) = state.store.remove_client(client_id, reason, now).await? else {
            return Ok(back(routes::ADMIN_CLIENTS, "no-such-client"));
        };
        state.clients.forget(client_id);
        for grant in &revoked {
            state.revocations.revoke_grant(grant, now);
        }
        let by = admin.user.username.as_str();
        let mut events =
            audit::revoked_grant_events(&revoked, None, Some(client_id), reason, by, now);
        let mut audited = event(
            &admin.user,
            "client.removed",
            now,
            json!({ "grants_revoked": revoked.len() }),
        );
        audited.client_id = Some(client_id.to_owned());
        events.push(audited);
        audit::record_all_after_commit(&state.store, &events).await;
        Ok(back(routes::ADMIN_CLIENTS, "client-removed"))
    }
    .await;
    answer(&state, result)
}

/// `GET /admin/keys`
pub async fn keys_get(State(state): State<AppState>, mut admin: Admin, q: NoticeQuery) -> Response {
    let result = async {
        let mut page = page(&state, &mut admin, "keys")?;
        with_notice(&mut page, q.notice());
        let keys = state.store.signing_keys().await?;
        let policy = RotationPolicy::from_config(&state.config);
        for (step, at) in lifecycle::upcoming(&keys, &policy) {
            let what = match step {
                "publish_next" => "a new key is published",
                "activate" => "the next key starts signing",
                _ => "the previous key is retired",
            };
            page.steps
                .push(format!("{}: {what}", format_time(Some(at))));
        }
        if policy.interval.is_none() {
            page.steps.push(
                "Keys rotate only when an operator publishes one (key_rotation.interval = 0)."
                    .to_owned(),
            );
        }
        for key in keys {
            let signs = key.activated_at.or(key.activate_after);
            page.keys.push(AdminKeyRow {
                alg: key.alg.as_str().to_owned(),
                state: key.state.as_str().to_owned(),
                meta: format!(
                    "created {} · signs from {} · {} {}",
                    format_time(Some(key.created_at)),
                    format_time(signs),
                    if key.state == KeyState::Retired {
                        "retired"
                    } else {
                        "retire after"
                    },
                    format_time(key.retired_at.or(key.retire_after)),
                ),
                retirable: key.state != KeyState::Retired,
                kid: key.kid,
            });
        }
        render(&admin, &page).await
    }
    .await;
    answer(&state, result)
}

/// `POST /admin/keys/rotate`: publishes a new key as `next` (it signs after the publish lead),
/// as `gatehouse keys rotate` does.
pub async fn keys_rotate_post(
    State(state): State<AppState>,
    Action { admin, .. }: Action,
) -> Response {
    let result = async {
        let now = state.clock.now();
        let policy = RotationPolicy::from_config(&state.config);
        let alg = state.config.signing_algorithm;
        let vault = state.keys.vault();
        let done = lifecycle::rotate(&state.store, vault, alg, &policy, now)
            .await
            .map(|key| json!({ "kid": key.kid, "activate_at": format_time(key.activate_after) }));
        key_changed(
            &state,
            &admin.user,
            ("key.rotate_requested", "rotated"),
            done,
        )
        .await
    }
    .await;
    answer(&state, result)
}

/// `POST /admin/keys/retire`: withdraws key `kid` at once (its tokens stop verifying) once the
/// admin typed its id (`confirm`); a current key is first replaced, as `gatehouse keys retire`.
pub async fn keys_retire_post(
    State(state): State<AppState>,
    Action { admin, fields }: Action,
) -> Response {
    let result = async {
        let kid = fields.get("kid");
        if kid.is_empty() || fields.get("confirm").trim() != kid {
            return Ok(back(routes::ADMIN_KEYS, "not-confirmed"));
        }
        let now = state.clock.now();
        let policy = RotationPolicy::from_config(&state.config);
        let alg = state.config.signing_algorithm;
        let vault = state.keys.vault();
        let done = lifecycle::retire_now(&state.store, vault, alg, &policy, kid, now)
            .await
            .map(|signing| json!({ "kid": kid, "signing_key": signing }));
        key_changed(
            &state,
            &admin.user,
            ("key.retire_requested", "retired"),
            done,
        )
        .await
    }
    .await;
    answer(&state, result)
}

/// The answer to a key action (`what`: its event's kind and its notice): on success, this
/// instance reloads the keys and the action is audited with `detail`; a refusal is logged and
/// named on the page.
async fn key_changed(
    state: &AppState,
    admin: &crate::domain::User,
    what: (&str, &str),
    done: Result<serde_json::Value, lifecycle::OperatorError>,
) -> Result<Response, AuthorizeError> {
    let (kind, notice) = what;
    match done {
        Ok(detail) => {
            reload_keys(state).await;
            audit::record(&state.store, event(admin, kind, state.clock.now(), detail)).await?;
            Ok(back(routes::ADMIN_KEYS, notice))
        }
        Err(err) => {
            tracing::warn!(error = %err, "admin console: a key change was refused");
            Ok(back(routes::ADMIN_KEYS, "key-refused"))
        }
    }
}

/// This instance uses the keys as stored now (others read them within
/// `key_rotation.check_interval`).
async fn reload_keys(state: &AppState) {
    if let Err(err) = state.keys.reload(&state.store).await {
        tracing::error!(error = %err, "cannot reload signing keys after an admin's change");
    }
}

/// What a check of every upstream found: each name with its tools, or why it is unreachable.
type Probed = Vec<(String, Result<Vec<String>, String>)>;

/// The upstreams page, with the results of a check when one was just made.
async fn upstreams_page(
    state: &AppState,
    mut admin: Admin,
    notice: &str,
    checked: Option<Probed>,
) -> Result<Response, AuthorizeError> {
    let mut page = page(state, &mut admin, "upstreams")?;
    with_notice(&mut page, notice);
    for status in state.gateway.status() {
        let check = checked.as_ref().and_then(|all| {
            all.iter()
                .find(|(name, _)| *name == status.name)
                .map(|(_, r)| match r {
                    Ok(tools) => (
                        true,
                        format!("reachable: {} tools ({})", tools.len(), tools.join(", ")),
                    ),
                    Err(why) => (false, format!("not reachable: {why}")),
                })
        });
        let mut meta = format!(
            "{} · {} · {} tools",
            status.transport,
            status.protocol.unwrap_or("protocol not known yet"),
            status.tools
        );
        if !status.collisions.is_empty() {
            meta.push_str(&format!(
                " · colliding names not served: {}",
                status.collisions.join(", ")
            ));
        }
        page.upstreams.push(AdminUpstreamRow {
            sessions: status
                .sessions
                .iter()
                .map(|s| {
                    let pid = s.pid.map(|p| format!(", process {p}")).unwrap_or_default();
                    format!(
                        "{}: open {} s, idle {} s{pid}",
                        s.subject, s.age_seconds, s.idle_seconds
                    )
                })
                .collect(),
            name: status.name,
            meta,
            check,
        });
    }
    render(&admin, &page).await
}

/// `GET /admin/upstreams`
pub async fn upstreams_get(
    State(state): State<AppState>,
    admin: Admin,
    q: NoticeQuery,
) -> Response {
    answer(
        &state,
        upstreams_page(&state, admin, q.notice(), None).await,
    )
}

/// `POST /admin/upstreams/check`: contacts every upstream now, as `gatehouse upstreams check`.
pub async fn upstreams_check_post(
    State(state): State<AppState>,
    Action { admin, .. }: Action,
) -> Response {
    let result = async {
        let results = state
            .gateway
            .probe(&crate::gateway::Caller::operator())
            .await;
        let detail = json!({
            "reachable": results.iter().filter(|(_, r)| r.is_ok()).count(),
            "unreachable": results.iter().filter(|(_, r)| r.is_err()).map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        });
        audit::record(&state.store, event(&admin.user, "upstreams.checked", state.clock.now(), detail))
            .await?;
        upstreams_page(&state, admin, "checked", Some(results)).await
    }
    .await;
    answer(&state, result)
}
