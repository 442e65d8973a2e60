//! `/admin/audit`: the audit log, newest first, filtered by user, client, kind, outcome and
//! days, fifty events a page; `/admin/audit/export` gives what the same filter lets through as
//! JSON lines (one event per line, at most [`EXPORT_MAX`] per request).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use time::{Date, Duration, OffsetDateTime};

use super::{Admin, answer, page, render};
use crate::audit::{AuditFilter, Outcome};
use crate::clock::format_time;
use crate::oauth::error::AuthorizeError;
use crate::pages::{AdminEventRow, AuditFilterView};
use crate::routes;
use crate::state::AppState;
use crate::store::AuditRecord;

/// Events on one page.
const PAGE: i64 = 50;
/// Most events one export gives; `X-Next-Before` then names where the next one starts.
pub const EXPORT_MAX: i64 = 10_000;

/// The filter as the form sends it (every field may be empty).
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    user: String,
    #[serde(default)]
    client: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Older than this event id (paging).
    #[serde(default)]
    before: Option<i64>,
}

impl AuditQuery {
    fn view(&self) -> AuditFilterView {
        AuditFilterView {
            user: self.user.clone(),
            client: self.client.clone(),
            kind: self.kind.clone(),
            outcome: self.outcome.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
        }
    }

    /// The query string of this filter (without `before`).
    fn query_string(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("user", &self.user),
                ("client", &self.client),
                ("kind", &self.kind),
                ("outcome", &self.outcome),
                ("since", &self.since),
                ("until", &self.until),
            ])
            .finish()
    }
}

/// A day typed as `YYYY-MM-DD`, at its start (UTC).
fn day(text: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text.trim(), &format)
        .ok()
        .map(|d| d.midnight().assume_utc())
}

/// The store's filter for `q`; the user is looked up by name. `Err` names a field that does
/// not read (then nothing is listed).
async fn filter(
    state: &AppState,
    q: &AuditQuery,
) -> Result<Result<AuditFilter, String>, AuthorizeError> {
    let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let subject = match text(&q.user) {
        Some(name) => match state.store.user_by_name(&name).await? {
            Some(user) => Some(user.id),
            // An id (a removed user's events keep it) is taken as it is.
            None => Some(name),
        },
        None => None,
    };
    let outcome = match q.outcome.as_str() {
        "" => None,
        "success" => Some(Outcome::Success),
        "failure" => Some(Outcome::Failure),
        _ => return Ok(Err("outcome must be success or failure".to_owned())),
    };
    let since = match text(&q.since) {
        Some(s) => match day(&s) {
            Some(at) => Some(at),
            None => return Ok(Err("from: a day as YYYY-MM-DD".to_owned())),
        },
        None => None,
    };
    let until = match text(&q.until) {
        Some(s) => match day(&s) {
            // The day's end: the last day `time` knows has none.
            Some(at) => match at.checked_add(Duration::days(1)) {
                Some(end) => Some(end),
                None => return Ok(Err("through: a day before 9999-12-31".to_owned())),
            },
            None => return Ok(Err("through: a day as YYYY-MM-DD".to_owned())),
        },
        None => None,
    };
    Ok(Ok(AuditFilter {
        subject,
        client_id: text(&q.client),
        kind: text(&q.kind),
        outcome,
        since,
        until,
    }))
}

/// `GET /admin/audit`
pub async fn audit_get(
    State(state): State<AppState>,
    mut admin: Admin,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let mut page = page(&state, &mut admin, "audit")?;
        let q = match query {
            Ok(Query(q)) => q,
            Err(rejection) => {
                page.problem = Some(format!(
                    "The filter does not read: {}.",
                    rejection.body_text()
                ));
                return render(&admin, &page).await;
            }
        };
        page.filter = q.view();
        page.export_href = format!("{}?{}", routes::ADMIN_AUDIT_EXPORT, q.query_string());
        match filter(&state, &q).await? {
            Ok(filter) => {
                let events = state.store.audit_events(&filter, q.before, PAGE).await?;
                if events.len() == PAGE as usize {
                    if let Some(last) = events.last() {
                        page.next_page = Some(format!(
                            "{}?{}&before={}",
                            routes::ADMIN_AUDIT,
                            q.query_string(),
                            last.id
                        ));
                    }
                }
                page.events = events.iter().map(row).collect();
            }
            Err(problem) => page.problem = Some(format!("The filter does not read: {problem}.")),
        }
        render(&admin, &page).await
    }
    .await;
    answer(&state, result)
}

fn row(record: &AuditRecord) -> AdminEventRow {
    let e = &record.event;
    let mut who = Vec::new();
    if let Some(subject) = &e.subject {
        who.push(format!("user {subject}"));
    }
    if let Some(client) = &e.client_id {
        who.push(format!("client {client}"));
    }
    if let Some(ip) = &e.ip {
        who.push(format!("from {ip}"));
    }
    AdminEventRow {
        at: format_time(Some(e.at)),
        kind: e.kind.clone(),
        failed: e.outcome == Outcome::Failure,
        who: who.join(" · "),
        detail: e.detail.to_string(),
    }
}

/// `GET /admin/audit/export`: JSON lines, newest first.
pub async fn audit_export_get(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(rejection) => {
            return crate::web::json_error(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_request",
                &rejection.body_text(),
            );
        }
    };
    let result = async {
        let filter = match filter(&state, &q).await? {
            Ok(filter) => filter,
            Err(problem) => {
                return Ok(crate::web::json_error(
                    axum::http::StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &problem,
                ));
            }
        };
        let events = state
            .store
            .audit_events(&filter, q.before, EXPORT_MAX)
            .await?;
        let mut lines = String::new();
        for record in &events {
            let e = &record.event;
            let line = json!({
                "id": record.id,
                "at": e.at.unix_timestamp(),
                "kind": e.kind,
                "outcome": e.outcome.as_str(),
                "subject": e.subject,
                "client_id": e.client_id,
                "grant_id": e.grant_id,
                "ip": e.ip,
                "detail": e.detail,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        let mut response = (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-ndjson"),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"gatehouse-audit.jsonl\""),
                ),
            ],
            lines,
        )
            .into_response();
        if events.len() == EXPORT_MAX as usize {
            if let Some(last) = events.last() {
                response
                    .headers_mut()
                    .insert("x-next-before", HeaderValue::from(last.id));
            }
        }
        Ok(response)
    }
    .await;
    answer(&state, result)
}
