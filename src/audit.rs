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

/// Audits each grant in `ids`, revoked for `reason` by `by` (`operator` for the command line,
/// else an admin's user name): its user and client where known. The number audited.
pub async fn revoked_grants(
    store: &Store,
    ids: &[String],
    user_id: Option<&str>,
    client_id: Option<&str>,
    reason: &str,
    by: &str,
    now: time::OffsetDateTime,
) -> Result<usize, StoreError> {
    for id in ids {
        let mut event = AuditEvent::new(
            "grant.revoked",
            now,
            serde_json::json!({ "reason": reason, "by": by }),
        );
        event.grant_id = Some(id.clone());
        event.subject = user_id.map(str::to_owned);
        event.client_id = client_id.map(str::to_owned);
        record(store, event).await?;
    }
    Ok(ids.len())
}
