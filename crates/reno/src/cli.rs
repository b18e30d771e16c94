//! The command line: every subcommand and flag, with the environment variable that can set it.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use reno_model::{CollapseKey, DeviceType, EventId, EventType, MemberId, Position, Priority};

#[derive(Parser)]
#[command(name = "reno", version, about = "Rapid Event Notification System on NATS JetStream")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Everything for a local run in one process: provision, then run the workers and the pull service.
    Up(UpArgs),
    /// Create or update the streams, consumers and history bucket from the registry (idempotent).
    Provision(ProvisionArgs),
    /// Run workers: one durable pull consumer per priority, each with its own connection and pool.
    Worker(WorkerArgs),
    /// Run the pull service devices catch up from.
    PullService(PullServiceArgs),
    /// Publish one event, as a service would, and wait until JetStream has stored it.
    Publish(PublishArgs),
    /// Watch as a device: push over websocket plus pull catch-up, one JSON line per notification.
    Device(DeviceArgs),
}

#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// NATS server(s) of the hub, comma-separated.
    #[arg(long, env = "RENO_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

#[derive(Args, Clone)]
pub struct PullServiceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Where Prometheus scrapes metrics (`/metrics`); `off` for none.
    #[arg(long, env = "RENO_PULL_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_addr: MetricsAddr,
}

#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// The event-type registry (TOML).
    #[arg(long, env = "RENO_REGISTRY", default_value = "registry/events.toml")]
    pub registry: PathBuf,
}

#[derive(Args, Clone)]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Copies of each stream and of the history: 1 on one node, 3 on the hub cluster.
    #[arg(long, env = "RENO_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// Seconds notifications stay in the history for devices to pull.
    #[arg(long, env = "RENO_HISTORY_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub history_retention_secs: u64,
    /// Seconds an event waits in its priority stream for a worker before it expires.
    #[arg(long, env = "RENO_EVENT_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub event_retention_secs: u64,
    /// Seconds a worker may hold an event before JetStream hands it to another worker.
    #[arg(long, env = "RENO_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
    /// Bytes each priority stream may hold; when full, publishers are refused.
    #[arg(long, env = "RENO_EVENT_MAX_BYTES", default_value_t = 1 << 30)]
    pub event_max_bytes: i64,
    /// Bytes the history may hold; when full, it refuses new entries and events wait in their
    /// priority streams (workers retry them) until entries expire or the limit is raised.
    #[arg(long, env = "RENO_HISTORY_MAX_BYTES", default_value_t = 4 << 30)]
    pub history_max_bytes: i64,
    /// Bytes the dead letters may hold; when full, the oldest are dropped.
    #[arg(long, env = "RENO_DEAD_LETTER_MAX_BYTES", default_value_t = 256 << 20)]
    pub dead_letter_max_bytes: i64,
}

#[derive(Args, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Priorities this process serves (repeat the flag); default: all.
    #[arg(long = "priority", value_name = "PRIORITY")]
    pub priorities: Vec<Priority>,
    /// Events in flight for one priority, as PRIORITY=N (repeat the flag).
    #[arg(long = "concurrency", value_name = "PRIORITY=N", value_parser = parse_priority_number)]
    pub concurrency: Vec<(Priority, usize)>,
    /// OS threads of one priority's runtime, as PRIORITY=N (repeat the flag).
    #[arg(long = "threads", value_name = "PRIORITY=N", value_parser = parse_priority_number)]
    pub threads: Vec<(Priority, usize)>,
    /// Deliveries of one event before a transient failure dead-letters it.
    #[arg(long, env = "RENO_MAX_DELIVERIES", default_value_t = 10)]
    pub max_deliveries: i64,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Where Prometheus scrapes metrics (`/metrics`); `off` for none.
    #[arg(long, env = "RENO_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: MetricsAddr,
    /// Seconds to finish in-flight events after SIGTERM before exiting anyway (keep it below the
    /// scheduler's kill timeout).
    #[arg(long, env = "RENO_GRACE_SECS", default_value_t = 20)]
    pub grace_secs: u64,
}

#[derive(Args, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub provision: ProvisionArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Where devices connect, printed for the user (the websocket listener of nats/dev.conf).
    #[arg(long, env = "RENO_WEBSOCKET_URL", default_value = "ws://127.0.0.1:9222")]
    pub websocket_url: String,
}

#[derive(Args, Clone)]
pub struct PublishArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The event type, from the registry.
    #[arg(long = "type")]
    pub event_type: EventType,
    /// The member the event is about.
    #[arg(long)]
    pub member: MemberId,
    /// The payload as JSON (sent as CBOR).
    #[arg(long, default_value = "null")]
    pub payload: String,
    /// The event id; default: a new unique one. Publishing again with the same id is a no-op.
    #[arg(long)]
    pub id: Option<EventId>,
    /// Only these device types (repeat the flag); default: the type's targets.
    #[arg(long = "target", value_name = "DEVICE_TYPE")]
    pub targets: Vec<DeviceType>,
    /// For collapsing types: events with the same key replace each other.
    #[arg(long)]
    pub collapse_key: Option<CollapseKey>,
    /// When it happened, ms since the Unix epoch; default: now.
    #[arg(long)]
    pub occurred_at_ms: Option<u64>,
    /// Check type and targets against this registry before sending (the server checks the type
    /// in any case).
    #[arg(long, env = "RENO_REGISTRY")]
    pub registry: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// The edge's websocket address.
    #[arg(long, env = "RENO_WEBSOCKET_URL", default_value = "ws://127.0.0.1:9222")]
    pub url: String,
    /// The member whose notifications this device gets.
    #[arg(long)]
    pub member: MemberId,
    /// The kind of device, from the registry's device_types (mobile, tv, browser, console).
    #[arg(long)]
    pub device_type: DeviceType,
    /// Where to start: a position as printed by an earlier run (CURSOR[:EPOCH[:CURSOR_TIME_MS]]),
    /// or just the highest seq already seen. What came after it is pulled first.
    #[arg(long, value_name = "POSITION", default_value = "0")]
    pub from: Position,
    /// Exit after this many notifications (default: run until interrupted).
    #[arg(long)]
    pub count: Option<usize>,
}

/// A listen address for metrics, or none.
#[derive(Clone, Copy, Debug)]
pub struct MetricsAddr(pub Option<SocketAddr>);

impl std::str::FromStr for MetricsAddr {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        if value == "off" {
            return Ok(MetricsAddr(None));
        }
        value
            .parse()
            .map(|addr| MetricsAddr(Some(addr)))
            .map_err(|_| format!("{value:?} is not HOST:PORT or off"))
    }
}

fn parse_priority_number(value: &str) -> Result<(Priority, usize), String> {
    let (priority, number) = value.split_once('=').ok_or_else(|| format!("{value:?} is not PRIORITY=N"))?;
    let number: usize = number.parse().map_err(|_| format!("{number:?} is not a whole number"))?;
    if number == 0 {
        return Err("must be at least 1".into());
    }
    Ok((priority.parse()?, number))
}
