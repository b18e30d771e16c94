//! The one configuration of every reno process. Four sources, each overriding the one before:
//! built-in defaults, a TOML file (`--config`, `RENO_CONFIG`), environment variables (`RENO_*`) and
//! command-line flags. Read before anything starts and validated, with errors that name the key and
//! what it accepts; `reno config check` does only that. Each subcommand reads the sections it needs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use reno_model::Priority;
use reno_nats::Topology;
use reno_worker::PoolConfig;
use serde::{Deserialize, Serialize};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Everything configurable, with its defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub nats: NatsSection,
    pub auth: AuthSection,
    pub registry: RegistrySection,
    pub streams: StreamsSection,
    pub worker: WorkerSection,
    pub pull: PullSection,
    pub gateway: GatewaySection,
    pub log: LogSection,
}

/// Where reno's processes and services reach NATS (the hub), and as whom.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSection {
    /// Server URLs of the hub, comma-separated.
    pub url: String,
    /// The nkey seed (a file holding `SU...`) this process signs in with; none for a server that
    /// asks for no credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// An inbox prefix for replies, for a user allowed only its own (a publishing service's
    /// `_INBOX_publisher`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox_prefix: Option<String>,
    /// A CA certificate (PEM) for TLS to the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// The authorization service: turns device tokens into NATS permissions for the edges.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// The operator's public keys for device tokens, as a JWKS file. Without it, `reno up` runs no
    /// authorization service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_keys_file: Option<PathBuf>,
    /// The audience (`aud`) a device token must name.
    pub audience: String,
    /// The nkey seed the service signs in to the hub's auth account with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// The account seed (`SA...`) named as `issuer` in the edges' `auth_callout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_seed_file: Option<PathBuf>,
    /// The curve seed (`SX...`) named as `xkey` in the edges' `auth_callout`, if it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xkey_seed_file: Option<PathBuf>,
    /// The edge account devices are placed in.
    pub account: String,
    /// The longest a device connection lives before it must connect with a token again.
    pub max_connection_secs: u64,
    /// A development signing key (private JWK) for `reno token`; never in production.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_token_key_file: Option<PathBuf>,
    /// Where a separate `reno auth-service` serves `/metrics`, `/livez`, `/readyz`; `off` for none.
    pub admin_addr: AdminAddr,
}

/// The event-type registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySection {
    /// The registry file (TOML).
    pub path: PathBuf,
}

/// The JetStream objects `reno provision` creates (see docs/architecture.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsSection {
    /// Copies of each stream and bucket: 1 on one node, 3 on the hub cluster.
    pub replicas: usize,
    /// Seconds an event waits in its priority stream for a worker before it expires.
    pub event_retention_secs: u64,
    /// Bytes each priority stream may hold; when full, publishers are refused.
    pub event_max_bytes: i64,
    /// Seconds notifications stay in the history for devices to pull (0: as long as it lives).
    pub history_retention_secs: u64,
    /// Notifications a member's history holds; the oldest make room, and a device further behind
    /// is told to resync.
    pub history_max_entries: u32,
    /// Bytes the history may hold; when full, it refuses new entries and events wait.
    pub history_max_bytes: i64,
    /// Seconds dead letters are kept.
    pub dead_letter_retention_secs: u64,
    /// Bytes the dead letters may hold; when full, the oldest are dropped.
    pub dead_letter_max_bytes: i64,
    /// Seconds a worker may go without a sign of progress on an event before JetStream hands it to
    /// another worker: how long a killed worker's events wait.
    pub ack_wait_secs: u64,
    /// Partitions of each priority stream: a member's events fall into one and are handled in
    /// order, one at a time, so this is also the events of a priority in flight at most.
    pub partitions: u16,
    /// Seconds a device counts as online after its last announcement (at least three of the
    /// devices' heartbeat intervals).
    pub presence_ttl_secs: u64,
    /// Seconds a priority stream drops a repeat of the same event by its `Nats-Msg-Id`.
    pub duplicate_window_secs: u64,
}

/// The workers: which priorities a process serves and how wide each pool is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSection {
    /// The priorities this process serves.
    pub priorities: Vec<Priority>,
    /// Deliveries of one event before a transient failure dead-letters it.
    pub max_deliveries: i64,
    /// Seconds to finish in-flight events after SIGTERM before exiting anyway.
    pub grace_secs: u64,
    /// Where Prometheus scrapes the worker's metrics (`/metrics`); `off` for none. `reno up`
    /// serves everything's metrics here.
    pub admin_addr: AdminAddr,
    pub high: PoolSection,
    pub normal: PoolSection,
    pub low: PoolSection,
}

/// One priority's task pool.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// OS threads of this priority's own runtime.
    pub threads: usize,
}

/// The pull service devices catch up from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullSection {
    /// Where Prometheus scrapes a separate pull service's metrics; `off` for none.
    pub admin_addr: AdminAddr,
    /// Connections the pull service reads documents on, besides the one it takes requests on: the
    /// hub answers one connection's reads one after another, so a read that must first load a
    /// message block holds up only the reads on its own connection.
    pub read_connections: usize,
}

/// The HTTP gateway: events from services, pull for legacy devices, presence, the browser page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// Where it listens; `off` for no gateway in `reno up`.
    pub listen_addr: AdminAddr,
    /// A file with the tokens services present (`Authorization: Bearer`), one per line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tokens_file: Option<PathBuf>,
    /// The built browser device page (`index.html`, `app.js`); none to serve no page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_dir: Option<PathBuf>,
    /// Where a separate `reno gateway` serves `/metrics`, `/livez`, `/readyz`; `off` for none.
    pub admin_addr: AdminAddr,
}

/// What every process logs, to stderr.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter: a level (`info`) or directives (`info,reno_worker=debug`).
    pub level: String,
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A listen address for metrics, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

impl std::str::FromStr for AdminAddr {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        if value == "off" {
            return Ok(AdminAddr(None));
        }
        value
            .parse()
            .map(|addr| AdminAddr(Some(addr)))
            .map_err(|_| format!("{value:?} is not HOST:PORT or off"))
    }
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => write!(formatter, "{address}"),
            None => formatter.write_str("off"),
        }
    }
}

impl Serialize for AdminAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AdminAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for NatsSection {
    fn default() -> Self {
        NatsSection {
            url: "nats://127.0.0.1:4222".into(),
            nkey_seed_file: None,
            inbox_prefix: None,
            ca_file: None,
        }
    }
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            token_keys_file: None,
            audience: reno_auth::device_token::DEFAULT_AUDIENCE.into(),
            nkey_seed_file: None,
            issuer_seed_file: None,
            xkey_seed_file: None,
            account: "CONN".into(),
            max_connection_secs: 24 * 3600,
            dev_token_key_file: None,
            admin_addr: AdminAddr(Some(([127, 0, 0, 1], 9466).into())),
        }
    }
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection { path: "registry/events.toml".into() }
    }
}

impl Default for StreamsSection {
    fn default() -> Self {
        let topology = Topology::default();
        StreamsSection {
            replicas: topology.replicas,
            event_retention_secs: topology.event_retention.as_secs(),
            event_max_bytes: topology.event_max_bytes,
            history_retention_secs: topology.history_retention.as_secs(),
            history_max_entries: topology.history_max_entries,
            history_max_bytes: topology.history_max_bytes,
            dead_letter_retention_secs: topology.dead_letter_retention.as_secs(),
            dead_letter_max_bytes: topology.dead_letter_max_bytes,
            ack_wait_secs: topology.ack_wait.as_secs(),
            partitions: topology.partitions,
            presence_ttl_secs: topology.presence_ttl.as_secs(),
            duplicate_window_secs: topology.duplicate_window.as_secs(),
        }
    }
}

impl Default for WorkerSection {
    fn default() -> Self {
        let PoolConfig { threads } = PoolConfig::default();
        let pool = PoolSection { threads };
        WorkerSection {
            priorities: Priority::ALL.to_vec(),
            max_deliveries: 10,
            grace_secs: 20,
            admin_addr: AdminAddr(Some(([127, 0, 0, 1], 9464).into())),
            high: pool,
            normal: pool,
            low: pool,
        }
    }
}

impl Default for PullSection {
    fn default() -> Self {
        PullSection { admin_addr: AdminAddr(Some(([127, 0, 0, 1], 9465).into())), read_connections: 16 }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            listen_addr: AdminAddr(Some(([127, 0, 0, 1], 8080).into())),
            service_tokens_file: None,
            web_dir: Some("web/device/dist".into()),
            admin_addr: AdminAddr(Some(([127, 0, 0, 1], 9467).into())),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { level: "info,async_nats=warn".into(), format: LogFormat::Text }
    }
}

impl Config {
    /// The defaults, overridden by the file at `path` if one is given.
    pub fn load(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else { return Ok(Config::default()) };
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::from_toml(&text)
            .map_err(|message| ConfigError::Parse { path: path.display().to_string(), message })
    }

    /// Parses a config file's text; what it leaves out keeps its default.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|error: toml::de::Error| error.to_string().trim_end().to_owned())
    }

    /// Overrides every key for which the environment has `RENO_<SECTION>_<KEY>` (for example
    /// `RENO_NATS_URL` for `nats.url`, `RENO_WORKER_HIGH_THREADS` for `worker.high.threads`).
    /// A list takes comma-separated values. `env` is the environment to read (the process's, or a
    /// test's own).
    /// Returns the variables that start with a section's name but name none of its keys, which are
    /// ignored (a misspelling, or a variable of another tool).
    pub fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<String>, ConfigError> {
        let env: std::collections::HashMap<String, String> =
            env.into_iter().filter(|(name, _)| name.starts_with("RENO_")).collect();
        let mut tree = toml::Value::try_from(&*self).expect("a config always serializes");
        let mut applied = Vec::new();
        overlay(&mut tree, "RENO", &env, &mut applied);
        // Optional keys left unset do not show in the serialized config: set them by name.
        let mut ignored = Vec::new();
        let mut rest: Vec<&String> = env.keys().filter(|name| !applied.contains(name)).collect();
        rest.sort();
        for name in rest {
            if let Some(key) = OPTIONAL_KEYS.iter().find(|key| env_name(key) == *name) {
                let (section, field) = key.split_once('.').expect("section.field");
                if let Some(toml::Value::Table(table)) = tree.get_mut(section) {
                    table.insert(field.to_owned(), toml::Value::String(env[name].clone()));
                    applied.push(name.clone());
                }
            } else if is_section_variable(&tree, name) {
                ignored.push(name.clone());
            }
        }
        if applied.is_empty() {
            return Ok(ignored);
        }
        *self = tree.try_into().map_err(|error: toml::de::Error| ConfigError::Parse {
            path: format!("environment ({})", applied.join(", ")),
            message: error.to_string().trim_end().to_owned(),
        })?;
        Ok(ignored)
    }

    /// The effective configuration as a config file would say it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serializes")
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| Err(ConfigError::Invalid { key, message: message.to_owned() });
        if self.nats.url.trim().is_empty() {
            return invalid("nats.url", "is empty; use one or more comma-separated nats:// URLs");
        }
        if !(1..=5).contains(&self.streams.replicas) {
            return invalid("streams.replicas", "use 1 to 5 (1 on one node, 3 on the hub cluster)");
        }
        for (key, value) in [
            ("streams.event_max_bytes", self.streams.event_max_bytes),
            ("streams.history_max_bytes", self.streams.history_max_bytes),
            ("streams.dead_letter_max_bytes", self.streams.dead_letter_max_bytes),
        ] {
            if value < 1024 * 1024 {
                return invalid(key, &format!("{value} is too small; use at least 1048576 (1 MiB)"));
            }
        }
        for (key, value) in [
            ("streams.event_retention_secs", self.streams.event_retention_secs),
            ("streams.dead_letter_retention_secs", self.streams.dead_letter_retention_secs),
            ("streams.ack_wait_secs", self.streams.ack_wait_secs),
            ("streams.presence_ttl_secs", self.streams.presence_ttl_secs),
            ("streams.duplicate_window_secs", self.streams.duplicate_window_secs),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1 second");
            }
        }
        if self.streams.partitions == 0 || self.streams.partitions > reno_model::subject::MAX_PARTITIONS {
            return invalid(
                "streams.partitions",
                &format!(
                    "{} is out of range; use 1 to {}",
                    self.streams.partitions,
                    reno_model::subject::MAX_PARTITIONS
                ),
            );
        }
        if !(1..=100_000).contains(&self.streams.history_max_entries) {
            return invalid(
                "streams.history_max_entries",
                &format!("{} is out of range; use 1 to 100000", self.streams.history_max_entries),
            );
        }
        if self.auth.max_connection_secs == 0 {
            return invalid("auth.max_connection_secs", "must be at least 1 second");
        }
        if self.worker.priorities.is_empty() {
            return invalid("worker.priorities", "is empty; name at least one of high, normal, low");
        }
        if self.worker.max_deliveries < 1 {
            return invalid("worker.max_deliveries", "must be at least 1");
        }
        for (key, pool) in [
            ("worker.high", self.worker.high),
            ("worker.normal", self.worker.normal),
            ("worker.low", self.worker.low),
        ] {
            if pool.threads == 0 {
                return invalid(key, "threads must be at least 1");
            }
        }
        if !(1..=64).contains(&self.pull.read_connections) {
            return invalid(
                "pull.read_connections",
                &format!("{} is out of range; use 1 to 64", self.pull.read_connections),
            );
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid(
                "log.level",
                &format!("{error}; use a level such as info or directives such as info,reno_worker=debug"),
            );
        }
        Ok(())
    }

    /// Where reno's own processes connect: the hub, with this process's credentials.
    pub fn endpoint(&self) -> Result<reno_nats::Endpoint, ConfigError> {
        Ok(reno_nats::Endpoint {
            url: self.nats.url.clone(),
            nkey_seed: read_secret("nats.nkey_seed_file", self.nats.nkey_seed_file.as_deref())?,
            inbox_prefix: self.nats.inbox_prefix.clone(),
            root_certificates: self.nats.ca_file.clone(),
        })
    }

    /// The provisioning settings.
    pub fn topology(&self) -> Topology {
        let streams = &self.streams;
        Topology {
            replicas: streams.replicas,
            event_retention: Duration::from_secs(streams.event_retention_secs),
            event_max_bytes: streams.event_max_bytes,
            history_retention: Duration::from_secs(streams.history_retention_secs),
            history_max_entries: streams.history_max_entries,
            history_max_bytes: streams.history_max_bytes,
            dead_letter_retention: Duration::from_secs(streams.dead_letter_retention_secs),
            dead_letter_max_bytes: streams.dead_letter_max_bytes,
            ack_wait: Duration::from_secs(streams.ack_wait_secs),
            partitions: streams.partitions,
            presence_ttl: Duration::from_secs(streams.presence_ttl_secs),
            duplicate_window: Duration::from_secs(streams.duplicate_window_secs),
        }
    }

    /// One priority's pool.
    pub fn pool(&self, priority: Priority) -> PoolConfig {
        let section = match priority {
            Priority::High => self.worker.high,
            Priority::Normal => self.worker.normal,
            Priority::Low => self.worker.low,
        };
        PoolConfig { threads: section.threads }
    }

    /// The pool of one priority, mutably, for overrides.
    pub fn pool_mut(&mut self, priority: Priority) -> &mut PoolSection {
        match priority {
            Priority::High => &mut self.worker.high,
            Priority::Normal => &mut self.worker.normal,
            Priority::Low => &mut self.worker.low,
        }
    }
}

/// The trimmed contents of a secret file named by `key`, if one is named.
pub fn read_secret(key: &'static str, path: Option<&std::path::Path>) -> Result<Option<String>, ConfigError> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Invalid {
        key,
        message: format!("cannot read {}: {error}", path.display()),
    })?;
    Ok(Some(text.trim().to_owned()))
}

/// Replaces each leaf of `tree` whose environment variable (`prefix` plus its path) is set.
/// The keys that have no default, so that an unset one does not show in the serialized
/// configuration; each can still be set from the environment. Every `Option` field of a section
/// belongs here.
const OPTIONAL_KEYS: [&str; 10] = [
    "nats.nkey_seed_file",
    "nats.inbox_prefix",
    "nats.ca_file",
    "auth.token_keys_file",
    "auth.nkey_seed_file",
    "auth.issuer_seed_file",
    "auth.xkey_seed_file",
    "auth.dev_token_key_file",
    "gateway.service_tokens_file",
    "gateway.web_dir",
];

/// `RENO_<SECTION>_<KEY>` of a `section.key`.
fn env_name(key: &str) -> String {
    format!("RENO_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// Whether `name` starts with `RENO_` and a section's name (`RENO_WORKER_...`): a variable meant
/// for reno's configuration. Others (`RENO_HUB_NAME`, read by the configs in `nats/`) are not.
fn is_section_variable(tree: &toml::Value, name: &str) -> bool {
    let toml::Value::Table(table) = tree else { return false };
    table
        .iter()
        .filter(|(_, child)| child.is_table())
        .any(|(section, _)| name.starts_with(&format!("RENO_{}_", section.to_ascii_uppercase())))
}

fn overlay(
    tree: &mut toml::Value,
    prefix: &str,
    env: &std::collections::HashMap<String, String>,
    applied: &mut Vec<String>,
) {
    let toml::Value::Table(table) = tree else { return };
    for (key, value) in table.iter_mut() {
        let name = format!("{prefix}_{}", key.to_ascii_uppercase());
        if value.is_table() {
            overlay(value, &name, env, applied);
            continue;
        }
        let Some(text) = env.get(&name) else { continue };
        *value = match value {
            toml::Value::Integer(_) => text
                .trim()
                .parse()
                .map(toml::Value::Integer)
                .unwrap_or_else(|_| toml::Value::String(text.clone())),
            toml::Value::Boolean(_) => text
                .trim()
                .parse()
                .map(toml::Value::Boolean)
                .unwrap_or_else(|_| toml::Value::String(text.clone())),
            toml::Value::Array(_) => toml::Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(|item| toml::Value::String(item.to_owned()))
                    .collect(),
            ),
            _ => toml::Value::String(text.clone()),
        };
        applied.push(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_only_what_it_says() {
        let config = Config::from_toml("[worker]\nmax_deliveries = 3\n[worker.low]\nthreads = 2\n").unwrap();
        assert_eq!(config.worker.max_deliveries, 3);
        assert_eq!(config.pool(Priority::Low), PoolConfig { threads: 2 });
        assert_eq!(config.pool(Priority::High), PoolConfig::default());
        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        config.validate().unwrap();
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let mut config = Config::from_toml("[nats]\nurl = \"nats://file:4222\"\n").unwrap();
        let env = [
            ("RENO_NATS_URL", "nats://env:4222"),
            ("RENO_WORKER_MAX_DELIVERIES", "4"),
            ("RENO_WORKER_LOW_THREADS", "3"),
            ("RENO_WORKER_PRIORITIES", "high, low"),
            ("RENO_WORKER_ADMIN_ADDR", "off"),
            ("HOME", "/root"),
        ];
        config.apply_env(env.iter().map(|(name, value)| (name.to_string(), value.to_string()))).unwrap();
        assert_eq!(config.nats.url, "nats://env:4222");
        assert_eq!(config.worker.max_deliveries, 4);
        assert_eq!(config.pool(Priority::Low).threads, 3);
        assert_eq!(config.worker.priorities, [Priority::High, Priority::Low]);
        assert_eq!(config.worker.admin_addr, AdminAddr(None));
        let bad = [("RENO_WORKER_MAX_DELIVERIES".to_string(), "many".to_string())];
        let message = config.apply_env(bad).unwrap_err().to_string();
        assert!(message.contains("RENO_WORKER_MAX_DELIVERIES"), "{message}");
        assert!(message.contains("invalid type: string \"many\", expected i64"), "{message}");
    }

    #[test]
    fn the_environment_sets_optional_keys_and_reports_misspelled_ones() {
        let mut config = Config::default();
        let env = [
            ("RENO_NATS_NKEY_SEED_FILE", "/secrets/reno.nk"),
            ("RENO_GATEWAY_SERVICE_TOKENS_FILE", "/secrets/service-tokens"),
            // Not reno's: the nats-server configs read these.
            ("RENO_HUB_NAME", "hub-1"),
            ("RENO_PUB_CALLOUT_ISSUER", "A..."),
        ];
        let ignored =
            config.apply_env(env.iter().map(|(name, value)| (name.to_string(), value.to_string()))).unwrap();
        assert!(ignored.is_empty(), "{ignored:?}");
        assert_eq!(config.nats.nkey_seed_file.as_deref(), Some(std::path::Path::new("/secrets/reno.nk")));
        assert!(config.gateway.service_tokens_file.is_some());
        for misspelled in
            ["RENO_WORKER_LOW_THREDS", "RENO_NATS_NKEY_SEED", "RENO_STREAMS_PARTITION", "RENO_NATS_SERVER"]
        {
            let mut config = Config::default();
            let ignored = config.apply_env([(misspelled.to_string(), "3".to_string())]).unwrap();
            assert_eq!(ignored, [misspelled], "reported, not taken");
            assert_eq!(config.to_toml(), Config::default().to_toml());
        }
        // Every optional key is one the configuration accepts.
        let mut config = Config::default();
        config.apply_env(OPTIONAL_KEYS.map(|key| (env_name(key), "/x".to_string()))).unwrap();
        assert!(config.nats.ca_file.is_some() && config.auth.dev_token_key_file.is_some());
    }

    #[test]
    fn the_defaults_read_back_from_their_own_file() {
        let text = Config::default().to_toml();
        let again = Config::from_toml(&text).unwrap();
        assert_eq!(again.to_toml(), text);
        again.validate().unwrap();
    }

    #[test]
    fn errors_name_the_key_and_what_is_accepted() {
        let cases = [
            ("[worker]\nmax_delivries = 3\n", "unknown field `max_delivries`"),
            ("[worker]\npriorities = [\"urgent\"]\n", "unknown variant `urgent`"),
            ("[worker]\nadmin_addr = \"nowhere\"\n", "\"nowhere\" is not HOST:PORT or off"),
            ("[streams]\nreplicas = \"three\"\n", "invalid type"),
        ];
        for (text, expected) in cases {
            let message = Config::from_toml(text).unwrap_err();
            assert!(message.contains(expected), "{message:?} should contain {expected:?}");
        }
        let invalid = [
            ("[worker]\nmax_deliveries = 0\n", "worker.max_deliveries: must be at least 1"),
            ("[streams]\nreplicas = 7\n", "streams.replicas: use 1 to 5"),
            ("[worker.high]\nthreads = 0\n", "worker.high: threads must be at least 1"),
            ("[streams]\npartitions = 0\n", "streams.partitions"),
            ("[streams]\npartitions = 1025\n", "streams.partitions"),
            ("[streams]\nhistory_max_bytes = 10\n", "streams.history_max_bytes: 10 is too small"),
            ("[pull]\nread_connections = 0\n", "pull.read_connections: 0 is out of range; use 1 to 64"),
            ("[log]\nlevel = \"info,=[\"\n", "log.level:"),
        ];
        for (text, expected) in invalid {
            let message = Config::from_toml(text).unwrap().validate().unwrap_err().to_string();
            assert!(message.starts_with(expected), "{message:?} should start with {expected:?}");
        }
    }
}
