//! Creating API tokens, for a person from their page or for them by an admin: a name, scopes
//! within what the person's roles allow, and a lifetime within `[api_tokens]`. The token is
//! returned once; only its hash is stored. Every creation and revocation is audited, naming the
//! token by its id.

use time::OffsetDateTime;

use crate::audit::{self, AuditEvent};
use crate::config::Config;
use crate::domain::{NewApiToken, Secret, User};
use crate::store::{ApiTokenRecord, Store, StoreError};

/// Longest token name.
const MAX_NAME: usize = 64;

/// Why a token was not created; each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateRefused {
    /// No name, or one too long.
    #[error("give the token a name of 1 to {MAX_NAME} characters")]
    Name,
    /// No scope chosen.
    #[error("choose at least one scope")]
    NoScope,
    /// A scope the person's roles do not allow.
    #[error("your roles do not allow the scope {0}")]
    Scope(String),
    /// A lifetime outside what the operator allows.
    #[error("{0}")]
    Lifetime(String),
}

/// A token just created: its record and the token itself, to show once.
#[derive(Debug)]
pub struct Created {
    /// As stored.
    pub record: ApiTokenRecord,
    /// The token, in clear.
    pub token: Secret,
}

/// Creates a token for `user` named `name` with `scopes`, living `days` (`None`: never).
/// `by` is who asked (`self`, `operator`), for the audit event.
#[allow(clippy::too_many_arguments)]
pub async fn create(
    store: &Store,
    config: &Config,
    user: &User,
    name: &str,
    scopes: &[String],
    days: Option<u32>,
    by: &str,
    now: OffsetDateTime,
) -> Result<Result<Created, CreateRefused>, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Ok(Err(CreateRefused::Name));
    }
    let allowed = config.grantable(user);
    let mut chosen: Vec<String> = Vec::new();
    for scope in scopes {
        if !allowed.iter().any(|a| a == scope) {
            return Ok(Err(CreateRefused::Scope(scope.clone())));
        }
        if !chosen.contains(scope) {
            chosen.push(scope.clone());
        }
    }
    if chosen.is_empty() {
        return Ok(Err(CreateRefused::NoScope));
    }
    let limits = config.api_tokens;
    let expires_at = match days {
        None if limits.allow_no_expiry => None,
        None => {
            return Ok(Err(CreateRefused::Lifetime(
                "this server does not allow tokens that never expire".to_owned(),
            )));
        }
        Some(d) if d == 0 || d > limits.max_days => {
            return Ok(Err(CreateRefused::Lifetime(format!(
                "a token may live 1 to {} days",
                limits.max_days
            ))));
        }
        Some(d) => Some(now + time::Duration::days(i64::from(d))),
    };
    let new = NewApiToken::generate()
        .map_err(|_| StoreError::Engine("random number generator failed".to_owned()))?;
    let record = ApiTokenRecord {
        token_id: new.id.clone(),
        user_id: user.id.clone(),
        name: name.to_owned(),
        secret_hash: new.hash().as_str().to_owned(),
        scopes: chosen.join(" "),
        created_at: now,
        expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    store.insert_api_token(&record).await?;
    let mut event = AuditEvent::new(
        "api_token.created",
        now,
        serde_json::json!({
            "token_id": record.token_id,
            "name": record.name,
            "scopes": record.scopes,
            "expires_at": expires_at.map(OffsetDateTime::unix_timestamp),
            "by": by,
        }),
    );
    event.subject = Some(user.id.clone());
    audit::record(store, event).await?;
    Ok(Ok(Created {
        record,
        token: new.token,
    }))
}

/// Revokes token `token_id` (of `user_id`, when given), audited: whether a live one was revoked.
pub async fn revoke(
    store: &Store,
    token_id: &str,
    user_id: Option<&str>,
    by: &str,
    now: OffsetDateTime,
) -> Result<bool, StoreError> {
    let Some(token) = store.api_token(token_id).await? else {
        return Ok(false);
    };
    if !store.revoke_api_token(token_id, user_id, now).await? {
        return Ok(false);
    }
    let mut event = AuditEvent::new(
        "api_token.revoked",
        now,
        serde_json::json!({ "token_id": token_id, "name": token.name, "by": by }),
    );
    event.subject = Some(token.user_id);
    audit::record(store, event).await?;
    Ok(true)
}
