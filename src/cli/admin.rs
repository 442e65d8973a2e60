//! The operator commands that change state (`clients ...`), kept out of the CLI parser so the
//! parser stays a description of the command line.

use anyhow::Context;
use serde_json::json;

use super::{ClientsCommand, GrantsCommand, TokensCommand, UsersCommand};
use crate::account::{User, Username};
use crate::audit::{self, AuditEvent};
use crate::config::Config;
use crate::domain::{ClientKind, RedirectPolicy};
use crate::oauth::register::{self, RegistrationRequest};
use crate::password;
use crate::store::{ProviderIdentity, Store, Unlinked};

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
            let id = register::new_client_id().map_err(|e| anyhow::anyhow!("{e}"))?;
            // The operator vouches for the client: any redirect the protocol allows.
            let mut client = register::validate(
                request,
                config,
                &RedirectPolicy::permissive(),
                ClientKind::Operator,
                id,
                now,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let secret = register::issue_secret(&mut client).map_err(|e| anyhow::anyhow!("{e}"))?;
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
                let time = crate::clock::format_time;
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
            // Its grants revoked too, so its live access tokens die everywhere, not just its rows
            // (one transaction: `Store::remove_client`).
            let reason = "client removed";
            let ids = store
                .remove_client(&id, reason, now)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no client with id {id:?}"))?;
            let revoked = audit_revoked(store, &ids, None, Some(&id), reason, now).await?;
            let mut event = AuditEvent::new(
                "client.removed",
                now,
                json!({ "by": "operator", "grants_revoked": revoked }),
            );
            event.client_id = Some(id.clone());
            audit::record(store, event).await?;
            println!("Removed client {id}; revoked {revoked} grants and their tokens.");
        }
    }
    Ok(())
}

/// Reads a password from the first line of standard input (never from the command line).
fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        anyhow::bail!(
            "no password on standard input (pipe it in: echo \"$PASSWORD\" | gatehouse users add NAME --password-stdin)"
        );
    }
    Ok(password)
}

/// `gatehouse setup-link`
pub async fn setup_link(config: &Config) -> anyhow::Result<()> {
    let store = open(config).await?;
    let link =
        crate::account::setup::new_link(config, &store, time::OffsetDateTime::now_utc()).await;
    store.close().await;
    match link? {
        Some(link) => {
            println!("{link}");
            eprintln!("Open it within an hour to create the first admin; it works once.");
            Ok(())
        }
        None if !config.local_login => anyhow::bail!(
            "password sign-in is off (local_login = false): the first admin signs in through an identity provider, or add one with `gatehouse users add NAME --role admin --password-stdin`"
        ),
        None => anyhow::bail!(
            "this server has users already: an admin signs in, or add one with `gatehouse users add NAME --role admin --password-stdin`"
        ),
    }
}

/// `gatehouse users add | list | remove | passwd`
pub async fn users(config: &Config, command: UsersCommand) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let store = open(config).await?;
    let result = run_users(config, &store, command, now).await;
    store.close().await;
    result
}

async fn run_users(
    config: &Config,
    store: &Store,
    command: UsersCommand,
    now: time::OffsetDateTime,
) -> anyhow::Result<()> {
    match command {
        UsersCommand::Add { name, roles, .. } => {
            let username = Username::parse(&name)?;
            let roles = if roles.is_empty() {
                if !config.roles.contains_key("user") {
                    anyhow::bail!(
                        "give the user a role with --role (configured roles: {})",
                        role_list(config)
                    );
                }
                vec!["user".to_owned()]
            } else {
                roles
            };
            if let Some(unknown) = roles.iter().find(|r| !config.roles.contains_key(*r)) {
                anyhow::bail!(
                    "unknown role {unknown:?} (configured roles: {})",
                    role_list(config)
                );
            }
            let hash = password::hash(read_password()?).await?;
            let id =
                User::new_id().map_err(|_| anyhow::anyhow!("random number generator failed"))?;
            let user = User::new(id, username, hash, roles.clone(), now);
            store.insert_user(&user).await.map_err(|e| match e {
                crate::store::StoreError::Conflict(_) => {
                    anyhow::anyhow!("a user named {name:?} already exists")
                }
                other => other.into(),
            })?;
            let mut event = AuditEvent::new(
                "user.added",
                now,
                json!({ "username": name, "roles": roles, "by": "operator" }),
            );
            event.subject = Some(user.id.clone());
            audit::record(store, event).await?;
            println!("Added user {name} with roles {}.", roles.join(", "));
        }
        UsersCommand::List => {
            let users = store.users().await?;
            if users.is_empty() {
                println!("No users yet: add one with `gatehouse users add NAME --password-stdin`.");
                return Ok(());
            }
            println!(
                "{:<32}  {:<24}  {:<20}  {:<26}  SIGNS IN WITH",
                "NAME", "ROLES", "CREATED", "USER ID"
            );
            for u in users {
                let created = crate::clock::format_time(Some(u.created_at));
                // How the person signs in: a password, and each identity provider account.
                let mut ways: Vec<String> = Vec::new();
                if !u.password_hash.is_empty() {
                    ways.push("password".to_owned());
                }
                for linked in store.identities_of(&u.id).await? {
                    let i = linked.identity;
                    let who = i.email.filter(|_| i.email_verified).unwrap_or(i.subject);
                    ways.push(format!("{}:{who}", i.provider));
                }
                if u.locked_at.is_some() {
                    ways.push("(locked)".to_owned());
                }
                println!(
                    "{:<32}  {:<24}  {:<20}  {:<26}  {}",
                    u.username.as_str(),
                    u.roles.join(","),
                    created,
                    u.id,
                    ways.join(" ")
                );
            }
        }
        UsersCommand::Remove { name } => {
            let user = store
                .user_by_name(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
            let reason = "user removed";
            let ids = store
                .remove_user(&user.id, reason, now)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
            let revoked = audit_revoked(store, &ids, Some(&user.id), None, reason, now).await?;
            let mut event = AuditEvent::new(
                "user.removed",
                now,
                json!({ "username": name, "by": "operator", "grants_revoked": revoked }),
            );
            event.subject = Some(user.id);
            audit::record(store, event).await?;
            println!(
                "Removed user {name}; revoked {revoked} grants and their tokens; their consents and pending codes are gone."
            );
        }
        UsersCommand::ResetLink { name } => {
            let user = store
                .user_by_name(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
            let link = crate::account::reset::new_link(config, store, &user.id, now).await?;
            let mut event = AuditEvent::new(
                "user.password_link",
                now,
                json!({ "username": name, "by": "operator" }),
            );
            event.subject = Some(user.id);
            audit::record(store, event).await?;
            println!("{link}");
            eprintln!("Send it to {name}: it lets them choose a password, once, within a day.");
        }
        UsersCommand::Lock { name } => {
            let user = store
                .user_by_name(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
            let ids = store
                .lock_user(&user.id, now)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
            let revoked = audit_revoked(store, &ids, Some(&user.id), None, "locked", now).await?;
            let mut event = AuditEvent::new(
                "user.locked",
                now,
                json!({ "username": name, "by": "operator", "grants_revoked": revoked }),
            );
            event.subject = Some(user.id);
            audit::record(store, event).await?;
            println!(
                "Locked {name}: signed out everywhere, {revoked} grants revoked; running servers refuse their tokens within revocation_sync_interval."
            );
        }
        UsersCommand::Unlock { name } => {
            let user = store
                .user_by_name(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
            store.unlock_user(&user.id).await?;
            let mut event = AuditEvent::new(
                "user.unlocked",
                now,
                json!({ "username": name, "by": "operator" }),
            );
            event.subject = Some(user.id);
            audit::record(store, event).await?;
            println!("Unlocked {name}.");
        }
        UsersCommand::Link {
            name,
            provider,
            subject,
        } => {
            let (user, identity) =
                user_and_identity(config, store, &name, &provider, &subject).await?;
            store
                .link_identity(&user.id, &identity, now)
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::Conflict(_) => anyhow::anyhow!(
                        "that {provider} account is already linked to a user: unlink it there first"
                    ),
                    other => other.into(),
                })?;
            audit_identity(store, "identity.linked", &user, &identity, now).await?;
            println!(
                "Linked {provider} account {subject:?} to {name}: it signs them in from now on."
            );
        }
        UsersCommand::Unlink {
            name,
            provider,
            subject,
        } => {
            let (user, identity) =
                user_and_identity(config, store, &name, &provider, &subject).await?;
            match store
                .unlink_identity(&user.id, &provider, &identity.issuer, &subject)
                .await?
            {
                Unlinked::Removed => {}
                Unlinked::NotLinked => {
                    anyhow::bail!("{name} has no linked {provider} account {subject:?}")
                }
                Unlinked::LastWay => anyhow::bail!(
                    "refused: it is the last way {name} can sign in (no password and no other linked account); link another first, or remove the user"
                ),
            }
            audit_identity(store, "identity.unlinked", &user, &identity, now).await?;
            println!("Unlinked {provider} account {subject:?} from {name}.");
        }
        UsersCommand::Passwd { name, .. } => {
            let user = store
                .user_by_name(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
            let hash = password::hash(read_password()?).await?;
            let revoked = store
                .set_password(&name, &hash, now)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
            let mut event = AuditEvent::new(
                "user.password_changed",
                now,
                json!({ "username": name, "by": "operator" }),
            );
            event.subject = Some(user.id.clone());
            audit::record(store, event).await?;
            let n = audit_revoked(
                store,
                &revoked,
                Some(&user.id),
                None,
                "password changed",
                now,
            )
            .await?;
            let seconds = config.revocation_sync_interval.whole_seconds();
            println!(
                "Changed the password of {name}: their browser sessions are signed out, and {n} grants are revoked with all their tokens (running servers refuse them within {seconds} s). Applications they connected need them to sign in again."
            );
        }
    }
    Ok(())
}

fn role_list(config: &Config) -> String {
    config.roles.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Revokes every grant of a user or a client, auditing each; returns how many.
/// User `name` and the account `subject` at configured identity provider `provider` (its issuer
/// from the configuration).
async fn user_and_identity(
    config: &Config,
    store: &Store,
    name: &str,
    provider: &str,
    subject: &str,
) -> anyhow::Result<(User, ProviderIdentity)> {
    let user = store
        .user_by_name(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
    let Some(configured) = config.identity_providers.iter().find(|p| p.id == provider) else {
        let known: Vec<&str> = config
            .identity_providers
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        anyhow::bail!(
            "no identity provider {provider:?} in the configuration (configured: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    let identity = ProviderIdentity {
        provider: provider.to_owned(),
        issuer: configured.issuer.clone(),
        subject: subject.to_owned(),
        email: None,
        email_verified: false,
    };
    Ok((user, identity))
}

/// Audits an admin's link or unlink (`kind`) of `identity` for `user`.
async fn audit_identity(
    store: &Store,
    kind: &str,
    user: &User,
    identity: &ProviderIdentity,
    now: time::OffsetDateTime,
) -> anyhow::Result<()> {
    let event = audit::identity_change(kind, user, identity, "operator", now);
    audit::record(store, event).await?;
    Ok(())
}

async fn revoke_grants(
    store: &Store,
    user_id: Option<&str>,
    client_id: Option<&str>,
    reason: &str,
    now: time::OffsetDateTime,
) -> anyhow::Result<usize> {
    let ids = store
        .revoke_grants_of(user_id, client_id, reason, now)
        .await?;
    audit_revoked(store, &ids, user_id, client_id, reason, now).await
}

/// One `grant.revoked` event per grant the operator revoked; how many.
async fn audit_revoked(
    store: &Store,
    ids: &[String],
    user_id: Option<&str>,
    client_id: Option<&str>,
    reason: &str,
    now: time::OffsetDateTime,
) -> anyhow::Result<usize> {
    let events = audit::revoked_grant_events(ids, user_id, client_id, reason, "operator", now);
    audit::record_all(store, &events).await?;
    Ok(events.len())
}

/// `gatehouse tokens revoke --user NAME | --client ID`
pub async fn tokens(config: &Config, command: TokensCommand) -> anyhow::Result<()> {
    let store = open(config).await?;
    let result = async {
        let now = time::OffsetDateTime::now_utc();
        let seconds = config.revocation_sync_interval.whole_seconds();
        let target = match command {
            TokensCommand::Create {
                user,
                name,
                scopes,
                expires,
            } => return create_api_token(config, &store, &user, &name, &scopes, expires, now).await,
            TokensCommand::List { user } => return list_api_tokens(&store, user.as_deref(), now).await,
            TokensCommand::Revoke(target) => target,
        };
        if let Some(id) = target.id {
            if !crate::account::api_tokens::revoke(&store, &id, None, "operator", now).await? {
                anyhow::bail!("no live API token with id {id:?} (see `gatehouse tokens list`)");
            }
            println!("Revoked API token {id} (running servers refuse it within {seconds} s).");
        } else if let Some(name) = target.user {
            let user = store
                .user_by_name(&name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?;
            let reason = "revoked by the operator";
            let revoked = store.sign_out_everywhere(&user.id, reason, now).await?;
            let n = audit_revoked(&store, &revoked, Some(&user.id), None, reason, now).await?;
            let mut event = AuditEvent::new("user.signed_out", now, json!({ "by": "operator" }));
            event.subject = Some(user.id.clone());
            audit::record(&store, event).await?;
            println!("Revoked {n} grants of {name} with all their tokens (running servers refuse them within {seconds} s), ended their browser sessions and forgot their consents: each application asks them again.");
        } else if let Some(id) = target.client {
            let n = revoke_grants(&store, None, Some(&id), "revoked by the operator", now).await?;
            println!("Revoked {n} grants of client {id} with all their tokens (running servers refuse them within {seconds} s).");
        }
        Ok(())
    }
    .await;
    store.close().await;
    result
}

/// `gatehouse tokens create`
async fn create_api_token(
    config: &Config,
    store: &Store,
    user: &str,
    name: &str,
    scopes: &[String],
    expires: Option<String>,
    now: time::OffsetDateTime,
) -> anyhow::Result<()> {
    let owner = store
        .user_by_name(user)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no user named {user:?}"))?;
    let days = match expires.as_deref() {
        None => Some(crate::config::API_TOKEN_DEFAULT_DAYS),
        Some("never") => None,
        Some(n) => Some(n.parse::<u32>().map_err(|_| {
            anyhow::anyhow!("--expires takes a number of days or `never`, not {n:?}")
        })?),
    };
    let created = crate::account::api_tokens::create(
        store, config, &owner, name, scopes, days, "operator", now,
    )
    .await?
    .map_err(|refused| anyhow::anyhow!("no token created: {refused}"))?;
    let until = created
        .record
        .expires_at
        .map_or_else(|| "never".to_owned(), |t| t.date().to_string());
    eprintln!(
        "Created API token {} for {user} ({}; expires {until}). It is printed once, below:",
        created.record.token_id, created.record.scopes
    );
    println!("{}", created.token.expose());
    Ok(())
}

/// `gatehouse tokens list`
async fn list_api_tokens(
    store: &Store,
    user: Option<&str>,
    now: time::OffsetDateTime,
) -> anyhow::Result<()> {
    let owner = match user {
        Some(name) => Some(
            store
                .user_by_name(name)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user named {name:?}"))?,
        ),
        None => None,
    };
    let tokens = store
        .api_tokens(owner.as_ref().map(|u| u.id.as_str()))
        .await?;
    let users = store.users().await?;
    let name_of = |id: &str| {
        users
            .iter()
            .find(|u| u.id == id)
            .map_or_else(|| id.to_owned(), |u| u.username.as_str().to_owned())
    };
    println!(
        "{:<14} {:<20} {:<24} {:<20} {:<12} {:<12} STATE",
        "ID", "USER", "NAME", "SCOPES", "CREATED", "LAST USED"
    );
    for t in tokens {
        let state = match (t.revoked_at, t.expires_at) {
            (Some(_), _) => "revoked".to_owned(),
            (None, Some(e)) if e <= now => "expired".to_owned(),
            (None, Some(e)) => format!("expires {}", e.date()),
            (None, None) => "never expires".to_owned(),
        };
        println!(
            "{:<14} {:<20} {:<24} {:<20} {:<12} {:<12} {state}",
            t.token_id,
            name_of(&t.user_id),
            t.name,
            t.scopes,
            t.created_at.date().to_string(),
            t.last_used_at
                .map_or_else(|| "never".to_owned(), |u| u.date().to_string()),
        );
    }
    Ok(())
}

/// `gatehouse grants list|revoke`
pub async fn grants(config: &Config, command: GrantsCommand) -> anyhow::Result<()> {
    let store = open(config).await?;
    let result = async {
        let now = time::OffsetDateTime::now_utc();
        match command {
            GrantsCommand::List { user } => {
                let owner = store
                    .user_by_name(&user)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no user named {user:?}"))?;
                println!(
                    "{:<48} {:<40} {:<24} {:<12} STATE",
                    "ID", "CLIENT", "SCOPES", "CREATED"
                );
                for g in store.grants_of(&owner.id).await? {
                    let state = match g.revoked_at {
                        Some(r) => format!("revoked {}", r.date()),
                        None if g.expires_at <= now => "expired".to_owned(),
                        None => format!("live until {}", g.expires_at.date()),
                    };
                    println!(
                        "{:<48} {:<40} {:<24} {:<12} {state}",
                        g.grant_id,
                        g.client_id,
                        g.scopes,
                        g.created_at.date().to_string()
                    );
                }
            }
            GrantsCommand::Revoke { id } => {
                let grant = store
                    .grant(&id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no grant with id {id:?} (see `gatehouse grants list`)"))?;
                let reason = "revoked by the operator";
                if !store.revoke_grant(&id, reason, now).await? {
                    anyhow::bail!("grant {id} was already revoked");
                }
                audit_revoked(
                    &store,
                    std::slice::from_ref(&id),
                    grant.user_id.as_deref(),
                    Some(&grant.client_id),
                    reason,
                    now,
                )
                .await?;
                let seconds = config.revocation_sync_interval.whole_seconds();
                println!("Revoked grant {id} with its tokens (running servers refuse them within {seconds} s).");
            }
        }
        Ok(())
    }
    .await;
    store.close().await;
    result
}
