//! In-memory rate limiters (per instance).

use std::net::IpAddr;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;

/// The limiters of one server instance.
#[derive(Debug)]
pub struct Limits {
    registration: DefaultKeyedRateLimiter<IpAddr>,
    metadata_fetch: DefaultKeyedRateLimiter<IpAddr>,
}

/// Metadata documents a client address may have fetched (uncached) per minute.
const METADATA_FETCHES_PER_MINUTE: u32 = 20;

/// The key of an address: IPv6 clients are keyed by their /64, since one host holds a whole
/// /64 and could otherwise rotate through it.
fn key(ip: IpAddr) -> IpAddr {
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

impl Limits {
    /// Limiters sized from the configuration.
    pub fn new(config: &Config) -> Self {
        Self {
            registration: RateLimiter::keyed(Quota::per_hour(
                config.registration.rate_limit_per_hour,
            )),
            metadata_fetch: RateLimiter::keyed(Quota::per_minute(
                std::num::NonZeroU32::new(METADATA_FETCHES_PER_MINUTE)
                    .unwrap_or(std::num::NonZeroU32::MIN),
            )),
        }
    }

    /// Takes one registration from `ip`'s budget; `Err` holds how long to wait.
    pub fn registration(&self, ip: IpAddr) -> Result<(), Duration> {
        check(&self.registration, ip)
    }

    /// Takes one uncached metadata-document fetch from `ip`'s budget.
    pub fn metadata_fetch(&self, ip: IpAddr) -> Result<(), Duration> {
        check(&self.metadata_fetch, ip)
    }

    /// Forgets keys whose budget is full again, so memory stays bounded.
    pub fn prune(&self) {
        for limiter in [&self.registration, &self.metadata_fetch] {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
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
