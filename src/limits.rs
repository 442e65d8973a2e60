//! Rate limiters: in memory per instance, and the per-token limit of `/mcp` in the database
//! when several instances share one (PostgreSQL).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;
use crate::store::{Backend, RateTake, Store};

/// The limiters of one server instance.
#[derive(Debug)]
pub struct Limits {
    /// The per-address budgets of ordinary addresses.
    addresses: AddressBudgets,
    /// Hosted clients' egress (`rate_limits.shared_egress`) and their larger budgets.
    shared_egress: Option<(Vec<ipnet::IpNet>, AddressBudgets)>,
    mcp_token: Informed<String>,
    mcp_token_limit: u32,
    /// Where the per-token budgets are counted when they are global.
    shared: Option<Store>,
    /// After the database failed to count a budget: budgets are counted in this instance
    /// without asking it for a while.
    shared_paused: Pause,
    refusal_audit: DefaultKeyedRateLimiter<String>,
    failures_by_client: Failures<String>,
}

/// Every budget kept per client address, each sized as configured times a factor (1, or
/// `rate_limits.shared_egress_factor` for hosted clients' egress, where many people arrive from
/// one address).
#[derive(Debug)]
struct AddressBudgets {
    registration: DefaultKeyedRateLimiter<IpAddr>,
    metadata_fetch: DefaultKeyedRateLimiter<IpAddr>,
    mcp_unauthenticated: Informed<IpAddr>,
    mcp_unauthenticated_limit: u32,
    public: DefaultKeyedRateLimiter<IpAddr>,
    oauth: DefaultKeyedRateLimiter<IpAddr>,
    failures: Failures<IpAddr>,
}

impl AddressBudgets {
    fn new(config: &Config, factor: u32) -> Self {
        let times = |n: u32| n.saturating_mul(factor);
        let per_hour = config
            .registration
            .rate_limit_per_hour
            .saturating_mul(std::num::NonZeroU32::new(factor).unwrap_or(std::num::NonZeroU32::MIN));
        let unauthenticated = times(config.mcp.rate_limit_unauthenticated);
        Self {
            registration: RateLimiter::keyed(Quota::per_hour(per_hour)),
            metadata_fetch: RateLimiter::keyed(per_minute(times(METADATA_FETCHES_PER_MINUTE))),
            mcp_unauthenticated: RateLimiter::keyed(per_minute(unauthenticated))
                .with_middleware::<governor::middleware::StateInformationMiddleware>(
            ),
            mcp_unauthenticated_limit: unauthenticated,
            public: RateLimiter::keyed(per_minute(times(config.rate_limits.public_per_minute))),
            oauth: RateLimiter::keyed(per_minute(times(config.rate_limits.oauth_per_minute))),
            failures: Failures::new(times(config.rate_limits.failures_per_minute)),
        }
    }

    fn prune(&self, now: Instant) {
        for limiter in [
            &self.registration,
            &self.metadata_fetch,
            &self.public,
            &self.oauth,
        ] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.mcp_unauthenticated.retain_recent();
        self.failures.prune(now);
    }
}

/// Which per-address budget a refusal came from, named in the 429's body and the audit log so an
/// operator knows which setting to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// `mcp.rate_limit_unauthenticated`: `/mcp` without a valid credential.
    Unauthenticated,
    /// `registration.rate_limit_per_hour`.
    Registration,
    /// `rate_limits.oauth_per_minute`.
    OAuth,
    /// `rate_limits.public_per_minute`.
    Public,
    /// `mcp.rate_limit_per_token`: the token's grant.
    Token,
    /// `rate_limits.failures_per_minute`.
    Failures,
}

impl Exhausted {
    /// As the 429's `budget` member says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Registration => "registration",
            Self::OAuth => "oauth",
            Self::Public => "public",
            Self::Token => "token",
            Self::Failures => "failures",
        }
    }
}

/// Failed requests per key, `limit` a minute, all of which may come at once: the generic cell
/// rate algorithm, charged only on failure. While a key owes a full minute's worth, every
/// request of that key is refused without being tried, so guessing gets `limit` tries a
/// minute, not as many as the request budget allows.
#[derive(Debug)]
struct Failures<K> {
    debts: Mutex<Debts<K>>,
    /// What one failure adds.
    interval: Duration,
    /// The debt at which requests are refused.
    tolerance: Duration,
}

#[derive(Debug)]
struct Debts<K> {
    /// Key -> when its debt is paid off (the theoretical arrival time).
    by_key: std::collections::HashMap<K, Instant>,
    /// The one debt of every key that found no room (see [`MAX_FAILURE_KEYS`]).
    overflow: Option<Instant>,
}

/// Keys held at most, so memory stays bounded however many addresses or client ids fail at
/// once (an entry is gone a minute after its last failure anyway). Past it, the keys not held
/// share one budget: under such a flood they are throttled together.
const MAX_FAILURE_KEYS: usize = 100_000;

impl<K: std::hash::Hash + Eq> Failures<K> {
    fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        let interval = Duration::from_secs(60) / per_minute;
        Self {
            debts: Mutex::new(Debts {
                by_key: std::collections::HashMap::new(),
                overflow: None,
            }),
            interval,
            tolerance: interval * per_minute,
        }
    }

    /// How long `key` must wait before its next request is tried; `None` to go ahead.
    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let debts = self.debts.lock().unwrap_or_else(|p| p.into_inner());
        let paid_off = match debts.by_key.get(key) {
            Some(paid_off) => *paid_off,
            None if debts.by_key.len() >= MAX_FAILURE_KEYS => debts.overflow?,
            None => return None,
        };
        let debt = paid_off.checked_duration_since(now)?;
        // Another failure now would pass the tolerance: wait until it would not.
        (debt + self.interval > self.tolerance).then(|| debt + self.interval - self.tolerance)
    }

    /// Counts one failure of `key`.
    fn charge(&self, key: K, now: Instant) {
        let mut debts = self.debts.lock().unwrap_or_else(|p| p.into_inner());
        let held = debts.by_key.contains_key(&key);
        if !held && debts.by_key.len() >= MAX_FAILURE_KEYS {
            debts.by_key.retain(|_, paid_off| *paid_off > now);
        }
        let interval = self.interval;
        let add = |paid_off: &mut Instant| *paid_off = (*paid_off).max(now) + interval;
        if held || debts.by_key.len() < MAX_FAILURE_KEYS {
            add(debts.by_key.entry(key).or_insert(now));
        } else {
            add(debts.overflow.get_or_insert(now));
        }
    }

    /// Forgets the keys that owe nothing.
    fn prune(&self, now: Instant) {
        let mut debts = self.debts.lock().unwrap_or_else(|p| p.into_inner());
        debts.by_key.retain(|_, paid_off| *paid_off > now);
        debts.by_key.shrink_to_fit();
        if debts.overflow.is_some_and(|paid_off| paid_off <= now) {
            debts.overflow = None;
        }
    }
}

/// Which endpoints a request belongs to, for the per-IP budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Discovery documents, the JWK set, `/health`.
    Public,
    /// The authorization server's endpoints and pages.
    OAuth,
}

/// A keyed limiter that reports the remaining budget (for `X-RateLimit-Remaining`).
type Informed<K> = RateLimiter<
    K,
    governor::state::keyed::DefaultKeyedStateStore<K>,
    DefaultClock,
    governor::middleware::StateInformationMiddleware,
>;

/// The outcome of taking one request from a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Requests per minute allowed.
    pub limit: u32,
    /// Requests left now.
    pub remaining: u32,
    /// When refused: how long to wait.
    pub retry_after: Option<Duration>,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN))
}

fn take<K: std::hash::Hash + Eq + Clone>(limiter: &Informed<K>, key: &K, limit: u32) -> Budget {
    match limiter.check_key(key) {
        Ok(snapshot) => Budget {
            limit,
            remaining: snapshot.remaining_burst_capacity(),
            retry_after: None,
        },
        Err(not_until) => Budget {
            limit,
            remaining: 0,
            retry_after: Some(not_until.wait_time_from(DefaultClock::default().now())),
        },
    }
}

/// A pause after a failure, during which something is not asked again.
#[derive(Debug, Default)]
struct Pause(Mutex<Option<Instant>>);

impl Pause {
    /// Whether no pause is under way at `now`.
    fn over(&self, now: Instant) -> bool {
        let mut until = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match *until {
            Some(end) if now < end => false,
            _ => {
                *until = None;
                true
            }
        }
    }

    /// Starts a pause of [`SHARED_BUDGET_PAUSE`] at `now`.
    fn start(&self, now: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(now + SHARED_BUDGET_PAUSE);
    }
}

/// How long a request waits for the database to count its token's budget.
const SHARED_BUDGET_TIMEOUT: Duration = Duration::from_millis(250);

/// After the database failed to count a budget, how long budgets are counted in this instance
/// without asking it: a database that is down costs one request in this many seconds the wait
/// above, not every request.
const SHARED_BUDGET_PAUSE: Duration = Duration::from_secs(5);

/// Metadata documents a client address may have fetched (uncached) per minute.
const METADATA_FETCHES_PER_MINUTE: u32 = 20;

/// The key of an address: IPv6 clients are keyed by their /64, since one host holds a whole
/// /64 and could otherwise rotate through it.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A microsecond timestamp.
fn micros(at: time::OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The budget a shared take leaves, in the same terms as the in-memory limiters: `limit`
/// requests a minute, all of which may come at once.
fn shared_budget(take: RateTake, now: i64, interval: i64, limit: u32) -> Budget {
    let tolerance = interval.saturating_mul(i64::from(limit));
    match take {
        RateTake::Allowed(tat) => Budget {
            limit,
            remaining: u32::try_from((tolerance - (tat - now)).max(0) / interval).unwrap_or(0),
            retry_after: None,
        },
        RateTake::Refused(tat) => Budget {
            limit,
            remaining: 0,
            retry_after: Some(Duration::from_micros(
                u64::try_from(tat + interval - tolerance - now).unwrap_or(0),
            )),
        },
    }
}

impl Limits {
    /// Limiters sized from the configuration. On PostgreSQL the per-token limit of `/mcp` is
    /// counted in `store`, so that it holds across every instance sharing the database; on
    /// SQLite (one instance) it is counted in memory.
    pub fn new(config: &Config, store: &Store) -> Self {
        let shared_egress = (!config.shared_egress.is_empty()).then(|| {
            let factor = config.rate_limits.shared_egress_factor;
            (
                config.shared_egress.clone(),
                AddressBudgets::new(config, factor),
            )
        });
        Self {
            addresses: AddressBudgets::new(config, 1),
            shared_egress,
            shared: (store.backend() == Backend::Postgres).then(|| store.clone()),
            shared_paused: Pause::default(),
            mcp_token: RateLimiter::keyed(per_minute(config.mcp.rate_limit_per_token))
                .with_middleware::<governor::middleware::StateInformationMiddleware>(),
            mcp_token_limit: config.mcp.rate_limit_per_token,
            refusal_audit: RateLimiter::keyed(per_minute(1)),
            failures_by_client: Failures::new(config.rate_limits.failures_per_minute),
        }
    }

    /// The budgets of `ip`: the larger ones of hosted clients' egress, or the ordinary ones.
    fn of(&self, ip: IpAddr) -> &AddressBudgets {
        match &self.shared_egress {
            Some((nets, budgets)) if nets.iter().any(|n| n.contains(&ip)) => budgets,
            _ => &self.addresses,
        }
    }

    /// Takes one registration from `ip`'s budget; `Err` holds how long to wait.
    pub fn registration(&self, ip: IpAddr) -> Result<(), Duration> {
        check(&self.of(ip).registration, ip)
    }

    /// Takes one uncached metadata-document fetch from `ip`'s budget.
    pub fn metadata_fetch(&self, ip: IpAddr) -> Result<(), Duration> {
        check(&self.of(ip).metadata_fetch, ip)
    }

    /// Takes one MCP request from the budget of an access token's grant at `now`: every token
    /// of one grant shares it, so refreshing (or any new token of the same grant) does not
    /// renew it. Shared by every instance when the database is; if the database cannot be
    /// asked, this instance counts alone (and says so in the log) rather than refuse every
    /// request.
    pub async fn mcp_token(&self, grant_id: &str, now: time::OffsetDateTime) -> Budget {
        let asked = Instant::now();
        if let Some(store) = self
            .shared
            .as_ref()
            .filter(|_| self.shared_paused.over(asked))
        {
            let limit = self.mcp_token_limit.max(1);
            let interval = (60_000_000 / i64::from(limit)).max(1);
            let now = micros(now);
            let key = format!("mcp_grant:{grant_id}");
            let take = store.take_rate_budget(&key, now, interval, i64::from(limit));
            // A slow database must not hold every MCP call: past this, count locally.
            let failure = match tokio::time::timeout(SHARED_BUDGET_TIMEOUT, take).await {
                Ok(Ok(outcome)) => return shared_budget(outcome, now, interval, limit),
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {SHARED_BUDGET_TIMEOUT:?}"),
            };
            self.shared_paused.start(asked);
            if self.audit_refusal("rate-limit-store") {
                tracing::warn!(error = %failure, pause = ?SHARED_BUDGET_PAUSE, "cannot count the per-token rate limit in the database; counting in this instance only");
            }
        }
        take(&self.mcp_token, &grant_id.to_owned(), self.mcp_token_limit)
    }

    /// Forgets the shared budgets that are full again; returns how many.
    pub async fn prune_shared(
        &self,
        now: time::OffsetDateTime,
    ) -> Result<u64, crate::store::StoreError> {
        match &self.shared {
            Some(store) => store.delete_idle_rate_budgets(micros(now)).await,
            None => Ok(0),
        }
    }

    /// Takes one MCP request without valid credentials from the client address's budget.
    pub fn mcp_unauthenticated(&self, ip: IpAddr) -> Budget {
        let budgets = self.of(ip);
        take(
            &budgets.mcp_unauthenticated,
            &key(ip),
            budgets.mcp_unauthenticated_limit,
        )
    }

    /// Takes one request to `endpoints` from `ip`'s budget; `Err` holds how long to wait.
    pub fn endpoints(&self, endpoints: Endpoints, ip: IpAddr) -> Result<(), Duration> {
        match endpoints {
            Endpoints::Public => check(&self.of(ip).public, ip),
            Endpoints::OAuth => check(&self.of(ip).oauth, ip),
        }
    }

    /// How long a request to `/token`, `/revoke` or `/introspect` from `ip` for `client_id` must
    /// wait because either has failed too often; `None` to go ahead.
    pub fn credential_failures(
        &self,
        ip: Option<IpAddr>,
        client_id: Option<&str>,
    ) -> Option<Duration> {
        let now = Instant::now();
        let by_ip = ip.and_then(|ip| self.of(ip).failures.wait(&key(ip), now));
        let by_client = client_id.and_then(|id| self.failures_by_client.wait(&id.to_owned(), now));
        by_ip.max(by_client)
    }

    /// Counts a failed request (bad client credentials, a bad code or refresh token) against
    /// `ip` and `client_id`.
    pub fn credential_failed(&self, ip: Option<IpAddr>, client_id: Option<&str>) {
        let now = Instant::now();
        if let Some(ip) = ip {
            self.of(ip).failures.charge(key(ip), now);
        }
        if let Some(id) = client_id {
            self.failures_by_client.charge(id.to_owned(), now);
        }
    }

    /// True at most once a minute per `key`: refusals are audited, floods are not.
    pub fn audit_refusal(&self, key: &str) -> bool {
        self.refusal_audit.check_key(&key.to_owned()).is_ok()
    }

    /// Forgets keys whose budget is full again, so memory stays bounded.
    pub fn prune(&self) {
        let now = Instant::now();
        self.addresses.prune(now);
        if let Some((_, budgets)) = &self.shared_egress {
            budgets.prune(now);
        }
        self.mcp_token.retain_recent();
        self.refusal_audit.retain_recent();
        self.failures_by_client.prune(now);
    }
}

fn check(limiter: &DefaultKeyedRateLimiter<IpAddr>, ip: IpAddr) -> Result<(), Duration> {
    limiter
        .check_key(&key(ip))
        .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_budgets_read_like_the_in_memory_ones() {
        let (limit, interval, now) = (4u32, 15_000_000i64, 1_000_000_000i64);
        // The first request of a full budget leaves limit - 1.
        let first = shared_budget(RateTake::Allowed(now + interval), now, interval, limit);
        assert_eq!((first.remaining, first.retry_after), (3, None));
        // The last one leaves none, and the next must wait one interval.
        let last = shared_budget(RateTake::Allowed(now + 4 * interval), now, interval, limit);
        assert_eq!((last.remaining, last.retry_after), (0, None));
        let refused = shared_budget(RateTake::Refused(now + 4 * interval), now, interval, limit);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(15)));

        // The in-memory limiter, fed the same five requests at once, reads the same.
        let memory: Informed<String> = RateLimiter::keyed(per_minute(limit))
            .with_middleware::<governor::middleware::StateInformationMiddleware>(
        );
        let jti = "t".to_owned();
        let taken: Vec<Budget> = (0..5).map(|_| take(&memory, &jti, limit)).collect();
        assert_eq!(
            (taken[0].remaining, taken[0].retry_after),
            (first.remaining, None)
        );
        assert_eq!(
            (taken[3].remaining, taken[3].retry_after),
            (last.remaining, None)
        );
        let wait = taken[4].retry_after.expect("the fifth is refused");
        assert_eq!(taken[4].remaining, refused.remaining);
        assert!(
            wait <= Duration::from_secs(15) && wait > Duration::from_secs(14),
            "{wait:?}"
        );
    }

    /// After the database failed to count a budget, it is not asked again for a while: a
    /// database that is down costs one request the wait, not every request.
    #[test]
    fn a_failed_count_pauses_asking_the_database() {
        let pause = Pause::default();
        let t = Instant::now();
        assert!(pause.over(t));
        pause.start(t);
        assert!(!pause.over(t + Duration::from_secs(1)));
        assert!(!pause.over(t + SHARED_BUDGET_PAUSE - Duration::from_millis(1)));
        assert!(pause.over(t + SHARED_BUDGET_PAUSE));
        assert!(
            pause.over(t + Duration::from_secs(1)),
            "over for good once over"
        );
    }

    /// `limit` failures at once, then the key waits: one failure's worth, then one more try.
    #[test]
    fn failures_allow_the_limit_then_one_per_interval() {
        let failures = Failures::new(20);
        let t = Instant::now();
        let key = "client".to_owned();
        for _ in 0..20 {
            assert_eq!(failures.wait(&key, t), None);
            failures.charge(key.clone(), t);
        }
        assert_eq!(failures.wait(&key, t), Some(Duration::from_secs(3)));
        assert_eq!(failures.wait(&"other".to_owned(), t), None);
        let later = t + Duration::from_secs(3);
        assert_eq!(failures.wait(&key, later), None);
        failures.charge(key.clone(), later);
        assert_eq!(failures.wait(&key, later), Some(Duration::from_secs(3)));
        // Once all 21 failures are paid off (at 63 s), nothing is owed and the key is forgotten.
        failures.prune(t + Duration::from_secs(62));
        assert_eq!(failures.debts.lock().expect("lock").by_key.len(), 1);
        failures.prune(t + Duration::from_secs(63));
        assert!(failures.debts.lock().expect("lock").by_key.is_empty());
    }

    /// However many keys fail, at most `MAX_FAILURE_KEYS` are held; the others share one debt.
    #[test]
    fn failing_keys_beyond_the_limit_share_one_budget() {
        let failures = Failures::new(20);
        let t = Instant::now();
        for n in 0..MAX_FAILURE_KEYS {
            failures.charge(n, t);
        }
        // No room: new keys share the overflow's budget, 20 failures in all.
        for n in 0..20 {
            assert_eq!(failures.wait(&(MAX_FAILURE_KEYS + n), t), None);
            failures.charge(MAX_FAILURE_KEYS + n, t);
        }
        assert!(failures.wait(&(MAX_FAILURE_KEYS + 99), t).is_some());
        assert_eq!(
            failures.debts.lock().expect("lock").by_key.len(),
            MAX_FAILURE_KEYS
        );
        // A held key keeps its own budget.
        assert_eq!(failures.wait(&0, t), None);
        // Once the held keys owe nothing, a new key gets room of its own again.
        let later = t + Duration::from_secs(4);
        failures.charge(MAX_FAILURE_KEYS + 500, later);
        assert_eq!(failures.debts.lock().expect("lock").by_key.len(), 1);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(key(mapped), "192.0.2.1".parse::<IpAddr>().expect("ip"));
    }
}
