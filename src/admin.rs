//! The operator commands that change state (`clients ...`), kept out of the CLI parser so the
//! parser stays a description of the command line.

use anyhow::Context;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use crate::audit::{self, AuditEvent};
use crate::cli::ClientsCommand;
use crate::config::Config;
use crate::domain::{ClientKind, RedirectPolicy};
use crate::oauth::register::{self, RegistrationRequest};
use crate::store::Store;

async fn open(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.database)
        .await
        .with_context(|| format!("cannot open database {}", config.database))
}

/// `gatehouse clients add | list | remove`
pub async fn clients(config: &Config, command: ClientsCommand) -> anyhow::Result<()> {
    let store = open(config).await?;
    let result = run(config, &store, command).await;
    store.close().await;
    result
}

async fn run(config: &Config, store: &Store, command: ClientsCommand) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    match command {
        ClientsCommand::Add {
            name,
            redirect_uris,
            confidential,
        } => {
            let method = if confidential {
                "client_secret_basic"
            } else {
                "none"
            };
            let mut grant_types = vec!["authorization_code".to_owned(), "refresh_token".to_owned()];
            if confidential {
                grant_types.push("client_credentials".to_owned());
            }
            let request = RegistrationRequest {
                redirect_uris: Some(redirect_uris),
                token_endpoint_auth_method: Some(method.to_owned()),
                grant_types: Some(grant_types),
                client_name: Some(name),
                ..RegistrationRequest::default()
            };
            let secret = register::new_secret(Some(method)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let id = register::new_client_id().map_err(|e| anyhow::anyhow!("{e}"))?;
            // The operator vouches for the client: any redirect the protocol allows.
            let client = register::validate(
                request,
                config,
                &RedirectPolicy::permissive(),
                ClientKind::Operator,
                id,
                secret.as_ref(),
                now,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            store.insert_client(&client).await?;
            let mut event = AuditEvent::new(
                "client.added",
                now,
                json!({ "client_name": client.name, "by": "operator" }),
            );
            event.client_id = Some(client.id.clone());
            audit::record(store, event).await?;
            println!("client_id: {}", client.id);
            if let Some(secret) = secret {
                println!("client_secret: {}", secret.expose());
                println!("(the secret is shown only now: store it in the client's configuration)");
            }
        }
        ClientsCommand::List => {
            let clients = store.clients().await?;
            if clients.is_empty() {
                println!("No clients registered.");
                return Ok(());
            }
            println!(
                "{:<26}  {:<8}  {:<20}  {:<19}  {:<20}  {:<20}  REDIRECT URIS",
                "CLIENT ID", "KIND", "NAME", "AUTH", "CREATED", "LAST USED"
            );
            for c in clients {
                let time = |t: Option<time::OffsetDateTime>| {
                    t.and_then(|t| t.format(&Rfc3339).ok())
                        .unwrap_or_else(|| "-".to_owned())
                };
                let uris: Vec<_> = c.redirect_uris.iter().map(|u| u.as_str()).collect();
                println!(
                    "{:<26}  {:<8}  {:<20}  {:<19}  {:<20}  {:<20}  {}",
                    c.id,
                    c.kind.as_str(),
                    c.name.as_deref().unwrap_or("-"),
                    c.auth_method.as_str(),
                    time(Some(c.created_at)),
                    time(c.last_used_at),
                    uris.join(" ")
                );
            }
        }
        ClientsCommand::Remove { id } => {
            if !store.delete_client(&id).await? {
                anyhow::bail!("no client with id {id:?}");
            }
            let mut event = AuditEvent::new("client.removed", now, json!({ "by": "operator" }));
            event.client_id = Some(id.clone());
            audit::record(store, event).await?;
            println!("Removed client {id}.");
        }
    }
    Ok(())
}
