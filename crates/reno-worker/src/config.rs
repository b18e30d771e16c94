//! What a worker process needs to know: where NATS is, which priorities it serves and the threads
//! of each. The registry is not here: workers read it from NATS and follow it.

use std::time::Duration;

use reno_model::Priority;

/// The runtime of one priority. How many of its events are in flight is not set here: one per
/// partition of its stream (`reno provision --partitions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// OS threads of this priority's own tokio runtime.
    pub threads: usize,
}

impl Default for PoolConfig {
    /// One thread per priority, so that three priorities share a small machine evenly.
    fn default() -> Self {
        PoolConfig { threads: 1 }
    }
}

/// Everything a worker process runs with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The hub: its servers and the credentials to sign in with.
    pub nats: reno_nats::Endpoint,
    /// The priorities this process serves, each with its task pool.
    pub pools: Vec<(Priority, PoolConfig)>,
    /// Deliveries of one event before a transient failure is taken as permanent and the event is
    /// dead-lettered with its last error.
    pub max_deliveries: i64,
    /// Event ids remembered for dedup, per priority (the history bucket stays the authority; this
    /// cache saves it the work for recent repeats).
    pub dedup_capacity: u64,
    /// How long an event id is remembered for dedup.
    pub dedup_ttl: Duration,
}

impl WorkerConfig {
    /// A worker serving every priority with default pools.
    pub fn new(nats: reno_nats::Endpoint) -> Self {
        WorkerConfig {
            nats,
            pools: Priority::ALL.into_iter().map(|priority| (priority, PoolConfig::default())).collect(),
            max_deliveries: 10,
            dedup_capacity: 100_000,
            dedup_ttl: Duration::from_secs(600),
        }
    }
}
