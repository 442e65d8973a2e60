//! Failed sign-ins: a growing delay, then a temporary lockout, per account name and per client
//! IP. Kept in the database, so it holds across restarts and instances. The numbers:
//!
//! | key | delay before the next try | lockout |
//! |---|---|---|
//! | account name | from the 3rd failure: 2, 4, 8, 16, 32, then 60 s | 15 min after 10 failures |
//! | client IP | from the 10th failure: 2, 4, 8, 16, 32, then 60 s | 15 min after 30 failures |
//!
//! Failures older than 15 minutes are forgotten; a successful sign-in clears the account's.
//! Unknown account names are throttled like real ones, so the answer never tells which exist.

use time::{Duration, OffsetDateTime};

use crate::store::ThrottleState;

/// Thresholds of one kind of key.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures before delays start.
    pub free_failures: i64,
    /// Failures that lock the key.
    pub lock_after: i64,
}

/// Per account name.
pub const ACCOUNT: Policy = Policy {
    free_failures: 2,
    lock_after: 10,
};
/// Per client IP (several people may share one address).
pub const IP: Policy = Policy {
    free_failures: 9,
    lock_after: 30,
};
/// How long a lockout lasts, and how long failures are remembered.
pub use crate::store::SIGN_IN_FAILURE_WINDOW as WINDOW;
/// The longest delay between tries.
const MAX_DELAY: Duration = Duration::seconds(60);

/// The delay owed after `failures` failures under `policy`.
pub fn delay(policy: Policy, failures: i64) -> Duration {
    if failures <= policy.free_failures {
        return Duration::ZERO;
    }
    let exponent = u32::try_from((failures - policy.free_failures).min(10)).unwrap_or(10);
    Duration::seconds(2i64.pow(exponent)).min(MAX_DELAY)
}

/// How long `state` says to wait before another try at `now`; `None` to go ahead.
pub fn wait(policy: Policy, state: Option<ThrottleState>, now: OffsetDateTime) -> Option<Duration> {
    let state = state?;
    if now - state.last_failure_at > WINDOW {
        return None;
    }
    if let Some(until) = state.locked_until.filter(|u| *u > now) {
        return Some(until - now);
    }
    let ready = state.last_failure_at + delay(policy, state.failures);
    (ready > now).then(|| ready - now)
}

/// The key of an account name (case-insensitive) and of an IP.
pub fn account_key(username: &str) -> String {
    format!("user:{}", username.to_ascii_lowercase())
}

/// The key of a client address: an IPv6 client by its /64, since one host holds a whole /64
/// and could otherwise step through it past the lockout (as the rate limits key them).
pub fn ip_key(ip: std::net::IpAddr) -> String {
    format!("ip:{}", crate::limits::key(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// One host's /64 is one key; another /64 is another.
    #[test]
    fn ipv6_addresses_are_throttled_by_their_64() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        assert_eq!(
            ip_key(ip("2001:db8:1:2::1")),
            ip_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(ip_key(ip("2001:db8:1:2::1")), ip_key(ip("2001:db8:1:3::1")));
        assert_eq!(ip_key(ip("192.0.2.7")), "ip:192.0.2.7");
        assert_eq!(ip_key(ip("::ffff:192.0.2.7")), "ip:192.0.2.7");
    }

    #[test]
    fn delays_grow_then_cap() {
        let d: Vec<i64> = (1..=10)
            .map(|f| delay(ACCOUNT, f).whole_seconds())
            .collect();
        assert_eq!(d, [0, 0, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(IP, 9), Duration::ZERO);
        assert_eq!(delay(IP, 10), Duration::seconds(2));
    }

    #[test]
    fn waiting_and_lockout() {
        let t = datetime!(2026-11-22 12:00 UTC);
        let state = |failures, locked_until| {
            Some(ThrottleState {
                failures,
                last_failure_at: t,
                locked_until,
            })
        };
        assert_eq!(wait(ACCOUNT, None, t), None);
        assert_eq!(wait(ACCOUNT, state(2, None), t), None);
        assert_eq!(
            wait(ACCOUNT, state(4, None), t + Duration::seconds(1)),
            Some(Duration::seconds(3))
        );
        assert_eq!(
            wait(ACCOUNT, state(4, None), t + Duration::seconds(4)),
            None
        );
        let locked = state(10, Some(t + WINDOW));
        assert_eq!(
            wait(ACCOUNT, locked, t + Duration::minutes(5)),
            Some(Duration::minutes(10))
        );
        assert_eq!(
            wait(ACCOUNT, locked, t + WINDOW + Duration::seconds(1)),
            None
        );
    }
}
