//! The command line: every subcommand and flag. A flag that is also a configuration key overrides the
//! environment (`RENO_<SECTION>_<KEY>`), the config file and the built-in default, in that order (see
//! docs/configuration.md).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use reno_model::{CollapseKey, DeviceId, DeviceType, EventId, EventType, MemberId, Position, Priority};

use crate::config::{AdminAddr, Config, ConfigError, LogFormat};

#[derive(Parser)]
#[command(name = "reno", version, about = "Rapid Event Notification System on NATS JetStream")]
pub struct Cli {
    /// A config file (TOML): the settings every process reads, below the environment and flags.
    #[arg(long, env = "RENO_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter: a level (info) or directives (info,reno_worker=debug) [config: log.level].
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format [config: log.format].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Everything for a local run in one process: provision, then run the workers, the pull service and
    /// the presence tracker (and, with device token keys configured, the authorization service and
    /// the HTTP gateway).
    Up(UpArgs),
    /// Create or update the streams, consumers and history bucket from the registry (idempotent).
    Provision(ProvisionArgs),
    /// Run workers: one durable pull consumer per priority, each with its own connection and pool.
    Worker(WorkerArgs),
    /// Run the services devices talk to: the pull service they catch up from, and the presence
    /// tracker that keeps who is online.
    PullService(PullServiceArgs),
    /// Print the devices of a member that are online, one JSON line each.
    Presence(PresenceArgs),
    /// Follow one member's events and notifications live, across every worker and pull service,
    /// until interrupted: what was received, written to the history, pushed, pulled, and each
    /// outcome.
    Trace(TraceArgs),
    /// Run the authorization service: answers the edges' auth callout, turning device tokens into
    /// per-device permissions.
    AuthService,
    /// Run the HTTP gateway: events from services, pull for devices that cannot hold a socket,
    /// presence, liveness and readiness, and the browser device page.
    Gateway,
    /// Mint a development device token (from `auth.dev_token_key_file`; never in production).
    Token(TokenArgs),
    /// Generate development secrets (nkeys, a TLS CA and certificate, a device-token key) into a
    /// folder, with the environment for the configs in nats/ and a reno config pointing at them.
    DevSecrets(DevSecretsArgs),
    /// Publish one event, as a service would, and wait until JetStream has stored it.
    Publish(PublishArgs),
    /// Watch as a device: push over websocket plus pull catch-up, one JSON line per notification.
    Device(DeviceArgs),
    /// Show or change the event-type registry every process follows, without restarting anything.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Check the configuration (file, environment, flags) without starting anything.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Print the registry in force, as a registry file.
    Show,
    /// Make a registry file the one in force (validated first).
    Apply {
        /// The registry file (TOML).
        file: PathBuf,
    },
    /// Add an event type, or change some of its settings.
    Set(SetTypeArgs),
    /// Remove an event type (its events still waiting are retried, then dead-lettered).
    Remove {
        #[arg(value_name = "TYPE")]
        event_type: EventType,
    },
}

#[derive(Args)]
pub struct SetTypeArgs {
    /// The event type.
    #[arg(value_name = "TYPE")]
    pub event_type: EventType,
    /// Its priority: high, normal or low (required for a new type).
    #[arg(long)]
    pub priority: Option<Priority>,
    /// Seconds after which a worker drops it as stale (required for a new type).
    #[arg(long)]
    pub stale_after_secs: Option<u64>,
    /// The device types it reaches (repeat the flag); default for a new type: all.
    #[arg(long = "target", value_name = "DEVICE_TYPE")]
    pub targets: Vec<DeviceType>,
    /// Whether events with the same collapse key replace each other.
    #[arg(long)]
    pub collapse: Option<bool>,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings as a config file.
    Check,
}

impl Cli {
    /// The configuration this invocation runs with: defaults, the file, then environment and flags;
    /// validated.
    pub fn resolve(&self, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config.as_deref())?;
        for name in config.apply_env(env)? {
            // Said before logging starts, so on stderr directly.
            eprintln!(
                "reno: warning: {name} names no configuration key; ignored (see docs/configuration.md)"
            );
        }
        if let Some(level) = &self.log_level {
            config.log.level = level.clone();
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        match &self.command {
            Command::Up(args) => {
                args.provision.apply(&mut config);
                args.run.apply(&mut config);
            }
            Command::Provision(args) => args.apply(&mut config),
            Command::Worker(args) => args.apply(&mut config),
            Command::PullService(args) => args.apply(&mut config),
            Command::Publish(args) => {
                args.connect.apply(&mut config);
                if let Some(path) = &args.registry {
                    config.registry.path = path.clone();
                }
            }
            Command::Presence(args) => args.connect.apply(&mut config),
            Command::Trace(args) => args.connect.apply(&mut config),
            Command::Registry(_)
            | Command::Device(_)
            | Command::Config(_)
            | Command::AuthService
            | Command::Gateway
            | Command::Token(_)
            | Command::DevSecrets(_) => {}
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Args, Clone)]
pub struct ConnectArgs {
    /// NATS server(s) of the hub, comma-separated [config: nats.url].
    #[arg(long)]
    pub nats_url: Option<String>,
}

impl ConnectArgs {
    fn apply(&self, config: &mut Config) {
        if let Some(url) = &self.nats_url {
            config.nats.url = url.clone();
        }
    }
}

#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// The event-type registry (TOML) [config: registry.path].
    #[arg(long)]
    pub registry: Option<PathBuf>,
}

impl RegistryArgs {
    fn apply(&self, config: &mut Config) {
        if let Some(path) = &self.registry {
            config.registry.path = path.clone();
        }
    }
}

#[derive(Args, Clone)]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Copies of each stream and of the history: 1 on one node, 3 on the hub cluster
    /// [config: streams.replicas].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Seconds notifications stay in the history for devices to pull
    /// [config: streams.history_retention_secs].
    #[arg(long)]
    pub history_retention_secs: Option<u64>,
    /// Seconds an event waits in its priority stream for a worker before it expires
    /// [config: streams.event_retention_secs].
    #[arg(long)]
    pub event_retention_secs: Option<u64>,
    /// Seconds a worker may go without a sign of progress on an event before JetStream hands it
    /// to another worker [config: streams.ack_wait_secs].
    #[arg(long)]
    pub ack_wait_secs: Option<u64>,
    /// Partitions of each priority stream: the events of a priority in flight at most, in order
    /// per member [config: streams.partitions].
    #[arg(long)]
    pub partitions: Option<u16>,
    /// Bytes each priority stream may hold; when full, publishers are refused
    /// [config: streams.event_max_bytes].
    #[arg(long)]
    pub event_max_bytes: Option<i64>,
    /// Notifications a member's history holds; the oldest make room, and a device further behind
    /// is told to resync [config: streams.history_max_entries].
    #[arg(long)]
    pub history_max_entries: Option<u32>,
    /// Bytes the history may hold; when full, it refuses new entries and events wait in their
    /// priority streams until entries expire or the limit is raised [config: streams.history_max_bytes].
    #[arg(long)]
    pub history_max_bytes: Option<i64>,
    /// Bytes the dead letters may hold; when full, the oldest are dropped
    /// [config: streams.dead_letter_max_bytes].
    #[arg(long)]
    pub dead_letter_max_bytes: Option<i64>,
    /// Seconds a device counts as online after its last announcement
    /// [config: streams.presence_ttl_secs].
    #[arg(long)]
    pub presence_ttl_secs: Option<u64>,
    /// Seconds a priority stream drops a repeat of the same event by its Nats-Msg-Id
    /// [config: streams.duplicate_window_secs].
    #[arg(long)]
    pub duplicate_window_secs: Option<u64>,
}

impl ProvisionArgs {
    fn apply(&self, config: &mut Config) {
        self.connect.apply(config);
        self.registry.apply(config);
        let streams = &mut config.streams;
        set(&mut streams.replicas, self.replicas);
        set(&mut streams.history_retention_secs, self.history_retention_secs);
        set(&mut streams.event_retention_secs, self.event_retention_secs);
        set(&mut streams.ack_wait_secs, self.ack_wait_secs);
        set(&mut streams.partitions, self.partitions);
        set(&mut streams.event_max_bytes, self.event_max_bytes);
        set(&mut streams.history_max_entries, self.history_max_entries);
        set(&mut streams.history_max_bytes, self.history_max_bytes);
        set(&mut streams.dead_letter_max_bytes, self.dead_letter_max_bytes);
        set(&mut streams.presence_ttl_secs, self.presence_ttl_secs);
        set(&mut streams.duplicate_window_secs, self.duplicate_window_secs);
    }
}

#[derive(Args, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Priorities this process serves (repeat the flag) [config: worker.priorities].
    #[arg(long = "priority", value_name = "PRIORITY")]
    pub priorities: Vec<Priority>,
    /// OS threads of one priority's runtime, as PRIORITY=N (repeat the flag)
    /// [config: worker.<priority>.threads].
    #[arg(long = "threads", value_name = "PRIORITY=N", value_parser = parse_priority_number)]
    pub threads: Vec<(Priority, usize)>,
    /// Deliveries of one event before a transient failure dead-letters it
    /// [config: worker.max_deliveries].
    #[arg(long)]
    pub max_deliveries: Option<i64>,
    #[command(flatten)]
    pub run: RunArgs,
}

impl WorkerArgs {
    fn apply(&self, config: &mut Config) {
        self.connect.apply(config);
        if !self.priorities.is_empty() {
            config.worker.priorities = self.priorities.clone();
        }
        for (priority, threads) in &self.threads {
            config.pool_mut(*priority).threads = *threads;
        }
        set(&mut config.worker.max_deliveries, self.max_deliveries);
        self.run.apply(config);
    }
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Where Prometheus scrapes metrics (`/metrics`); `off` for none [config: worker.admin_addr].
    #[arg(long)]
    pub admin_addr: Option<AdminAddr>,
    /// Seconds to finish in-flight events after SIGTERM before exiting anyway (keep it below the
    /// scheduler's kill timeout) [config: worker.grace_secs].
    #[arg(long)]
    pub grace_secs: Option<u64>,
}

impl RunArgs {
    fn apply(&self, config: &mut Config) {
        set(&mut config.worker.admin_addr, self.admin_addr);
        set(&mut config.worker.grace_secs, self.grace_secs);
    }
}

#[derive(Args, Clone)]
pub struct PullServiceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Where Prometheus scrapes metrics (`/metrics`); `off` for none [config: pull.admin_addr].
    #[arg(long)]
    pub admin_addr: Option<AdminAddr>,
}

impl PullServiceArgs {
    fn apply(&self, config: &mut Config) {
        self.connect.apply(config);
        set(&mut config.pull.admin_addr, self.admin_addr);
    }
}

#[derive(Args, Clone)]
pub struct TokenArgs {
    /// The member the device belongs to.
    #[arg(long)]
    pub member: MemberId,
    /// Its device type.
    #[arg(long)]
    pub device_type: DeviceType,
    /// Its device id.
    #[arg(long)]
    pub device_id: DeviceId,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 24 * 3600)]
    pub ttl_secs: u64,
    /// The private development key (JWK) [config: auth.dev_token_key_file].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct DevSecretsArgs {
    /// The folder to fill (files already there are kept).
    pub dir: PathBuf,
}

#[derive(Args, Clone)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The member.
    pub member: MemberId,
}

#[derive(Args, Clone)]
pub struct TraceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The member.
    pub member: MemberId,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub provision: ProvisionArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Where devices connect, printed for the user (the edge's websocket listener).
    #[arg(long, env = "RENO_WEBSOCKET_URL", default_value = "wss://127.0.0.1:9443")]
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
    #[arg(long)]
    pub registry: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// The edge's websocket address.
    #[arg(long, env = "RENO_WEBSOCKET_URL", default_value = "wss://127.0.0.1:9443")]
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
    /// The device's id, as its token names it (default: a new `cli-...` one). The device announces
    /// its presence under it and takes replies on its own inbox prefix.
    #[arg(long)]
    pub device_id: Option<DeviceId>,
    /// The device token (an edge requires one). Default: with `auth.dev_token_key_file` configured
    /// (`reno dev-secrets`), a development token is minted for this device.
    #[arg(long, env = "RENO_DEVICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A CA certificate (PEM) to verify the edge's TLS certificate by.
    #[arg(long, env = "RENO_DEVICE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

/// Overrides `target` when a flag or its environment variable gave a value.
fn set<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
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
