//! `gatehouse serve`: start both halves on one listener and stop cleanly on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::state::AppState;
use crate::store::Backend;

/// How much the runtime's threads yield to SQLite's on a SQLite database: added to the process's
/// nice value (higher is humbler; 10 more gives a waiting SQLite thread about nine tenths of a
/// core against one of them).
const WORKER_NICENESS: i32 = 10;

/// The async runtime every `gatehouse` command runs on, and the benches measure.
///
/// On SQLite, every write in the process goes through one connection, whose statements run on a
/// thread of its own (`store/write.rs`); every request that writes waits for it. With the
/// runtime's workers as busy as the cores, that thread was kept waiting for a core about half
/// the time it had work, and the token endpoint ran at 11,400-11,900 refreshes/s on two cores;
/// with the workers at nice 10, 12,700-14,400/s (`BENCHMARKS.md`). So on SQLite the runtime's
/// threads run [`WORKER_NICENESS`] nicer than the process: SQLite's threads (the writer, the readers) come
/// first, and the workers still have every core they leave. The database's threads must be
/// started by a thread that is not a worker (`Store::open`, from `block_on`) or they would
/// inherit the lower priority. On PostgreSQL the database is another process and nothing changes.
pub fn runtime(config: &Config) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.database.backend() == Backend::Sqlite {
        builder.on_thread_start(yield_to_the_database);
    }
    builder.build()
}

fn yield_to_the_database() {
    let thread = rustix::thread::gettid();
    // Relative to the process's own (a server started under `nice` keeps its place), and only
    // ever lower, which needs no privilege. If refused, the thread keeps its priority.
    let lowered = rustix::process::getpriority_process(Some(thread)).and_then(|now| {
        rustix::process::setpriority_process(Some(thread), (now + WORKER_NICENESS).min(19))
    });
    if let Err(error) = lowered {
        tracing::debug!(%error, "cannot lower a worker thread's priority");
    }
}

/// Runs the server until a shutdown signal; then drains requests and closes the database.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    for default in &config.development_defaults {
        tracing::warn!("DEVELOPMENT DEFAULT in force: {default}");
    }
    let bind = config.bind;
    let state = AppState::start(config, Arc::new(SystemClock)).await?;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let config = state.config.clone();
    let kid = state.keys.snapshot().current().kid().to_owned();
    tracing::info!(
        bind = %bind,
        issuer = %config.issuer,
        database = %config.database,
        signing_key = %kid,
        "Gatehouse is listening; MCP clients connect to {}",
        config.resource()
    );
    let (s1, s2, s3) = (state.clone(), state.clone(), state.clone());
    let housekeeping = tokio::spawn(every(HOUSEKEEPING_INTERVAL, move || {
        housekeeping(s1.clone())
    }));
    let revocation_sync = tokio::spawn(every(config.revocation_sync_interval, move || {
        sync_revocations(s2.clone())
    }));
    let key_maintenance = tokio::spawn(every(config.key_rotation.check_interval, move || {
        maintain_keys(s3.clone())
    }));
    let reload_on_hangup = tokio::spawn(reload_on_hangup(state.clone()));
    axum::serve(
        listener,
        crate::app(state.clone()).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .context("server failed")?;
    housekeeping.abort();
    revocation_sync.abort();
    key_maintenance.abort();
    reload_on_hangup.abort();
    state.store.close().await;
    tracing::info!("Gatehouse stopped");
    Ok(())
}

/// Runs `task` every `period`; a tick missed while the task ran waits instead of bursting.
async fn every<F, Fut>(period: time::Duration, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let secs = u64::try_from(period.whole_seconds()).unwrap_or(1).max(1);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        task().await;
    }
}

/// Reads revocations made elsewhere; run every `revocation_sync_interval`, the bound on how long
/// one takes to reach this instance.
async fn sync_revocations(state: AppState) {
    if let Err(err) = state.sync_revocations().await {
        tracing::error!(error = %err, "cannot read revocations; retrying at the next interval");
    }
}

/// Runs the key-rotation schedule and re-reads the key states; run every
/// `key_rotation.check_interval`, the bound on how long a `gatehouse keys` command or another
/// instance's change takes to reach this instance.
async fn maintain_keys(state: AppState) {
    if let Err(err) = state.maintain_keys().await {
        tracing::error!(error = %err, "signing-key maintenance failed; the keys in force stay, retrying at the next interval");
    }
}

/// `kill -HUP` re-reads keys and revocations at once, without waiting for the next interval.
async fn reload_on_hangup(state: AppState) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(sig) => sig,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGHUP");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading signing keys and revocations");
        if let Err(err) = state.keys.reload(&state.store).await {
            tracing::error!(error = %err, "cannot reload signing keys");
        }
        sync_revocations(state.clone()).await;
    }
}

/// How often the periodic clean-up runs.
const HOUSEKEEPING_INTERVAL: time::Duration = time::Duration::minutes(10);

/// Periodic clean-up: never-used registrations, expired sessions, idle rate-limiter entries.
async fn housekeeping(state: AppState) {
    match crate::oauth::register::expire_unused_clients(&state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "expired never-used client registrations"),
        Err(err) => tracing::error!(error = %err, "cannot expire unused client registrations"),
    }
    match state.store.delete_expired_sessions(state.clock.now()).await {
        Ok(_) => {}
        Err(err) => tracing::error!(error = %err, "cannot delete expired sessions"),
    }
    state.limits.prune();
    if let Err(err) = state.limits.prune_shared(state.clock.now()).await {
        tracing::error!(error = %err, "cannot delete idle rate-limit budgets");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// (thread id, name, nice) of every thread of this process.
    fn threads() -> Vec<(String, String, i32)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc/self/task").unwrap() {
            let tid = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
                continue; // ended meanwhile
            };
            let name = stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()].to_owned();
            // Fields after the name start at the third (state); nice is the nineteenth.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            out.push((tid, name, fields[16].parse().unwrap()));
        }
        out
    }

    #[test]
    fn on_sqlite_the_workers_yield_to_the_database_threads() {
        let dir = tempfile::TempDir::new().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let config =
            Config::for_tests("https://mcp.example.com", &url, &dir.path().join("keys")).unwrap();
        let before: Vec<String> = threads().into_iter().map(|t| t.0).collect();
        let base = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let runtime = runtime(&config).unwrap();
        let (store, worker_nice) = runtime.block_on(async {
            let store = crate::store::Store::open(&config.database).await.unwrap();
            // A write and a read, so that every connection has done work.
            store.ping().await.unwrap();
            let nice = tokio::spawn(async {
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
            })
            .await
            .unwrap();
            (store, nice)
        });
        assert_eq!(worker_nice, (base + WORKER_NICENESS).min(19));
        let database: Vec<_> = threads()
            .into_iter()
            .filter(|(tid, name, _)| !before.contains(tid) && name.starts_with("sqlx-sqlite"))
            .collect();
        // The writer and the readers.
        assert!(database.len() >= 5, "{database:?}");
        assert!(
            database.iter().all(|(_, _, nice)| *nice == base),
            "a database thread inherited a worker's priority: {database:?}"
        );
        runtime.block_on(store.close());
    }

    #[test]
    fn on_postgres_nothing_changes() {
        let dir = tempfile::TempDir::new().unwrap();
        let config = Config::for_tests(
            "https://mcp.example.com",
            "postgres://u@127.0.0.1:1/none",
            &dir.path().join("keys"),
        )
        .unwrap();
        let base = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let runtime = runtime(&config).unwrap();
        let nice = runtime.block_on(async {
            tokio::spawn(async {
                rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
            })
            .await
            .unwrap()
        });
        assert_eq!(nice, base);
    }
}
