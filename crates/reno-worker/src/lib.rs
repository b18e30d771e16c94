//! The reno worker: for each priority, a durable pull consumer on its own connection, tokio runtime
//! and task pool, so that a backlog in one priority never slows another. Each event passes the gates
//! in order (decode and validate, staleness, dedup and collapse, targeting), is written to the
//! history, pushed to online devices, and acked only then. Stateless: run as many copies as needed;
//! they share each priority's durable consumer. Every event ends in exactly one counted outcome.
//!
//! May touch: NATS: its priority streams and their consumers, `RENO_HISTORY` (read and
//! compare-and-set write), `RENO_DEAD`, the push subjects; `RENO_REGISTRY` and `RENO_PRESENCE` are
//! only followed; `reno.trace.<member>` only while `RENO_TRACE` names a session for the member.

#![forbid(unsafe_code)]

pub mod config;
mod dead_letter;
mod gates;
#[cfg(test)]
mod gates_properties;
mod history;
pub mod outcome;
mod pipeline;
mod runner;
mod stream_gauges;

pub use config::{PoolConfig, WorkerConfig};
pub use runner::{WorkerError, needs, run};
