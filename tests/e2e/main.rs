//! Tests across crates, against real nats-servers started by the test kit from `nats/` and real
//! `reno` processes: events go in as services send them (Rust API, CLI, Python) and come out where a
//! device sees them (websocket push, pull). Nothing here is mocked.

mod support;

mod attacks;
mod bad_input;
mod browser;
mod clock;
mod config;
mod dead_letters;
mod delivery;
mod deploy;
mod edges;
mod faults;
mod gates;
mod gateway;
mod health;
mod history_writes;
mod local_run;
mod order;
mod presence;
mod prometheus;
mod pull;
mod reconnect;
mod registry;
mod resilience;
mod soak;
mod storage;
mod trace;
