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
}

impl Limits {
    /// Limiters sized from the configuration.
    pub fn new(config: &Config) -> Self {
        Self {
            registration: RateLimiter::keyed(Quota::per_hour(
                config.registration.rate_limit_per_hour,
            )),
        }
    }

    /// Takes one registration from `ip`'s budget; `Err` holds how long to wait.
    pub fn registration(&self, ip: IpAddr) -> Result<(), Duration> {
        self.registration
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets keys whose budget is full again, so memory stays bounded.
    pub fn prune(&self) {
        self.registration.retain_recent();
        self.registration.shrink_to_fit();
    }
}
