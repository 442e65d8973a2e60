//! The `audit_events` table, and the event it holds (recorded through [`crate::audit`]).

use serde_json::Value;
use time::OffsetDateTime;

use super::write::Insert;
use super::{Store, StoreError};

/// Whether the audited action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused or failed.
    Failure,
}

impl Outcome {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// One audit event.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// When it happened.
    pub at: OffsetDateTime,
    /// Dotted event name, e.g. `key.generated`.
    pub kind: String,
    /// Success or failure.
    pub outcome: Outcome,
    /// The user it concerns.
    pub subject: Option<String>,
    /// The OAuth client it concerns.
    pub client_id: Option<String>,
    /// The grant it concerns.
    pub grant_id: Option<String>,
    /// The client IP, when the event came from a request.
    pub ip: Option<String>,
    /// Structured details (never secrets).
    pub detail: Value,
}

impl AuditEvent {
    /// A successful event with no subject; add fields with struct update syntax or setters.
    pub fn new(kind: &str, at: OffsetDateTime, detail: Value) -> Self {
        Self {
            at,
            kind: kind.to_owned(),
            outcome: Outcome::Success,
            subject: None,
            client_id: None,
            grant_id: None,
            ip: None,
            detail,
        }
    }

    /// Marks the event as a failure.
    pub fn failed(mut self) -> Self {
        self.outcome = Outcome::Failure;
        self
    }
}

/// An audit event as read back, with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Monotonic id.
    pub id: i64,
    /// The event.
    pub event: AuditEvent,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    kind: String,
    outcome: String,
    subject: Option<String>,
    client_id: Option<String>,
    grant_id: Option<String>,
    ip: Option<String>,
    detail: String,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = StoreError;
    fn try_from(row: AuditRow) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("audit event {}: {what}", row.id));
        Ok(Self {
            id: row.id,
            event: AuditEvent {
                at: OffsetDateTime::from_unix_timestamp(row.at)
                    .map_err(|e| corrupt(e.to_string()))?,
                kind: row.kind.clone(),
                outcome: match row.outcome.as_str() {
                    "success" => Outcome::Success,
                    "failure" => Outcome::Failure,
                    other => return Err(corrupt(format!("outcome {other:?}"))),
                },
                subject: row.subject,
                client_id: row.client_id,
                grant_id: row.grant_id,
                ip: row.ip,
                detail: serde_json::from_str(&row.detail).map_err(|e| corrupt(e.to_string()))?,
            },
        })
    }
}

impl Store {
    /// Appends one event (on SQLite, in the next group commit: events come one per MCP tool
    /// call, and each alone was a transaction of its own).
    pub async fn insert_audit_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.append(audit_insert(event)).await
    }

    /// Appends `events` together: one write per thousand (a statement's parameters are
    /// bounded on PostgreSQL), not one per event.
    pub async fn insert_audit_events(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        for chunk in events.chunks(1000) {
            self.append_all(chunk.iter().map(audit_insert).collect())
                .await?;
        }
        Ok(())
    }

    /// The newest events first that `filter` lets through, at most `limit`, older than `before`
    /// (an id) for paging.
    pub async fn audit_events(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, kind, outcome, subject, client_id, grant_id, ip, detail FROM audit_events \
             WHERE ($1 IS NULL OR subject = $1) AND ($2 IS NULL OR client_id = $2) \
             AND ($3 IS NULL OR kind = $3 OR substr(kind, 1, length($3) + 1) = $3 || '.') \
             AND ($4 IS NULL OR outcome = $4) \
             AND ($5 IS NULL OR at >= $5) AND ($6 IS NULL OR at < $6) AND ($7 IS NULL OR id < $7) \
             ORDER BY id DESC LIMIT $8",
        )
        .bind(filter.subject.as_deref())
        .bind(filter.client_id.as_deref())
        .bind(filter.kind.as_deref())
        .bind(filter.outcome.map(Outcome::as_str))
        .bind(filter.since.map(OffsetDateTime::unix_timestamp))
        .bind(filter.until.map(OffsetDateTime::unix_timestamp))
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.into_iter().map(AuditRecord::try_from).collect()
    }
}

/// Which audit events to read; every field unset lets all through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only this user's (their id).
    pub subject: Option<String>,
    /// Only this client's.
    pub client_id: Option<String>,
    /// Only this kind, or the kinds under it (`login` takes `login.success`, `login.failure`).
    pub kind: Option<String>,
    /// Only this outcome.
    pub outcome: Option<Outcome>,
    /// Only at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only before this time.
    pub until: Option<OffsetDateTime>,
}

/// The row of one event, to insert on its own or inside the transaction of the change it
/// records (so that both commit together).
pub(super) fn audit_insert(event: &AuditEvent) -> Insert {
    Insert {
        table: "audit_events",
        columns: "at, kind, outcome, subject, client_id, grant_id, ip, detail",
        values: vec![
            event.at.unix_timestamp().into(),
            event.kind.as_str().into(),
            event.outcome.as_str().into(),
            event.subject.as_deref().into(),
            event.client_id.as_deref().into(),
            event.grant_id.as_deref().into(),
            event.ip.as_deref().into(),
            event.detail.to_string().into(),
        ],
        what: "audit event".to_owned(),
    }
}
