//! The applications a person has connected, as their own page shows them: remembered consents
//! and the grants still alive, per client; and disconnecting one.

use std::collections::BTreeMap;

use sqlx::Connection;
use time::OffsetDateTime;

use super::{Store, StoreError, from_unix};

/// A client a person connected: what they allowed it, and its grants still alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedApp {
    /// The client.
    pub client_id: String,
    /// Its registered name (none for a Client ID Metadata Document client, which is not
    /// stored, or a removed one).
    pub client_name: Option<String>,
    /// Whether the operator registered it (`gatehouse clients add`) rather than itself.
    pub operator_client: bool,
    /// Scopes the person allowed it (over every resource), each once.
    pub scopes: Vec<String>,
    /// When they first allowed it (or, with no consent kept, its oldest live grant).
    pub granted_at: OffsetDateTime,
    /// When it last got tokens: its newest refresh token, or its newest grant.
    pub last_used_at: Option<OffsetDateTime>,
    /// Grants alive now (each a refresh family and its access tokens).
    pub live_grants: u32,
}

impl Store {
    /// The applications `user_id` connected: every client with a remembered consent or a grant
    /// alive at `now`, most recently used first.
    pub async fn connected_apps(
        &self,
        user_id: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<ConnectedApp>, StoreError> {
        let mut conn = self.reader().await?;
        type ConsentRow = (String, Option<String>, Option<String>, String, i64);
        let consents: Vec<ConsentRow> = sqlx::query_as(
            "SELECT c.client_id, cl.client_name, cl.kind, c.scopes, c.granted_at FROM consents c \
             LEFT JOIN clients cl ON cl.client_id = c.client_id WHERE c.user_id = $1",
        )
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
        type GrantRow = (
            String,
            Option<String>,
            Option<String>,
            String,
            i64,
            Option<i64>,
        );
        let grants: Vec<GrantRow> = sqlx::query_as(
            "SELECT g.client_id, cl.client_name, cl.kind, g.scopes, g.created_at, \
             (SELECT MAX(r.created_at) FROM refresh_tokens r WHERE r.grant_id = g.grant_id) \
             FROM grants g LEFT JOIN clients cl ON cl.client_id = g.client_id \
             WHERE g.user_id = $1 AND g.revoked_at IS NULL AND g.expires_at > $2",
        )
        .bind(user_id)
        .bind(now.unix_timestamp())
        .fetch_all(&mut *conn)
        .await?;
        let mut apps: BTreeMap<String, ConnectedApp> = BTreeMap::new();
        let mut add = |client_id: String,
                       name: Option<String>,
                       kind: Option<String>,
                       scopes: &str,
                       at: OffsetDateTime,
                       used: Option<OffsetDateTime>,
                       live: u32| {
            let app = apps.entry(client_id.clone()).or_insert(ConnectedApp {
                client_id,
                client_name: name,
                operator_client: kind.as_deref() == Some("operator"),
                scopes: Vec::new(),
                granted_at: at,
                last_used_at: None,
                live_grants: 0,
            });
            for scope in scopes.split_whitespace() {
                if !app.scopes.iter().any(|s| s == scope) {
                    app.scopes.push(scope.to_owned());
                }
            }
            app.granted_at = app.granted_at.min(at);
            app.last_used_at = app.last_used_at.max(used);
            app.live_grants += live;
        };
        for (client_id, name, kind, scopes, granted_at) in consents {
            add(
                client_id,
                name,
                kind,
                &scopes,
                from_unix(granted_at)?,
                None,
                0,
            );
        }
        for (client_id, name, kind, scopes, created_at, refreshed_at) in grants {
            let created = from_unix(created_at)?;
            let used = refreshed_at.map(from_unix).transpose()?.unwrap_or(created);
            add(client_id, name, kind, &scopes, created, Some(used), 1);
        }
        let mut apps: Vec<ConnectedApp> = apps.into_values().collect();
        apps.sort_by(|a, b| {
            b.last_used_at
                .cmp(&a.last_used_at)
                .then(b.granted_at.cmp(&a.granted_at))
        });
        Ok(apps)
    }

    /// Disconnects `client_id` from `user_id`, in one transaction: its codes not yet redeemed
    /// are voided, its live grants revoked (their refresh tokens and access tokens with them),
    /// and the remembered consent forgotten, so the application asks again. The revoked grants'
    /// ids.
    pub async fn disconnect_app(
        &self,
        user_id: &str,
        client_id: &str,
        reason: &str,
        at: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "DELETE FROM authorization_codes WHERE consumed_at IS NULL AND user_id = $1 \
             AND client_id = $2",
        )
        .bind(user_id)
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
        let revoked: Vec<String> = sqlx::query_scalar(
            "UPDATE grants SET revoked_at = $3, revoked_reason = $4 \
             WHERE revoked_at IS NULL AND user_id = $1 AND client_id = $2 RETURNING grant_id",
        )
        .bind(user_id)
        .bind(client_id)
        .bind(at.unix_timestamp())
        .bind(reason)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM consents WHERE user_id = $1 AND client_id = $2")
            .bind(user_id)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Ends every browser session of `user_id` signed in up to `at` (they sign in again);
    /// grants and consents stay. Whether the user exists.
    pub async fn end_browser_sessions(
        &self,
        user_id: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        // Sign-in times are whole seconds, and a session signed in at the very second it is
        // ended still counts (`User::session_valid`): the end is put one second later, so one
        // signed in during the second of the request is ended too.
        let done = sqlx::query("UPDATE users SET signed_out_at = $2 WHERE user_id = $1")
            .bind(user_id)
            .bind(at.unix_timestamp() + 1)
            .execute(&mut *self.writer().await?)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
