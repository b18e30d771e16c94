//! Test kit: starts real nats-servers from the repository's `nats/` configs on free ports, each with
//! its own store directory, alone or as a whole topology (hub nodes and edges with fresh
//! development secrets), and stops them on drop. Also keeps child processes (a `reno` worker, a
//! device) tied to a test so that nothing outlives it, and relays TCP so that a test can cut a
//! client off the network and let it back. For tests only.

mod cluster;
mod process;
mod relay;
mod server;

pub use cluster::Cluster;
pub use process::Process;
pub use relay::Relay;
pub use server::{NatsServer, ServerSpec, free_port, nats_server_binary, repo_root};
