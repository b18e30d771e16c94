//! reno's load generators: a whole topology started (or reached), many devices held on an edge,
//! events published at a paced rate, and what arrives measured: latency, exactly-once, per-member
//! order, throughput against raw JetStream publish in the same run, connect storms, memory, pulls
//! from a large history.

#![forbid(unsafe_code)]

pub mod e2e;
pub mod e2e_summary;
pub mod fleet;
pub mod floor;
pub mod hostile;
pub mod probe;
pub mod publish;
pub mod pull;
pub mod pull_flood;
pub mod pull_summary;
pub mod stats;
pub mod storm;
pub mod tally;
pub mod topology;
