//! The signing-key lifecycle: `next` (published, not signing) -> `current` (signing; exactly one)
//! -> `previous` (published, verifies only) -> `retired` (withdrawn) -> deleted.
//!
//! The schedule is a plain function of the stored keys, the policy and the time ([`due`]), so it
//! is tested with a fixed clock; [`maintain`] carries out what is due. Every step is a conditional
//! update of the row in the state the planner saw, so several instances running the schedule
//! at once make each step exactly once. Every transition is written to the audit log.
//!
//! Why the waits (the failure of other servers, which sign with a key relying parties cannot
//! have fetched yet, or never retire old keys):
//! - a new key is published at least `publish_lead` before it signs, which is longer than the
//!   JWK set's `Cache-Control: max-age` and than the interval at which instances re-read keys, so
//!   every verifier knows a key before the first token it signs;
//! - an old key keeps verifying until the longest access token it signed has expired (access
//!   token lifetime plus the resource side's clock leeway), then is retired.

use serde_json::json;
use time::{Duration, OffsetDateTime};

use super::keyset::new_key_record;
use super::{KeyError, KeyState, Vault};
use crate::audit::{self, AuditEvent};
use crate::config::Config;
use crate::domain::SigningAlgorithm;
use crate::store::{KeyRecord, Store};

/// Slack added to the retirement delay for clock differences between instances.
const RETIRE_MARGIN: Duration = Duration::seconds(60);

/// When keys move on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a key signs before the next one takes over; `None`: only the operator rotates.
    pub interval: Option<Duration>,
    /// How long a new key is published before it signs.
    pub publish_lead: Duration,
    /// How long a previous key keeps verifying after it stopped signing.
    pub retire_delay: Duration,
    /// How long a retired key's record is kept (for `keys list` and the audit trail).
    pub retired_retention: Duration,
}

impl RotationPolicy {
    /// The policy the configuration asks for.
    pub fn from_config(config: &Config) -> Self {
        let leeway = Duration::seconds(i64::try_from(config.mcp.clock_leeway).unwrap_or(300));
        Self {
            interval: config.key_rotation.interval,
            publish_lead: config.key_rotation.publish_lead,
            // An instance that has not yet noticed the activation signs with the old key for
            // up to check_interval more: its tokens must expire before the key is withdrawn.
            retire_delay: config.access_token_ttl
                + leeway
                + config.key_rotation.check_interval
                + RETIRE_MARGIN,
            retired_retention: config.key_rotation.retired_retention,
        }
    }
}

/// One step of the lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Generate a key and publish it as `next`, to sign from `activate_at`.
    PublishNext {
        /// When it starts signing.
        activate_at: OffsetDateTime,
    },
    /// `next` starts signing; `current` becomes `previous` until `retire_after`.
    Activate {
        /// The key that signs now.
        current: String,
        /// The key that takes over.
        next: String,
        /// When the old key may be retired.
        retire_after: OffsetDateTime,
    },
    /// A `previous` key whose tokens have all expired is withdrawn.
    Retire {
        /// The key.
        kid: String,
    },
    /// A retired key's record is deleted.
    Delete {
        /// The key.
        kid: String,
    },
}

/// When the schedule takes its next step of each kind, given every stored key: `publish_next`
/// (a new key is published), `activate` (the next key starts signing), `retire` (the earliest
/// previous key is withdrawn). A step with no date (rotation by the operator only) is absent.
pub fn upcoming(
    keys: &[KeyRecord],
    policy: &RotationPolicy,
) -> Vec<(&'static str, OffsetDateTime)> {
    let mut steps = Vec::new();
    let current = keys.iter().find(|k| k.state == KeyState::Current);
    match (current, keys.iter().find(|k| k.state == KeyState::Next)) {
        (Some(_), Some(next)) => {
            if let Some(at) = next.activate_after {
                steps.push(("activate", at));
            }
        }
        (Some(current), None) => {
            if let Some(interval) = policy.interval {
                let since = current.activated_at.unwrap_or(current.created_at);
                steps.push(("publish_next", since + interval - policy.publish_lead));
            }
        }
        (None, _) => {}
    }
    let retire = keys
        .iter()
        .filter(|k| k.state == KeyState::Previous)
        .filter_map(|k| k.retire_after)
        .min();
    if let Some(at) = retire {
        steps.push(("retire", at));
    }
    steps
}

/// What the schedule says is due at `now`, given every stored key.
pub fn due(keys: &[KeyRecord], policy: &RotationPolicy, now: OffsetDateTime) -> Vec<Transition> {
    let mut steps = Vec::new();
    let current = keys.iter().find(|k| k.state == KeyState::Current);
    let next = keys.iter().find(|k| k.state == KeyState::Next);
    match (current, next) {
        (Some(current), Some(next)) => {
            if next.activate_after.is_none_or(|at| at <= now) {
                steps.push(Transition::Activate {
                    current: current.kid.clone(),
                    next: next.kid.clone(),
                    retire_after: now + policy.retire_delay,
                });
            }
        }
        (Some(current), None) => {
            if let Some(interval) = policy.interval {
                let since = current.activated_at.unwrap_or(current.created_at);
                let rotate_at = since + interval;
                if now >= rotate_at - policy.publish_lead {
                    // A server that was down past the date still publishes for the full lead.
                    steps.push(Transition::PublishNext {
                        activate_at: rotate_at.max(now + policy.publish_lead),
                    });
                }
            }
        }
        // No current key: start-up creates one; nothing to schedule.
        (None, _) => {}
    }
    for key in keys {
        match key.state {
            KeyState::Previous if key.retire_after.is_some_and(|at| at <= now) => {
                steps.push(Transition::Retire {
                    kid: key.kid.clone(),
                });
            }
            KeyState::Retired
                if key
                    .retired_at
                    .is_some_and(|at| at + policy.retired_retention <= now) =>
            {
                steps.push(Transition::Delete {
                    kid: key.kid.clone(),
                });
            }
            _ => {}
        }
    }
    steps
}

/// Carries out what [`due`] says of `keys` (every stored key, just read), returning the steps
/// this call made (another instance may have made some first). The caller reloads the key set
/// when anything changed.
pub async fn maintain(
    store: &Store,
    vault: &Vault,
    alg: SigningAlgorithm,
    policy: &RotationPolicy,
    keys: &[KeyRecord],
    now: OffsetDateTime,
) -> Result<Vec<Transition>, KeyError> {
    let mut done = Vec::new();
    for step in due(keys, policy, now) {
        if apply(store, vault, alg, &step, now, "schedule").await? {
            done.push(step);
        }
    }
    Ok(done)
}

/// A key event for the audit log; `by` (schedule or operator) joins the detail's members.
fn event(kind: &str, now: OffsetDateTime, by: &str, mut detail: serde_json::Value) -> AuditEvent {
    if let serde_json::Value::Object(members) = &mut detail {
        members.insert("by".to_owned(), json!(by));
    }
    AuditEvent::new(kind, now, detail)
}

/// Makes one step. `false` when the keys were no longer in the state the step assumed (another
/// instance or the CLI made it first). `by` names who asked, for the audit log.
pub async fn apply(
    store: &Store,
    vault: &Vault,
    alg: SigningAlgorithm,
    step: &Transition,
    now: OffsetDateTime,
    by: &str,
) -> Result<bool, KeyError> {
    // Activations and retirements change which tokens verify: operators see them in the log.
    let (changed, kind, logged, detail) = match step {
        Transition::PublishNext { activate_at } => {
            return Ok(publish_next(store, vault, alg, *activate_at, now, by)
                .await?
                .is_some());
        }
        Transition::Activate {
            current,
            next,
            retire_after,
        } => (
            store
                .promote_signing_key(current, next, now, *retire_after)
                .await?,
            "key.activated",
            true,
            json!({ "kid": next, "previous": current, "previous_retire_after": retire_after.unix_timestamp() }),
        ),
        // The private half is destroyed when each instance reloads its key set.
        Transition::Retire { kid } => (
            store.retire_signing_key(kid, now).await?,
            "key.retired",
            true,
            json!({ "kid": kid }),
        ),
        Transition::Delete { kid } => (
            store.delete_retired_signing_key(kid).await?,
            "key.deleted",
            false,
            json!({ "kid": kid }),
        ),
    };
    if !changed {
        return Ok(false);
    }
    if logged {
        tracing::warn!(event = kind, detail = %detail, "signing keys changed");
    }
    audit::record(store, event(kind, now, by, detail)).await?;
    Ok(true)
}

/// Generates a key of `alg` and publishes it as `next`, to sign from `activate_at`. `None` when
/// another `next` key already waits (the database admits one).
pub async fn publish_next(
    store: &Store,
    vault: &Vault,
    alg: SigningAlgorithm,
    activate_at: OffsetDateTime,
    now: OffsetDateTime,
    by: &str,
) -> Result<Option<KeyRecord>, KeyError> {
    let mut record = new_key_record(vault, alg, KeyState::Next, now)?;
    record.activate_after = Some(activate_at);
    let kid = record.kid.clone();
    match store.insert_signing_key(&record).await {
        Ok(()) => {}
        Err(crate::store::StoreError::Conflict(_)) => {
            vault.delete_private(&kid);
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(kid = %kid, alg = %alg, activate_at = %activate_at, "new signing key published as next");
    audit::record(
        store,
        event(
            "key.published",
            now,
            by,
            json!({ "kid": kid, "alg": alg.as_str(), "activate_at": activate_at.unix_timestamp() }),
        ),
    )
    .await?;
    Ok(Some(record))
}

/// Why an operator's key command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No key has this id.
    #[error("no signing key has the id {0} (see `gatehouse keys list`)")]
    UnknownKey(String),
    /// The key is already retired.
    #[error("signing key {0} is already retired")]
    AlreadyRetired(String),
    /// A rotation is already under way.
    #[error(
        "signing key {kid} is already published as next and starts signing at {at}; `gatehouse keys rotate --now` activates it at once"
    )]
    NextWaiting {
        /// The waiting key.
        kid: String,
        /// When it activates (RFC 3339).
        at: String,
    },
    /// `rotate --now` for one algorithm while a key of another waits as next (which would sign
    /// instead).
    #[error(
        "signing key {kid} ({waiting}) is waiting as next and `rotate --now` would activate it, not a new {asked} key: retire it first (`gatehouse keys retire {kid}`), or rotate without --alg"
    )]
    NextOtherAlgorithm {
        /// The waiting key.
        kid: String,
        /// Its algorithm.
        waiting: SigningAlgorithm,
        /// The algorithm asked for.
        asked: SigningAlgorithm,
    },
    /// The database has no current key (the server has never started).
    #[error("there is no current signing key yet: start `gatehouse serve` once first")]
    NoCurrent,
    /// Another instance changed the keys at the same moment.
    #[error(
        "the signing keys changed while this command ran; look at `gatehouse keys list` and try again"
    )]
    Raced,
    /// Keys or database failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl From<crate::store::StoreError> for OperatorError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Key(e.into())
    }
}

/// `keys rotate`: publishes a new key as `next`; it signs once `publish_lead` has passed.
pub async fn rotate(
    store: &Store,
    vault: &Vault,
    alg: SigningAlgorithm,
    policy: &RotationPolicy,
    now: OffsetDateTime,
) -> Result<KeyRecord, OperatorError> {
    let keys = store.signing_keys().await?;
    if let Some(next) = keys.iter().find(|k| k.state == KeyState::Next) {
        return Err(OperatorError::NextWaiting {
            kid: next.kid.clone(),
            at: crate::clock::format_time(next.activate_after),
        });
    }
    if !keys.iter().any(|k| k.state == KeyState::Current) {
        return Err(OperatorError::NoCurrent);
    }
    publish_next(
        store,
        vault,
        alg,
        now + policy.publish_lead,
        now,
        "operator",
    )
    .await?
    .ok_or(OperatorError::Raced)
}

/// `keys rotate --now` (emergency): a key signs at once, the waiting `next` key if there is one,
/// else a new one; the old key becomes `previous` and keeps verifying until its tokens expire.
/// Returns the new current key's id.
pub async fn rotate_now(
    store: &Store,
    vault: &Vault,
    alg: SigningAlgorithm,
    policy: &RotationPolicy,
    now: OffsetDateTime,
) -> Result<String, OperatorError> {
    let keys = store.signing_keys().await?;
    let current = keys
        .iter()
        .find(|k| k.state == KeyState::Current)
        .ok_or(OperatorError::NoCurrent)?;
    let next = match keys.iter().find(|k| k.state == KeyState::Next) {
        Some(next) if next.alg != alg => {
            return Err(OperatorError::NextOtherAlgorithm {
                kid: next.kid.clone(),
                waiting: next.alg,
                asked: alg,
            });
        }
        Some(next) => next.kid.clone(),
        None => {
            publish_next(store, vault, alg, now, now, "operator")
                .await?
                .ok_or(OperatorError::Raced)?
                .kid
        }
    };
    let step = Transition::Activate {
        current: current.kid.clone(),
        next: next.clone(),
        retire_after: now + policy.retire_delay,
    };
    if !apply(store, vault, alg, &step, now, "operator").await? {
        // A running server's schedule may have activated the key first (it was due at once):
        // what the operator asked for happened all the same.
        let activated = store
            .signing_key(&next)
            .await?
            .is_some_and(|k| k.state == KeyState::Current);
        if !activated {
            return Err(OperatorError::Raced);
        }
    }
    Ok(next)
}

/// `keys retire KID` (emergency): tokens the key signed stop verifying at once. When it is the
/// current key, another key takes over first (as with `rotate --now`), so signing never stops.
/// Returns the id of the key that signs afterwards.
pub async fn retire_now(
    store: &Store,
    vault: &Vault,
    alg: SigningAlgorithm,
    policy: &RotationPolicy,
    kid: &str,
    now: OffsetDateTime,
) -> Result<String, OperatorError> {
    let keys = store.signing_keys().await?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| OperatorError::UnknownKey(kid.to_owned()))?;
    let signing = match key.state {
        KeyState::Retired => return Err(OperatorError::AlreadyRetired(kid.to_owned())),
        KeyState::Current => rotate_now(store, vault, alg, policy, now).await?,
        KeyState::Next | KeyState::Previous => keys
            .iter()
            .find(|k| k.state == KeyState::Current)
            .map(|k| k.kid.clone())
            .ok_or(OperatorError::NoCurrent)?,
    };
    let step = Transition::Retire {
        kid: kid.to_owned(),
    };
    if !apply(store, vault, alg, &step, now, "operator").await? {
        return Err(OperatorError::Raced);
    }
    Ok(signing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

    fn key(kid: &str, state: KeyState) -> KeyRecord {
        KeyRecord {
            kid: kid.to_owned(),
            alg: SigningAlgorithm::ES256,
            state,
            public_jwk: "{}".to_owned(),
            created_at: T0,
            activated_at: (state == KeyState::Current).then_some(T0),
            retire_after: None,
            retired_at: None,
            activate_after: None,
            private_sealed: None,
        }
    }

    fn policy() -> RotationPolicy {
        RotationPolicy {
            interval: Some(Duration::days(30)),
            publish_lead: Duration::hours(1),
            retire_delay: Duration::hours(2),
            retired_retention: Duration::days(7),
        }
    }

    #[test]
    fn nothing_is_due_before_the_lead_time() {
        let keys = [key("a", KeyState::Current)];
        assert_eq!(due(&keys, &policy(), T0 + Duration::days(29)), vec![]);
    }

    #[test]
    fn next_is_published_one_lead_before_the_rotation_date() {
        let keys = [key("a", KeyState::Current)];
        let at = T0 + Duration::days(30) - Duration::hours(1);
        assert_eq!(
            due(&keys, &policy(), at),
            vec![Transition::PublishNext {
                activate_at: T0 + Duration::days(30)
            }]
        );
    }

    #[test]
    fn a_late_publication_still_waits_the_full_lead() {
        let keys = [key("a", KeyState::Current)];
        let late = T0 + Duration::days(40);
        assert_eq!(
            due(&keys, &policy(), late),
            vec![Transition::PublishNext {
                activate_at: late + Duration::hours(1)
            }]
        );
    }

    #[test]
    fn manual_policy_never_publishes() {
        let keys = [key("a", KeyState::Current)];
        let manual = RotationPolicy {
            interval: None,
            ..policy()
        };
        assert_eq!(due(&keys, &manual, T0 + Duration::days(400)), vec![]);
    }

    #[test]
    fn next_activates_only_when_its_time_has_come() {
        let mut next = key("b", KeyState::Next);
        next.activate_after = Some(T0 + Duration::days(30));
        let keys = [key("a", KeyState::Current), next];
        let before = T0 + Duration::days(30) - Duration::seconds(1);
        assert_eq!(due(&keys, &policy(), before), vec![]);
        let at = T0 + Duration::days(30);
        assert_eq!(
            due(&keys, &policy(), at),
            vec![Transition::Activate {
                current: "a".to_owned(),
                next: "b".to_owned(),
                retire_after: at + Duration::hours(2),
            }]
        );
    }

    #[test]
    fn previous_retires_after_its_delay_and_retired_is_deleted_after_retention() {
        let mut prev = key("p", KeyState::Previous);
        prev.retire_after = Some(T0 + Duration::hours(2));
        let mut old = key("r", KeyState::Retired);
        old.retired_at = Some(T0 - Duration::days(7));
        let keys = [key("a", KeyState::Current), prev, old];
        assert_eq!(
            due(&keys, &policy(), T0 + Duration::hours(1)),
            vec![Transition::Delete {
                kid: "r".to_owned()
            }]
        );
        assert_eq!(
            due(&keys, &policy(), T0 + Duration::hours(2)),
            vec![
                Transition::Retire {
                    kid: "p".to_owned()
                },
                Transition::Delete {
                    kid: "r".to_owned()
                }
            ]
        );
    }
}
