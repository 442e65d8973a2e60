//! The audit log: one function to record an event, one to read them. Events never carry a
//! secret or a token; `detail` is structured JSON.

pub use crate::store::AuditFilter;
pub use crate::store::{AuditEvent, Outcome};
use crate::store::{AuditRecord, Store, StoreError};

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

/// `identity.linked` or `identity.unlinked`: which provider account, for which user, and `by`
/// whom (`operator` from the command line, `self` from the person's own session).
pub fn identity_change(
    kind: &str,
    user: &crate::domain::User,
    identity: &crate::store::ProviderIdentity,
    by: &str,
    at: time::OffsetDateTime,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        kind,
        at,
        serde_json::json!({
            "username": user.username.as_str(),
            "provider": identity.provider,
            "subject": identity.subject,
            "by": by,
        }),
    );
    event.subject = Some(user.id.clone());
    event
}

/// Reads events, newest first (see [`Store::audit_events`]).
pub async fn read(
    store: &Store,
    filter: &AuditFilter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditRecord>, StoreError> {
    store.audit_events(filter, before, limit).await
}

/// The events of each grant in `ids`, revoked for `reason` by `by` (`operator` for the
/// command line, else a user name): its user and client where known.
pub fn revoked_grant_events(
    ids: &[String],
    user_id: Option<&str>,
    client_id: Option<&str>,
    reason: &str,
    by: &str,
    now: time::OffsetDateTime,
) -> Vec<AuditEvent> {
    ids.iter()
        .map(|id| {
            let mut event = AuditEvent::new(
                "grant.revoked",
                now,
                serde_json::json!({ "reason": reason, "by": by }),
            );
            event.grant_id = Some(id.clone());
            event.subject = user_id.map(str::to_owned);
            event.client_id = client_id.map(str::to_owned);
            event
        })
        .collect()
}

/// Records `events` together (one write, not one per event).
pub async fn record_all(store: &Store, events: &[AuditEvent]) -> Result<(), StoreError> {
    for event in events {
        log(event);
    }
    store.insert_audit_events(events).await
}

/// [`record_all`] for events of a change already committed: a failure is logged, and must not
/// turn the completed change into an error the person would retry.
pub async fn record_all_after_commit(store: &Store, events: &[AuditEvent]) {
    if let Err(err) = record_all(store, events).await {
        tracing::error!(error = %err, events = events.len(), "audit events lost: the database refused them");
    }
}
