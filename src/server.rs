//! `gatehouse serve`: start both halves on one listener and stop cleanly on SIGTERM or Ctrl-C.
//!
//! A stop: `/health` answers 503 "draining" at once; after `connections.drain_delay` the
//! listeners stop accepting; requests in flight get `connections.shutdown_timeout` to finish
//! ([`crate::edge`]); then the periodic tasks stop, the writes sent off in the background (audit
//! events of MCP calls, last uses) are waited for, the database's pending writes are committed,
//! and the process exits 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::state::AppState;

/// The async runtime every `gatehouse` command runs on, and the benches measure.
///
/// Tried and not kept (`BENCHMARKS.md`): on SQLite, running the worker threads at a lower
/// priority than SQLite's connection threads, so that the one writer is never kept from a core.
/// Refreshes at 16 clients went from about 11,500/s to 12,700-15,500/s, but MCP tool calls,
/// the steady traffic of a deployment, lost 10-20% in the same runs.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Runs the server until a shutdown signal; then drains requests and closes the database.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    for default in &config.development_defaults {
        tracing::warn!("DEVELOPMENT DEFAULT in force: {default}");
    }
    if config.issuer.is_https() && config.trusted_proxies.is_empty() {
        tracing::warn!(
            "issuer is https but trusted_proxies is empty: if a TLS proxy forwards to this server, every client arrives from its address, so the per-address rate limits and connections.max_per_address ({}) apply to all clients together; list the proxy's address in trusted_proxies",
            config.connections.max_per_address
        );
    }
    let bind = config.bind;
    let shutdown = shutdown_signal();
    crate::edge::raise_open_files(&config);
    let state = AppState::start(config, Arc::new(SystemClock)).await?;
    let listener = listen(bind).await?;
    let config = state.config.clone();
    let stop = CancellationToken::new();
    let metrics_server = match config.metrics_bind {
        Some(at) => {
            let metrics = listen(at).await.context("metrics_bind")?;
            tracing::info!(
                "Prometheus metrics at http://{at}{}",
                crate::routes::METRICS
            );
            let router = crate::health::metrics_router(state.clone());
            Some(tokio::spawn(crate::edge::serve(
                metrics,
                router,
                crate::edge::Edge::new(&config),
                stop.clone(),
            )))
        }
        None => None,
    };
    let kid = state.keys.snapshot().current().kid().to_owned();
    let setup = crate::account::setup::new_link(&config, &state.store, state.clock.now()).await?;
    if let Some(link) = setup {
        tracing::warn!(
            "Nobody can sign in yet. To create the first admin, open this link within an hour (it works once): {link}"
        );
    }
    tracing::info!(
        bind = %bind,
        issuer = %config.issuer,
        database = %config.database,
        signing_key = %kid,
        "Gatehouse is listening; MCP clients connect to {}",
        config.resource()
    );
    let (s1, s2, s3) = (state.clone(), state.clone(), state.clone());
    let housekeeping = tokio::spawn(every("housekeeping", HOUSEKEEPING_INTERVAL, move || {
        housekeeping(s1.clone())
    }));
    let revocation_sync = tokio::spawn(every(
        "revocation sync",
        config.revocation_sync_interval,
        move || sync_revocations(s2.clone()),
    ));
    let key_maintenance = tokio::spawn(every(
        "key maintenance",
        config.key_rotation.check_interval,
        move || maintain_keys(s3.clone()),
    ));
    let reload_on_hangup = tokio::spawn(reload_on_hangup(state.clone()));
    let gateway = state.gateway.clone();
    let upstream_sweep = tokio::spawn(every(
        "upstream sessions",
        time::Duration::try_from(state.gateway.sweep_every()).unwrap_or(time::Duration::SECOND),
        move || {
            let gateway = gateway.clone();
            async move { gateway.end_idle() }
        },
    ));
    if !state.gateway.is_empty() {
        tokio::spawn(check_upstreams(state.gateway.clone()));
    }
    let draining = {
        let (state, stop) = (state.clone(), stop.clone());
        async move {
            shutdown.await;
            state.draining.store(true, Ordering::SeqCst);
            let delay = state.config.connections.drain_delay;
            if delay > 0 {
                tracing::info!(
                    "draining: /health answers 503 for {delay} s (connections.drain_delay), then no new connection is accepted"
                );
                tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
            }
            stop.cancel();
        }
    };
    tokio::join!(
        crate::edge::serve(
            listener,
            crate::app(state.clone()),
            crate::edge::Edge::measured(&config, state.metrics.clone()),
            stop.clone(),
        ),
        draining
    );
    if let Some(metrics) = metrics_server {
        let _ = metrics.await;
    }
    housekeeping.abort();
    revocation_sync.abort();
    key_maintenance.abort();
    reload_on_hangup.abort();
    upstream_sweep.abort();
    state.gateway.end_all();
    // The writes sent off in the background, then the database's own pending ones.
    state.store.close().await;
    tracing::info!("Gatehouse stopped");
    Ok(())
}

/// A listening socket of `serve`, served by [`crate::edge::serve`].
pub async fn listen(bind: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))
}

/// Contacts every upstream once at start, so that an unreachable one, and tool names two tools
/// would share, show in the log at once rather than at a user's first call.
async fn check_upstreams(gateway: Arc<crate::gateway::Gateway>) {
    for (name, result) in gateway.probe(&crate::gateway::Caller::operator()).await {
        match result {
            Ok(tools) => {
                tracing::info!(upstream = %name, tools = tools.len(), "upstream reachable")
            }
            Err(e) => {
                tracing::warn!(upstream = %name, error = %e, "upstream not reachable at start; it is tried again at each use")
            }
        }
    }
}

/// Runs `task` every `period`; a tick missed while the task ran waits instead of bursting. Each
/// run is a task of its own: one that panics is logged, and the next runs at the next tick (a
/// panic would otherwise end the schedule for good, silently).
async fn every<F, Fut>(name: &'static str, period: time::Duration, mut task: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let secs = u64::try_from(period.whole_seconds()).unwrap_or(1).max(1);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = tokio::spawn(task()).await {
            tracing::error!(task = name, error = %err, "a periodic task failed; it runs again at the next interval");
        }
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

/// Periodic clean-up: never-used registrations, expired sessions, idle rate-limiter entries,
/// codes, grants and replay responses that can no longer be used, and old audit events.
async fn housekeeping(state: AppState) {
    match state.prune().await {
        Ok(pruned) if pruned == crate::store::Pruned::default() => {}
        Ok(pruned) => tracing::info!(
            codes = pruned.codes,
            grants = pruned.grants,
            refresh_responses = pruned.refresh_responses,
            revoked_access_tokens = pruned.revoked_access_tokens,
            audit_events = pruned.audit_events,
            sign_in_failures = pruned.sign_in_failures,
            "deleted codes, grants, replay responses and failed sign-ins that can no longer matter, and audit events past their retention"
        ),
        Err(err) => tracing::error!(error = %err, "cannot delete expired codes and grants"),
    }
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

/// Resolves at SIGTERM or Ctrl-C (SIGINT). Both are registered when this is called, not when the
/// future is first polled: `serve` calls it before it binds, so a signal that comes as soon as
/// the server answers (a rolling restart, a test) is a clean stop, never the default action
/// that kills the process.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let wait = |registered: std::io::Result<tokio::signal::unix::Signal>,
                    name: &'static str| async move {
            match registered {
                Ok(mut sig) => {
                    sig.recv().await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(interrupt, "Ctrl-C") => tracing::info!("Ctrl-C received, shutting down"),
            () = wait(terminate, "SIGTERM") => tracing::info!("SIGTERM received, shutting down"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::every;

    /// A periodic run that panics (a bug, bad data) does not end its schedule: the next tick
    /// runs it again (review: a panicking clean-up would have stopped every later one).
    #[tokio::test(start_paused = true)]
    async fn a_periodic_task_that_panics_runs_again() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let schedule = tokio::spawn(every("test", time::Duration::seconds(1), move || {
            let counted = counted.clone();
            async move {
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("the first run fails");
                }
            }
        }));
        tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
        assert!(
            runs.load(Ordering::SeqCst) >= 3,
            "it ran again after the panic"
        );
        assert!(!schedule.is_finished());
        schedule.abort();
    }
}
