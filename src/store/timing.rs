//! How long the database takes, for the metrics: the wait for a connection, guarded writes and
//! appends (on SQLite, until the committer's batch is durable), and pings.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Which database operation a duration is of.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbOperation {
    /// `read_connection`, `write_connection`, `guarded_write`, `append` or `ping`.
    pub operation: &'static str,
}

/// Durations in seconds, by operation: from 0.1 ms, doubling, to about 3 s.
pub type DbTimings = Family<DbOperation, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// An empty set of timings.
pub fn new_timings() -> DbTimings {
    Family::new_with_constructor(histogram as fn() -> Histogram)
}

/// Records the time since `started` under `operation`.
pub(super) fn observe(timings: &DbTimings, operation: &'static str, started: std::time::Instant) {
    timings
        .get_or_create(&DbOperation { operation })
        .observe(started.elapsed().as_secs_f64());
}
