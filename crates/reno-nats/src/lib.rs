//! The NATS side of reno that every process shares: provisioning the JetStream topology from the
//! registry (streams per priority, dead letters, the history bucket, durable consumers), the registry
//! where every process sees it, connecting, the server's clock, live tracing of one member, and the
//! publisher API services use. It may talk to NATS; it holds no pipeline logic.

#![forbid(unsafe_code)]

pub mod clock;
pub mod connect;
pub mod publisher;
pub mod readiness;
pub mod registry_store;
pub mod topology;
pub mod trace;

pub use clock::ServerClock;
pub use connect::{Endpoint, connect, connect_patiently, server_addrs};
pub use publisher::{PublishError, Publisher};
pub use registry_store::RegistryStoreError;
pub use topology::{ProvisionError, Topology, apply_registry, provision};
pub use trace::Tracer;
