//! What a worker process needs to know: where NATS is, which priorities it serves and how many events
//! each may have in flight. The registry is not here: workers read it from NATS and follow it.

use std::time::Duration;

use reno_model::Priority;

/// The task pool of one priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Events of this priority handled at once by this process.
    pub concurrency: usize,
    /// OS threads of this priority's own tokio runtime.
    pub threads: usize,
}

impl PoolConfig {
    /// The defaults per priority: urgent traffic gets the widest pool.
    pub fn default_for(priority: Priority) -> Self {
        match priority {
            Priority::High => PoolConfig { concurrency: 256, threads: 1 },
            Priority::Normal => PoolConfig { concurrency: 256, threads: 1 },
            Priority::Low => PoolConfig { concurrency: 64, threads: 1 },
        }
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
            pools: Priority::ALL
                .into_iter()
                .map(|priority| (priority, PoolConfig::default_for(priority)))
                .collect(),
            max_deliveries: 10,
            dedup_capacity: 100_000,
            dedup_ttl: Duration::from_secs(600),
        }
    }
}
