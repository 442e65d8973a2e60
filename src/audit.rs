//! The audit log: one function to record an event, one to read them. Events never carry a
//! secret or a token; `detail` is structured JSON.

use serde_json::Value;
use time::OffsetDateTime;

use crate::store::{AuditRecord, Store, StoreError};

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

/// Records an event.
pub async fn record(store: &Store, event: AuditEvent) -> Result<(), StoreError> {
    log(&event);
    store.insert_audit_event(&event).await
}

/// Writes an event to the process log (target `audit`). [`record`] does this; call it directly
/// for an event the store wrote inside the transaction of the change it describes.
pub fn log(event: &AuditEvent) {
    tracing::info!(target: "audit", kind = %event.kind, outcome = event.outcome.as_str(), detail = %event.detail);
}

/// Records an event after the state it describes was already committed: a failure to write it
/// is logged, and must not turn a completed action into an error the client would retry.
pub async fn record_after_commit(store: &Store, event: AuditEvent) {
    let kind = event.kind.clone();
    if let Err(err) = record(store, event).await {
        tracing::error!(error = %err, kind = %kind, "audit event lost: the database refused it");
    }
}

/// Reads events, newest first (see [`Store::audit_events`]).
pub async fn read(
    store: &Store,
    subject: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    store.audit_events(subject, before, limit).await
}
