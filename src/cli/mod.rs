//! The command line: `serve` and the operator command groups. Every command reads the same
//! configuration and database as `serve`, and reports an error as one clear line with a
//! non-zero exit status.

pub mod admin;
pub mod doctor;
pub mod upstreams;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use time::OffsetDateTime;

use crate::config::{CONFIG_FILE_ENV, Config, ConfigErrors};
use crate::domain::SigningAlgorithm;
use crate::keys::{KeyFile, RotationPolicy, Vault, lifecycle};
use crate::store::Store;

/// Gatehouse: an OAuth 2.1 authorization server and an MCP resource server in one binary.
///
/// Run `gatehouse serve`, open the setup link it prints, and register https://YOUR-HOST/mcp as a custom connector
/// in Claude.ai, ChatGPT, Claude Code, VS Code, Cursor or MCP Inspector.
#[derive(Debug, Parser)]
#[command(name = "gatehouse", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML). Default: ./gatehouse.toml when present. GATEHOUSE_* environment
    /// variables override its settings (nested keys joined with `__`).
    #[arg(long, global = true, env = CONFIG_FILE_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the authorization server and the MCP endpoint. With no configuration at all: listens
    /// on 127.0.0.1:8080, stores data in ./gatehouse.db and generates keys in ./keys.
    Serve,
    /// Print a one-time link that creates the first admin (while nobody can sign in yet; it works
    /// once, for an hour). `serve` logs one at start too.
    SetupLink,
    /// Manage the people who can sign in.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Manage OAuth clients registered by the operator.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Inspect and rotate the token-signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Revoke tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// The grants people gave applications (each a refresh family and its access tokens).
    #[command(subcommand)]
    Grants(GrantsCommand),
    /// The MCP servers `/mcp` fronts (gateway mode).
    #[command(subcommand)]
    Upstreams(UpstreamsCommand),
    /// Replay what MCP clients (Claude.ai, ChatGPT, Claude Code, VS Code, Cursor, MCP
    /// Inspector) do against the URL a person would paste, and print a checklist: what passes,
    /// what would break for which client, and the fix. Exits 1 when a client would fail.
    /// Works against any MCP server with OAuth.
    Doctor(doctor::DoctorArgs),
}

/// `gatehouse upstreams ...`
#[derive(Debug, Subcommand)]
pub enum UpstreamsCommand {
    /// Show the configured upstreams (contacts none of them).
    List,
    /// Contact each upstream: reachable or not, its tools under their advertised names, and
    /// which roles may call each. Exits non-zero if one is unreachable or has colliding names.
    Check,
}

/// `gatehouse users ...`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user; the password is read from standard input.
    Add {
        /// User name (what they type on the login page).
        name: String,
        /// A role; repeat for several. Roles decide which scopes the user may grant.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Read the password from standard input (required: passwords never go on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List users and their roles.
    List,
    /// Remove a user and revoke their grants and tokens.
    Remove {
        /// User name.
        name: String,
    },
    /// Set a user's password, read from standard input.
    Passwd {
        /// User name.
        name: String,
        /// Read the password from standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Print a one-time link where the user chooses a password (valid for a day; it replaces
    /// their earlier links), instead of typing a password for them.
    ResetLink {
        /// User name.
        name: String,
    },
    /// Lock a user: nobody signs in as them, their API tokens are refused, and everything they
    /// had going ends (browser sessions, grants and their tokens), until they are unlocked.
    Lock {
        /// User name.
        name: String,
    },
    /// Unlock a locked user.
    Unlock {
        /// User name.
        name: String,
    },
    /// Link an account at an identity provider to a user: it then signs them in.
    Link {
        /// User name.
        name: String,
        /// The provider's id (`[[identity_providers]]`).
        #[arg(long)]
        provider: String,
        /// The account's subject at the provider (the `sub` of its ID tokens).
        #[arg(long)]
        subject: String,
    },
    /// Unlink an account at an identity provider from a user (refused when it is their last way
    /// to sign in).
    Unlink {
        /// User name.
        name: String,
        /// The provider's id.
        #[arg(long)]
        provider: String,
        /// The account's subject at the provider.
        #[arg(long)]
        subject: String,
    },
}

/// `gatehouse clients ...`
#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register a client; prints its id, and its secret once if confidential.
    Add {
        /// Name shown on the consent page.
        #[arg(long)]
        name: String,
        /// Allowed redirect URI; repeat for several.
        #[arg(long = "redirect-uri", value_name = "URI", required = true)]
        redirect_uris: Vec<String>,
        /// Issue a client secret (for server-side clients).
        #[arg(long)]
        confidential: bool,
    },
    /// List clients.
    List,
    /// Remove a client and revoke its grants and tokens.
    Remove {
        /// Client id.
        id: String,
    },
}

/// `gatehouse keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List signing keys: kid, algorithm, state, created, activated, retire-after.
    List,
    /// Start a rotation: publish a new key as `next`; it signs once `key_rotation.publish_lead`
    /// has passed, so every verifier knows it first. The old key keeps verifying until the
    /// tokens it signed have expired.
    Rotate {
        /// Emergency: a key signs at once (the waiting next key, or a new one); the old one
        /// only verifies until its tokens expire.
        #[arg(long)]
        now: bool,
        /// Algorithm of the new key: ES256, EdDSA or RS256. Default: `signing_algorithm`.
        #[arg(long, value_parser = parse_algorithm)]
        alg: Option<SigningAlgorithm>,
    },
    /// Emergency: withdraw a key; tokens it signed stop working at once.
    Retire {
        /// The key id (see `keys list`). Key ids are base64url, so one may start with `-`.
        #[arg(allow_hyphen_values = true)]
        kid: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `gatehouse tokens ...`
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an API token for a user; the token is printed once.
    Create {
        /// The user it acts for.
        #[arg(long)]
        user: String,
        /// Its name (shown in lists).
        #[arg(long)]
        name: String,
        /// A scope it carries (repeat for more), within what the user's roles allow.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Days until it expires (default 90; at most `api_tokens.max_days`). `never` only
        /// where `api_tokens.allow_no_expiry` is set.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List API tokens (of one user, or everyone's).
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke one API token by its id, or every grant and token of a user or of a client.
    Revoke(RevokeTarget),
}

/// `gatehouse grants ...`
#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List a user's grants: the application, scopes, when made, and whether still live.
    List {
        /// The user.
        #[arg(long)]
        user: String,
    },
    /// Revoke one grant by its id: its refresh tokens at once, its access tokens within
    /// `revocation_sync_interval`.
    Revoke {
        /// The grant's id (see `grants list`).
        id: String,
    },
}

/// What to revoke.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RevokeTarget {
    /// An API token's id (see `tokens list`).
    pub id: Option<String>,
    /// A user name: every grant, token and browser session of theirs.
    #[arg(long)]
    pub user: Option<String>,
    /// A client id: every grant and token of it.
    #[arg(long)]
    pub client: Option<String>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The doctor examines any server, so it reads no configuration of this one.
    if let Command::Doctor(args) = cli.command {
        return run_doctor(args);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(ConfigErrors(lines)) => {
            for line in lines {
                eprintln!("gatehouse: configuration error: {line}");
            }
            return ExitCode::from(2);
        }
    };
    init_tracing(matches!(cli.command, Command::Serve), config.log_format);
    let runtime = match crate::server::runtime() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("gatehouse: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gatehouse: error: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause said once: several errors (ours and sqlx's)
/// already include their cause in their own message, and the whole chain repeated it up to four
/// times.
fn run_doctor(args: doctor::DoctorArgs) -> ExitCode {
    let runtime = match crate::server::runtime() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("gatehouse: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(doctor::doctor(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("gatehouse: error: {}", one_line(&err));
            ExitCode::from(2)
        }
    }
}

fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn init_tracing(serving: bool, format: crate::config::LogFormat) {
    // A one-shot command answers in one line: sqlx's slow-statement warnings
    // (a busy disk can make opening the file take a second) are for the
    // operator of a running server, not for someone typing `keys rotate`.
    // rmcp says at INFO that each stateless MCP request's service finished:
    // a line per request, a tenth of `/mcp`'s throughput, and nothing for an
    // operator (the audit log has every tool call).
    let default = if serving {
        "info,sqlx=warn,rmcp=warn"
    } else {
        "warn,sqlx=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        // One object per line; the request's span (its id, method and path) on each.
        crate::config::LogFormat::Json => logger
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        crate::config::LogFormat::Text => logger
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => crate::server::serve(config).await,
        Command::Keys(KeysCommand::List) => keys_list(&config).await,
        Command::SetupLink => admin::setup_link(&config).await,
        Command::Users(cmd) => admin::users(&config, cmd).await,
        Command::Clients(cmd) => admin::clients(&config, cmd).await,
        Command::Keys(KeysCommand::Rotate { now, alg }) => keys_rotate(&config, now, alg).await,
        Command::Keys(KeysCommand::Retire { kid, yes }) => keys_retire(&config, &kid, yes).await,
        Command::Tokens(cmd) => admin::tokens(&config, cmd).await,
        Command::Grants(cmd) => admin::grants(&config, cmd).await,
        Command::Upstreams(UpstreamsCommand::List) => {
            print!("{}", upstreams::list(&config));
            Ok(())
        }
        Command::Doctor(_) => anyhow::bail!("the doctor runs without a configuration"),
        Command::Upstreams(UpstreamsCommand::Check) => {
            print!("{}", upstreams::check(config).await?);
            Ok(())
        }
    }
}

fn parse_algorithm(raw: &str) -> Result<SigningAlgorithm, String> {
    SigningAlgorithm::parse(raw).ok_or_else(|| format!("{raw:?} is not ES256, EdDSA or RS256"))
}

/// The database and private-key vault the key commands work on: the same as `serve`'s.
async fn key_context(config: &Config) -> anyhow::Result<(Store, Vault, RotationPolicy)> {
    let store = Store::open(&config.database)
        .await
        .with_context(|| format!("cannot open database {}", config.database))?;
    let vault = Vault::open(
        &store,
        &config.keys_dir,
        config.keys_passphrase.as_ref().map(|p| p.0.as_str()),
        OffsetDateTime::now_utc(),
    )
    .await?;
    Ok((store, vault, RotationPolicy::from_config(config)))
}

const RUNNING_SERVERS: &str =
    "running servers pick this up within key_rotation.check_interval (or at once on SIGHUP)";

/// `gatehouse keys rotate [--now] [--alg ALG]`
async fn keys_rotate(
    config: &Config,
    now: bool,
    alg: Option<SigningAlgorithm>,
) -> anyhow::Result<()> {
    let (store, vault, policy) = key_context(config).await?;
    let alg = alg.unwrap_or(config.signing_algorithm);
    let at = OffsetDateTime::now_utc();
    let result = if now {
        lifecycle::rotate_now(&store, &vault, alg, &policy, at)
            .await
            .map(|kid| {
                format!(
                    "Signing key {kid} signs from now on; the previous key verifies until {} and is then retired; {RUNNING_SERVERS}.",
                    format_time(Some(at + policy.retire_delay))
                )
            })
    } else {
        lifecycle::rotate(&store, &vault, alg, &policy, at)
            .await
            .map(|key| {
                format!(
                    "Published signing key {} ({}) as next: it starts signing at {}; {RUNNING_SERVERS}.",
                    key.kid,
                    key.alg,
                    format_time(key.activate_after)
                )
            })
    };
    store.close().await;
    println!("{}", result?);
    Ok(())
}

/// `gatehouse keys retire KID [--yes]`
async fn keys_retire(config: &Config, kid: &str, yes: bool) -> anyhow::Result<()> {
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            anyhow::bail!(
                "retiring {kid} makes every token it signed fail at once; add --yes to confirm"
            );
        }
        print!(
            "Retiring {kid} makes every access token it signed fail at once (clients must refresh). Type the key id to confirm: "
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        if answer.trim() != kid {
            anyhow::bail!("not confirmed; nothing changed");
        }
    }
    let (store, vault, policy) = key_context(config).await?;
    let result = lifecycle::retire_now(
        &store,
        &vault,
        config.signing_algorithm,
        &policy,
        kid,
        OffsetDateTime::now_utc(),
    )
    .await;
    store.close().await;
    let signing = result?;
    println!(
        "Retired signing key {kid}: tokens it signed no longer verify. Signing key: {signing}; {RUNNING_SERVERS}."
    );
    Ok(())
}

use crate::clock::format_time;

/// `gatehouse keys list`
async fn keys_list(config: &Config) -> anyhow::Result<()> {
    let store = Store::open(&config.database)
        .await
        .with_context(|| format!("cannot open database {}", config.database))?;
    let keys = store.signing_keys().await?;
    store.close().await;
    if keys.is_empty() {
        println!("No signing keys yet: `gatehouse serve` generates the first one when it starts.");
        return Ok(());
    }
    println!(
        "{:<43}  {:<5}  {:<8}  {:<20}  {:<20}  {:<20}  PRIVATE KEY FILE",
        "KID", "ALG", "STATE", "CREATED", "SIGNS FROM", "RETIRE AFTER / RETIRED"
    );
    for key in keys {
        let file = match KeyFile::read(&config.keys_dir, &key.kid) {
            Ok(Some(f)) if f.sealed_private_jwk.is_some() => "present (sealed)".to_owned(),
            Ok(Some(_)) => "present".to_owned(),
            Ok(None) if key.private_sealed.is_some() => "sealed in the database".to_owned(),
            Ok(None) if key.state == crate::keys::KeyState::Retired => "destroyed".to_owned(),
            Ok(None) => "missing".to_owned(),
            Err(err) => format!("unreadable ({err})"),
        };
        // A next key has not signed yet: show when it will.
        let activated = key.activated_at.or(key.activate_after);
        println!(
            "{:<43}  {:<5}  {:<8}  {:<20}  {:<20}  {:<20}  {file}",
            key.kid,
            key.alg.as_str(),
            key.state.as_str(),
            format_time(Some(key.created_at)),
            format_time(activated),
            format_time(key.retire_after.or(key.retired_at)),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A key id is base64url and may start with `-` (one in 64 does): it is still the key id,
    /// not an unknown flag (a test that retired a random key failed now and then on it).
    #[test]
    fn a_key_id_starting_with_a_dash_is_a_key_id() {
        let cli = Cli::try_parse_from(["gatehouse", "keys", "retire", "-Zx_9", "--yes"])
            .unwrap_or_else(|e| panic!("{e}"));
        match cli.command {
            Command::Keys(KeysCommand::Retire { kid, yes }) => {
                assert_eq!(kid, "-Zx_9");
                assert!(yes);
            }
            other => panic!("{other:?}"),
        }
    }
}
