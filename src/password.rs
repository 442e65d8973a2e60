//! Password hashing with argon2id (RFC 9106 parameters of the argon2 crate: m=19456 KiB, t=2,
//! p=1): one hash costs ~18 ms of a core and 19 MiB of memory while it runs.
//!
//! The server checks passwords on a [`PasswordPool`]: a fixed set of threads behind a bounded
//! queue. At most `workers` checks run at once (so at most `workers` x 19 MiB), at most `queue`
//! wait, and a check beyond that is refused at once as [`Busy`] (the sign-in page answers 503
//! with `Retry-After`). A flood of sign-in attempts therefore costs bounded memory and leaves
//! the rest of the server answering. The check against the dummy hash, for names that do not
//! exist, goes through the same pool, so neither its timing nor its refusal tells names apart.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::oneshot;

/// Shortest and longest accepted passwords.
pub const MIN_LEN: usize = 8;
/// Longest accepted password (bounds the hashing work an attacker can ask for).
pub const MAX_LEN: usize = 1024;

/// Why a password could not be set.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Too short or too long.
    #[error("the password must be {MIN_LEN} to {MAX_LEN} characters long")]
    Length,
    /// The hasher failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hashes a new password (argon2id, random salt) on a blocking thread (the CLI sets passwords;
/// the server only checks them, on its [`PasswordPool`]).
pub async fn hash(password: String) -> Result<String, PasswordError> {
    if !(MIN_LEN..=MAX_LEN).contains(&password.chars().count()) {
        return Err(PasswordError::Length);
    }
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .map_err(|e| PasswordError::Hash(e.to_string()))?
}

fn hash_now(password: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// A real argon2id hash of a random password nobody knows, verified against when the user does
/// not exist, so an unknown name costs the same time as a wrong password. Made once.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = crate::domain::random_token(32).unwrap_or_else(|_| "x".repeat(43));
        hash_now(&random).unwrap_or_default()
    })
}

/// Checks `password` against `stored`, or against the dummy hash when there is none (always
/// false then). On the calling thread: only the pool's workers call it.
fn verify_now(password: &str, stored: Option<&str>) -> bool {
    let hash: &str = match stored {
        Some(stored) => stored,
        None => dummy_hash(),
    };
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok();
    ok && stored.is_some()
}

/// The pool is full: the check was not made. Answer 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many password checks are waiting; try again in a moment")]
pub struct Busy;

/// What the pool has seen, for tests and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Worker threads.
    pub workers: usize,
    /// Most checks allowed to wait for a worker.
    pub queue: usize,
    /// Checks admitted and not finished (waiting or running) now.
    pub in_flight: usize,
    /// The most ever admitted at once: never more than `workers + queue`.
    pub peak_in_flight: usize,
    /// The most that ever ran at once: never more than `workers`.
    pub peak_running: usize,
    /// Checks refused because the queue was full.
    pub refused: u64,
    /// Checks made.
    pub done: u64,
}

#[derive(Debug, Default)]
struct Counters {
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    running: AtomicUsize,
    peak_running: AtomicUsize,
    refused: AtomicU64,
    done: AtomicU64,
}

/// One password to check, and where its answer goes.
struct Job {
    password: String,
    stored: Option<String>,
    reply: oneshot::Sender<bool>,
}

impl Job {
    /// Checks the password; `finished` runs before the answer is sent, so an asker that has its
    /// answer finds the pool's counters already up to date.
    fn run(self, finished: impl FnOnce()) {
        let matched = verify_now(&self.password, self.stored.as_deref());
        finished();
        let _ = self.reply.send(matched);
    }
}

/// Threads that check passwords, behind a bounded queue (see the module's account).
/// The threads end when the last clone of the pool is dropped.
#[derive(Clone)]
pub struct PasswordPool {
    jobs: SyncSender<Job>,
    counters: Arc<Counters>,
    workers: usize,
    queue: usize,
}

impl std::fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordPool")
            .field("stats", &self.stats())
            .finish()
    }
}

impl PasswordPool {
    /// Starts `workers` threads (at least one) with room for `queue` waiting checks.
    pub fn start(workers: usize, queue: usize) -> std::io::Result<Self> {
        let workers = workers.max(1);
        // Admission is counted (`submit`); the channel only needs room for what is admitted.
        let (jobs, receiver) = sync_channel(workers + queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let counters = Arc::new(Counters::default());
        for n in 0..workers {
            let (receiver, counters) = (receiver.clone(), counters.clone());
            std::thread::Builder::new()
                .name(format!("password-{n}"))
                .spawn(move || work(&receiver, &counters))?;
        }
        Ok(Self {
            jobs,
            counters,
            workers,
            queue,
        })
    }

    /// Checks `password` against `stored` (or against a dummy hash when there is no such user).
    /// Over-long passwords are refused without hashing.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, Busy> {
        if password.chars().count() > MAX_LEN {
            return Ok(false);
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job {
            password,
            stored,
            reply,
        })?;
        // A worker that died with the job (it cannot panic, but if it did): not a match.
        Ok(answer.await.unwrap_or(false))
    }

    fn submit(&self, job: Job) -> Result<(), Busy> {
        let limit = self.workers + self.queue;
        let admitted =
            self.counters
                .in_flight
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < limit).then_some(n + 1)
                });
        let Ok(before) = admitted else {
            self.counters.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Busy);
        };
        self.counters
            .peak_in_flight
            .fetch_max(before + 1, Ordering::SeqCst);
        // Room is certain (the channel holds `limit`); only stopped workers could refuse it.
        if self.jobs.try_send(job).is_err() {
            self.counters.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(Busy);
        }
        Ok(())
    }

    /// What the pool has seen so far.
    pub fn stats(&self) -> PoolStats {
        let c = &self.counters;
        PoolStats {
            workers: self.workers,
            queue: self.queue,
            in_flight: c.in_flight.load(Ordering::SeqCst),
            peak_in_flight: c.peak_in_flight.load(Ordering::SeqCst),
            peak_running: c.peak_running.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            done: c.done.load(Ordering::SeqCst),
        }
    }
}

/// One worker: takes jobs until every sender is gone.
fn work(receiver: &Mutex<Receiver<Job>>, counters: &Counters) {
    // Made before the first request, so the first unknown name costs what any other does.
    let _ = dummy_hash();
    loop {
        let job = {
            let receiver = receiver.lock().unwrap_or_else(|p| p.into_inner());
            receiver.recv()
        };
        let Ok(job) = job else { return };
        // The asker gave up (its client went away): the work would be wasted.
        if job.reply.is_closed() {
            counters.in_flight.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let running = counters.running.fetch_add(1, Ordering::SeqCst) + 1;
        counters.peak_running.fetch_max(running, Ordering::SeqCst);
        job.run(|| {
            counters.running.fetch_sub(1, Ordering::SeqCst);
            counters.done.fetch_add(1, Ordering::SeqCst);
            counters.in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let pool = PasswordPool::start(1, 4).expect("pool");
        let stored = hash("correct horse".to_owned()).await.expect("hash");
        assert!(stored.starts_with("$argon2id$"));
        assert_eq!(
            pool.verify("correct horse".to_owned(), Some(stored.clone()))
                .await,
            Ok(true)
        );
        assert_eq!(
            pool.verify("wrong horse".to_owned(), Some(stored)).await,
            Ok(false)
        );
        assert_eq!(
            pool.verify("correct horse".to_owned(), None).await,
            Ok(false)
        );
        assert!(matches!(
            hash("short".to_owned()).await,
            Err(PasswordError::Length)
        ));
        assert_eq!(pool.stats().done, 3);
    }

    /// Beyond the workers and the queue, a check is refused at once; nothing more ever runs or
    /// waits than the pool allows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_beyond_the_queue_is_refused_at_once() {
        let pool = PasswordPool::start(1, 2).expect("pool");
        let stored = hash("correct horse".to_owned()).await.expect("hash");
        let checks: Vec<_> = (0..12)
            .map(|_| {
                let (pool, stored) = (pool.clone(), stored.clone());
                tokio::spawn(async move { pool.verify("wrong horse".into(), Some(stored)).await })
            })
            .collect();
        let mut refused = 0;
        for check in checks {
            match check.await.expect("task") {
                Ok(matched) => assert!(!matched),
                Err(Busy) => refused += 1,
            }
        }
        let stats = pool.stats();
        assert!(refused > 0, "{stats:?}");
        assert_eq!(stats.refused, refused);
        assert_eq!(stats.done + stats.refused, 12);
        assert!(
            stats.peak_in_flight <= 3 && stats.peak_running == 1,
            "at most one running and two waiting: {stats:?}"
        );
    }
}
