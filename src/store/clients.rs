//! The `clients` table: dynamically and operator-registered clients.

use time::OffsetDateTime;

use sqlx::Connection;

use super::write::Insert;
use super::{Store, StoreError, from_unix};
use crate::domain::{
    Client, ClientKind, RedirectPolicy, RedirectUri, SecretHash, TokenEndpointAuthMethod,
};

#[derive(sqlx::FromRow)]
struct ClientRow {
    client_id: String,
    kind: String,
    client_name: Option<String>,
    redirect_uris: String,
    auth_method: String,
    grant_types: String,
    response_types: String,
    scope: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    application_type: Option<String>,
    secret_hash: Option<String>,
    created_at: i64,
    last_used_at: Option<i64>,
}

const CLIENT_COLUMNS: &str = "client_id, kind, client_name, redirect_uris, auth_method, grant_types, response_types, \
     scope, client_uri, logo_uri, application_type, secret_hash, created_at, last_used_at";

fn json_list(text: &str, what: &str, id: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("client {id}: {what}: {e}")))
}

impl TryFrom<ClientRow> for Client {
    type Error = StoreError;
    fn try_from(row: ClientRow) -> Result<Self, StoreError> {
        let id = row.client_id.clone();
        let corrupt = |what: &str| StoreError::Corrupt(format!("client {id}: {what}"));
        // Stored URIs were checked against the policy when registered; a later, stricter policy
        // applies to new registrations.
        let redirect_uris = json_list(&row.redirect_uris, "redirect_uris", &id)?
            .iter()
            .map(|u| RedirectUri::parse(u, &RedirectPolicy::permissive()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(&e.to_string()))?;
        Ok(Self {
            kind: ClientKind::parse(&row.kind).ok_or_else(|| corrupt("kind"))?,
            auth_method: TokenEndpointAuthMethod::parse(&row.auth_method)
                .ok_or_else(|| corrupt("auth_method"))?,
            grant_types: json_list(&row.grant_types, "grant_types", &id)?,
            response_types: json_list(&row.response_types, "response_types", &id)?,
            created_at: from_unix(row.created_at)?,
            last_used_at: row.last_used_at.map(from_unix).transpose()?,
            secret_hash: row.secret_hash.map(SecretHash::from_stored),
            redirect_uris,
            name: row.client_name,
            scope: row.scope,
            client_uri: row.client_uri,
            logo_uri: row.logo_uri,
            application_type: row.application_type,
            id: row.client_id,
        })
    }
}

fn to_json(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

/// The row of a new client.
fn client_insert(client: &Client) -> Insert {
    let redirect_uris: Vec<String> = client
        .redirect_uris
        .iter()
        .map(|u| u.as_str().to_owned())
        .collect();
    Insert {
        table: "clients",
        columns: "client_id, kind, client_name, redirect_uris, auth_method, grant_types, \
                  response_types, scope, client_uri, logo_uri, application_type, secret_hash, \
                  created_at, last_used_at",
        values: vec![
            client.id.as_str().into(),
            client.kind.as_str().into(),
            client.name.as_deref().into(),
            to_json(&redirect_uris).into(),
            client.auth_method.as_str().into(),
            to_json(&client.grant_types).into(),
            to_json(&client.response_types).into(),
            client.scope.as_deref().into(),
            client.client_uri.as_deref().into(),
            client.logo_uri.as_deref().into(),
            client.application_type.as_deref().into(),
            client.secret_hash.as_ref().map(SecretHash::as_str).into(),
            client.created_at.unix_timestamp().into(),
            client
                .last_used_at
                .map(OffsetDateTime::unix_timestamp)
                .into(),
        ],
        what: format!("client {}", client.id),
    }
}

impl Store {
    /// Stores a new client. A duplicate id is a [`StoreError::Conflict`].
    pub async fn insert_client(&self, client: &Client) -> Result<(), StoreError> {
        client_insert(client)
            .execute_on(&mut *self.writer().await?)
            .await
    }

    /// Stores a client that registered itself with the audit event of its registration, all or
    /// none: one commit (one statement on PostgreSQL, the committer's next batch on SQLite). A
    /// duplicate id is a [`StoreError::Conflict`].
    pub async fn insert_client_audited(
        &self,
        client: &Client,
        event: &super::AuditEvent,
    ) -> Result<(), StoreError> {
        self.append_all(vec![
            client_insert(client),
            super::audit::audit_insert(event),
        ])
        .await
    }

    /// One client by id.
    pub async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = $1");
        let row: Option<ClientRow> = sqlx::query_as(&sql)
            .bind(client_id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.map(Client::try_from).transpose()
    }

    /// Every stored client, oldest first.
    pub async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY created_at, client_id");
        let rows: Vec<ClientRow> = sqlx::query_as(&sql)
            .fetch_all(&mut *self.reader().await?)
            .await?;
        rows.into_iter().map(Client::try_from).collect()
    }

    /// Removes a client with its consents and codes, then revokes its live grants, in one
    /// transaction and in that order (see [`Store::remove_user`]). `None` when there was none;
    /// else the revoked grants' ids.
    pub async fn remove_client(
        &self,
        client_id: &str,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut conn = self.writer().await?;
        let mut tx = conn.begin().await?;
        let removed = delete_client_rows(&mut tx, client_id).await?;
        super::grants::finish_removal(tx, removed, None, Some(client_id), reason, now).await
    }

    /// Records that a client completed a sign-in or token request (a client known only by its
    /// metadata document has no row: nothing changes). On SQLite it joins the committer's next
    /// batch instead of taking the writer for a transaction of its own.
    pub async fn touch_client(
        &self,
        client_id: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.guarded_write(super::write::GuardedWrite {
            update: "UPDATE clients SET last_used_at = $2 WHERE client_id = $1",
            params: vec![client_id.into(), at.unix_timestamp().into()],
            inserts: Vec::new(),
        })
        .await
        .map(drop)
    }

    /// Deletes the dynamic registrations created before `cutoff` that were never used, and
    /// returns their ids (for the audit log).
    pub async fn delete_unused_clients(
        &self,
        cutoff: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "DELETE FROM clients WHERE kind = 'dynamic' AND last_used_at IS NULL AND created_at < $1 \
             RETURNING client_id",
        )
        .bind(cutoff.unix_timestamp())
        .fetch_all(&mut *self.writer().await?)
        .await?;
        Ok(ids)
    }
}

/// Deletes a client's consents, codes and row on `conn` (a transaction of the caller's); how
/// many clients were deleted.
async fn delete_client_rows(
    conn: &mut sqlx::AnyConnection,
    client_id: &str,
) -> Result<u64, StoreError> {
    for table in ["consents", "authorization_codes"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE client_id = $1"))
            .bind(client_id)
            .execute(&mut *conn)
            .await?;
    }
    let done = sqlx::query("DELETE FROM clients WHERE client_id = $1")
        .bind(client_id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}
